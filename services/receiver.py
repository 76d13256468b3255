"""Delivery stage, far end: a local Standard Webhooks receiver for the demo and the tests.

Verifies signatures, deduplicates on ``webhook-id``, records each arrival with its
receive wall time, and can be told to misbehave (``mode``): ``ok`` answers 200,
``500`` answers 500, ``hang`` never answers, ``close`` drops the connection without a
response, ``down`` stops listening (connection refused) until the mode changes.

``cardiowatch receiver --port P --secret S`` prints one line per alert.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from aiohttp import web

from services.signing import SignatureError, WebhookSecret, verify
from models.cli_help import HelpFormatter

__all__ = ["ReceiverMode", "Arrival", "WebhookReceiver", "summarise", "main"]

ReceiverMode = Literal["ok", "500", "hang", "close", "down"]
_MODES: tuple[str, ...] = get_args(ReceiverMode)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One accepted, signature-verified delivery."""

    webhook_id: str
    body: dict[str, Any]
    received_wall_ms: int
    path: str
    duplicate: bool


@dataclass(slots=True)
class _Counts:
    requests: int = 0
    rejected: int = 0
    refused_by_mode: int = 0
    seen: set[str] = field(default_factory=set)


def summarise(body: dict[str, Any]) -> dict[str, Any]:
    """Patient, condition, priority, onset (ms) of a native, FHIR or Alertmanager body."""
    if body.get("resourceType") == "Bundle":
        issue = body["entry"][0]["resource"]
        return {"patient_id": issue["patient"]["identifier"]["value"],
                "condition": issue["code"]["coding"][0]["code"], "priority": issue["severity"],
                "event_id": body["identifier"]["value"], "onset_ts_ms": None}
    if body.get("version") == "4" and "alerts" in body:
        a = body["alerts"][0]
        return {"patient_id": a["labels"]["patient_id"], "condition": a["labels"]["alertname"],
                "priority": a["labels"]["severity"], "event_id": a["annotations"]["event_id"],
                "onset_ts_ms": None}
    return {"patient_id": body.get("patient_id"), "condition": body.get("condition"),
            "priority": body.get("priority"), "event_id": body.get("event_id"),
            "onset_ts_ms": body.get("onset_ts_ms")}


class WebhookReceiver:
    """An aiohttp webhook endpoint on ``127.0.0.1``.

    Parameters
    ----------
    secret : str or WebhookSecret
        Standard Webhooks key to verify with.
    port : int
        0 picks a free port once; the same port is reused when coming back from ``down``.
    mode : ReceiverMode
        Initial behaviour.
    on_arrival : callable, optional
        Called with each new (non-duplicate) :class:`Arrival`.
    ssl_context : ssl.SSLContext, optional
        Serve HTTPS with this server context (certificate and key loaded).
    """

    def __init__(self, secret: str | WebhookSecret, *, host: str = "127.0.0.1", port: int = 0,
                 mode: ReceiverMode = "ok", on_arrival: Callable[[Arrival], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._secret = secret if isinstance(secret, WebhookSecret) else WebhookSecret.parse(secret)
        self._host, self._port = host, port
        self._mode: ReceiverMode = "ok"
        self._on_arrival = on_arrival
        self.received: list[Arrival] = []  # unique deliveries in arrival order
        self.duplicates: list[Arrival] = []
        self._counts = _Counts()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._hangs: set[asyncio.Future[None]] = set()
        self._initial_mode = mode
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._app = app

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl is not None else 'http'}://{self._host}:{self._port}/hook"

    @property
    def port(self) -> int:
        return self._port

    @property
    def mode(self) -> ReceiverMode:
        return self._mode

    @property
    def requests(self) -> int:
        """Every POST that reached the handler, accepted or not."""
        return self._counts.requests

    @property
    def rejected(self) -> int:
        """Requests refused for a bad or missing signature."""
        return self._counts.rejected

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await self._listen()
        await self.set_mode(self._initial_mode)

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True,
                                 ssl_context=self._ssl)
        await self._site.start()
        if self._port == 0:
            server = self._site._server  # aiohttp exposes the bound socket only here
            assert server is not None
            self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def set_mode(self, mode: ReceiverMode) -> None:
        """Change behaviour; ``down`` closes the listening socket, leaving it reopens it."""
        if mode not in _MODES:
            raise ValueError(f"receiver mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if mode == "down" and self._site is not None:
            await self._site.stop()
            self._site = None
        elif mode != "down" and self._site is None and self._runner is not None:
            await self._listen()
        if mode != "hang":
            for f in self._hangs:
                f.cancel()
        self._mode = mode

    async def stop(self) -> None:
        for f in self._hangs:
            f.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner, self._site = None, None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._counts.requests += 1
        mode = self._mode
        if mode == "500":
            self._counts.refused_by_mode += 1
            return web.Response(status=500, text="receiver told to fail")
        if mode == "hang":
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._hangs.add(fut)
            try:
                await fut
            except asyncio.CancelledError:
                pass
            finally:
                self._hangs.discard(fut)
            raise web.HTTPServiceUnavailable(text="hung request released")
        if mode in ("close", "down"):  # "down": keep-alive connections opened earlier die too
            self._counts.refused_by_mode += 1
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()  # never reaches the client: connection is gone
        body = await request.read()
        try:
            wid = verify(self._secret, body, dict(request.headers), now_s=time.time())
        except SignatureError as e:
            self._counts.rejected += 1
            return web.Response(status=401, text=str(e))
        arrival = Arrival(wid, json.loads(body), int(time.time() * 1000), request.path,
                          duplicate=wid in self._counts.seen)
        if arrival.duplicate:
            self.duplicates.append(arrival)
        else:
            self._counts.seen.add(wid)
            self.received.append(arrival)
            if self._on_arrival is not None:
                self._on_arrival(arrival)
        return web.Response(status=200, text="ok")


def _print_arrival(a: Arrival) -> None:
    s = summarise(a.body)
    delay = f"{(a.received_wall_ms - s['onset_ts_ms']) / 1000:.2f}s" if s["onset_ts_ms"] else "n/a"
    print(f"{time.strftime('%H:%M:%S')} patient={s['patient_id']} condition={s['condition']} "
          f"priority={s['priority']} delay_from_onset={delay} id={a.webhook_id}", flush=True)


async def _serve(args: argparse.Namespace) -> None:
    rec = WebhookReceiver(args.secret, host=args.host, port=args.port, mode=args.mode,
                          on_arrival=_print_arrival)
    await rec.start()
    print(f"receiver listening on {rec.url} (mode {rec.mode})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await rec.stop()


def main(argv: list[str] | None = None) -> int:
    """``cardiowatch receiver --port P --secret S [--mode ok|500|hang|close|down]``."""
    p = argparse.ArgumentParser(prog="cardiowatch receiver", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8801, help="port to listen on")
    p.add_argument("--secret", required=True, help="Standard Webhooks secret whsec_...")
    p.add_argument("--mode", default="ok", choices=_MODES,
                   help="how to answer: ok (200), 500, hang (never answer), close (drop the connection), down")
    args = p.parse_args(argv)
    try:
        WebhookSecret.parse(args.secret)
    except ValueError as e:
        p.error(str(e))
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
