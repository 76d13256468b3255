"""Demo support: a PNG of a web page from Debian's headless Chromium, through chromedriver.

``cardiowatch demo`` photographs the console with it (``runs/demo/console.png``, or the
``--screenshot`` path, e.g. ``docs/console.png``). It speaks
chromedriver's W3C WebDriver protocol with ``urllib`` (a session, a page, a script that
says when the page is ready, a screenshot), so nothing beyond the system's ``chromium``
and ``chromedriver`` (Debian's ``chromium`` and ``chromium-driver`` packages) is needed at
run time. Chromium's own ``--screenshot`` flag cannot be used: it shoots at the load
event, before the console's server-sent events have drawn anything, and its
``--virtual-time-budget`` never ends while an event stream is open.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from models.errors import CardiowatchError
from services.broker import free_port

__all__ = ["ScreenshotError", "find_browser", "screenshot"]

_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions")


class ScreenshotError(CardiowatchError, RuntimeError):
    """No chromium or chromedriver, or the page was not ready in time."""


def find_browser() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` paths, or None when either is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _call(base: str, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read() or b"{}").get("value")
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode(errors="replace")
        raise ScreenshotError(f"chromedriver {method} {path}: HTTP {e.code}: {detail}") from None


def screenshot(url: str, out: Path, *, ready_js: str = "return document.readyState === 'complete'",
               ready_args: list[Any] | None = None, timeout_s: float = 30.0, width: int = 1500,
               max_height: int = 4000) -> Path:
    """Load ``url`` in headless Chromium, wait until ``ready_js`` returns true, and write the
    whole page (up to ``max_height`` pixels tall) as a PNG to ``out`` (atomically).

    Raises
    ------
    ScreenshotError
        No chromium or chromedriver, chromedriver did not start, or ``ready_js`` was not
        true within ``timeout_s``.
    """
    found = find_browser()
    if found is None:
        raise ScreenshotError("no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
    chromium, driver = found
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    session: str | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if (_call(base, "GET", "/status", timeout_s=2) or {}).get("ready"):
                    break
            except (OSError, ScreenshotError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ScreenshotError(f"chromedriver did not start (exit status {proc.poll()})")
            time.sleep(0.1)
        opts = {"binary": chromium, "args": [*_ARGS, f"--window-size={width},1000"]}
        got = _call(base, "POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": opts}}}, timeout_s=timeout_s)
        session = got["sessionId"]
        _call(base, "POST", f"/session/{session}/url", {"url": url}, timeout_s=timeout_s)
        while not _call(base, "POST", f"/session/{session}/execute/sync",
                        {"script": ready_js, "args": ready_args or []}):
            if time.monotonic() > deadline:
                raise ScreenshotError(f"{url} was not ready within {timeout_s:g} s")
            time.sleep(0.2)
        # the window's height is not the page's (the window has a frame): grow it until the
        # viewport holds the whole page, or max_height
        window_h = 1000
        for _ in range(4):
            page_h, view_h = _call(base, "POST", f"/session/{session}/execute/sync", {
                "script": "return [document.documentElement.scrollHeight, window.innerHeight]", "args": []})
            if view_h >= min(page_h, max_height):
                break
            window_h = min(window_h + int(page_h) - int(view_h), max_height + 200)
            _call(base, "POST", f"/session/{session}/window/rect", {"width": width, "height": window_h})
            time.sleep(0.3)  # a frame after the resize
        png = base64.b64decode(_call(base, "GET", f"/session/{session}/screenshot"))
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".tmp", dir=out.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(png)
        os.replace(tmp, out)
        return out
    finally:
        if session is not None:
            try:
                _call(base, "DELETE", f"/session/{session}", timeout_s=10)
            except (OSError, ScreenshotError):
                pass
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
