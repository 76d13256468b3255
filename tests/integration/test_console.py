"""Console in a real browser: Debian's headless Chromium, driven by selenium through Debian's
chromedriver, against a console and a dispatcher on the real broker.

An alert produced on the alerts topic is on the page within 2 s with its strip drawn
(one path point per sample) and its flagged beats marked; acknowledging in the page puts
the ack on the acks topic and stops escalation; a wrong token shows an error and records
nothing; a HIGH alert whose condition is over stays latched across a reload and a console
restart, until someone acknowledges it.

Without chromium and chromedriver these tests skip, saying why; under ``CI=true`` they
fail instead (``.ci/run`` installs both).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.access import hash_token
from services.console import ConsoleServer
from services.dispatcher import log_behind, open_log_reader, run_dispatcher
from services.receiver import WebhookReceiver
from services.routing import parse_routing
from services.settings import ConsoleSettings, DispatcherSettings, KafkaSettings, Topics
from streaming.events import SCORE_SCHEMA, AlertEvent
from streaming.metrics import DispatcherMetrics

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"console-test-secret-0123456789").decode()
TOKEN = "nurse-console-token-0123456789abcdef"
FS_HZ = 125  # the shipped ECG bundle's rate: the worker's strips are at it
STRIP_S = 6.0
RR_MS = 800  # 75 bpm
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (each test opens its own console page)."""
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_bin is None:
        reason = ("the console's browser tests need Debian's chromium and chromium-driver "
                  f"(found chromium={chromium}, chromedriver={driver_bin}); "
                  "apt-get install -y chromium chromium-driver")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium  # Debian's build: selenium must never fetch a browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


class Stack:
    """A webhook receiver, the dispatcher (with its ack API) and the console on one event
    loop in a background thread, so that the test's selenium calls can stay synchronous."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.bootstrap, self.topics = bootstrap, topics
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stop = asyncio.Event()
        self.console: ConsoleServer | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self) -> Stack:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.receiver = WebhookReceiver(SECRET)
        await self.receiver.start()
        routing = parse_routing({
            "default_team": "ward", "ops_team": "ward",
            "escalation": {"escalate_after_s": {"high": 2}, "max_level": 3, "poll_s": 0.2},
            "teams": {"ward": {"routes": {"default": {"primary": {"url": self.receiver.url, "secret": SECRET}}},
                               "tokens": [{"user": "nurse.a", "token_hash": hash_token(TOKEN)}]}}})
        settings = DispatcherSettings(KafkaSettings(bootstrap=self.bootstrap, topics=self.topics),
                                      routing_file=Path("unused"), group_id=f"g-{self.topics.alerts}",
                                      ack_port=0)
        ready = asyncio.Event()
        box: dict[str, Any] = {}

        def on_ready(api: Any) -> None:
            box["api"] = api
            ready.set()

        self._dispatcher = asyncio.create_task(run_dispatcher(
            settings, routing, stop=self._stop, metrics=DispatcherMetrics(CollectorRegistry()),
            on_ready=on_ready))
        await asyncio.wait_for(ready.wait(), 60)
        self.ack_api_url = box["api"].url
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await self.producer.start()
        await self._start_console()

    async def _start_console(self) -> None:
        self.console = ConsoleServer(ConsoleSettings(
            KafkaSettings(bootstrap=self.bootstrap, topics=self.topics), ack_api_url=self.ack_api_url, port=0))
        await self.console.start()
        await asyncio.wait_for(self.console.live.wait(), 60)

    async def _restart_console(self) -> None:
        assert self.console is not None
        await self.console.stop()
        await self._start_console()

    def restart_console(self) -> None:
        self.call(self._restart_console())

    @property
    def url(self) -> str:
        assert self.console is not None
        return self.console.url

    def produce(self, topic: str, key: str, value: bytes) -> None:
        self.call(self.producer.send_and_wait(topic, value, key=key.encode()))

    def records(self, topic: str) -> list[dict[str, Any]]:
        """Every record now in ``topic``, decoded."""
        async def read() -> list[dict[str, Any]]:
            reader, tps = await open_log_reader(self.bootstrap, [topic])
            try:
                end = await reader.end_offsets(tps)
                out: list[dict[str, Any]] = []
                while await log_behind(reader, end):
                    for rs in (await reader.getmany(timeout_ms=200)).values():
                        out += [json.loads(r.value) for r in rs]
                return out
            finally:
                await reader.stop()
        return self.call(read())

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "api/state", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        async def down() -> None:
            if self.console is not None:
                await self.console.stop()
            self._stop.set()
            await asyncio.wait_for(self._dispatcher, 30)
            await self.producer.stop()
            await self.receiver.stop()
        try:
            self.call(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


@pytest.fixture
def stack(kafka_broker: Any, make_topics: Callable[..., Topics]) -> Iterator[Stack]:
    s = Stack(kafka_broker.bootstrap, make_topics(1)).start()
    try:
        yield s
    finally:
        s.stop()


# ---------------------------------------------------------------------- records
def _strip(start_ms: int) -> dict[str, Any]:
    """A 6 s synthetic ECG at 125 Hz: a QRS spike every RR_MS on a slow baseline wave."""
    n = int(STRIP_S * FS_HZ)
    samples = []
    for i in range(n):
        t_ms = i * 1000 / FS_HZ
        phase = (t_ms - 300) % RR_MS
        qrs = 1.2 * math.exp(-((phase - 0) ** 2) / (2 * 12.0 ** 2)) if phase < 60 else 0.0
        qrs += 1.2 * math.exp(-((phase - RR_MS) ** 2) / (2 * 12.0 ** 2)) if phase > RR_MS - 60 else 0.0
        samples.append(round(qrs + 0.15 * math.sin(2 * math.pi * t_ms / RR_MS), 3))
    return {"sample_rate_hz": FS_HZ, "start_ts_ms": start_ms, "units": "mV", "samples_mv": samples}


def _alert(patient: str, *, action: str = "raised", priority: str = "high", revision: int = 1,
           condition: str = "ventricular_run", strip: bool = True, onset_ms: int | None = None) -> AlertEvent:
    onset = onset_ms if onset_ms is not None else int(time.time() * 1000) - 3000
    return AlertEvent(
        alert_id=f"{patient}:{condition}:{onset}", revision=revision, action=action,  # type: ignore[arg-type]
        patient_id=patient, device_id=f"dev-{patient}", condition=condition, category="physiological",
        priority=priority, onset_ts_ms=onset, detected_ts_ms=onset + 2000,  # type: ignore[arg-type]
        rule="3 consecutive ventricular beats" if action != "cleared" else "ventricular_run absent for 10 s",
        score=0.9, threshold=0.5, model_version="t/1", signal_quality=0.97,
        strip=_strip(onset - 4000) if strip and action == "raised" else None,
        produced_wall_ms=int(time.time() * 1000))


def _beats(patient: str, start_ms: int, flagged_every: int = 3) -> list[tuple[int, bytes]]:
    """Scores for every beat of the synthetic strip; every ``flagged_every``-th flagged (class V)."""
    out = []
    r = start_ms + 300
    k = 0
    while r <= start_ms + STRIP_S * 1000:
        flagged = k % flagged_every == 1
        out.append((r, json.dumps({
            "schema": SCORE_SCHEMA, "beat_id": f"{patient}:{r}", "patient_id": patient,
            "device_id": f"dev-{patient}", "r_ts_ms": r, "rr_ms": float(RR_MS), "score": 0.9 if flagged else 0.1,
            "threshold": 0.5, "flagged": flagged, "signal_quality": 0.97, "model_version": "t/1",
            "beat_class": "V" if flagged else "N"}).encode()))
        r += RR_MS
        k += 1
    return out


# ---------------------------------------------------------------------- page helpers
def _wait(driver: Any, what: str, cond: Callable[[Any], Any], timeout_s: float = 10.0) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.02,
                             ignored_exceptions=(StaleElementReferenceException,)).until(cond)
    except TimeoutException:
        status = driver.execute_script("return document.getElementById('conn').textContent")
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; page status: {status!r}") from None


def _card(driver: Any, alert_id: str) -> Any:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'article.alert[data-alert-id="{alert_id}"]')
    return found[0] if found else None


def _open(driver: Any, stack: Stack) -> None:
    driver.get(stack.url)
    _wait(driver, "the console to be live",
          lambda d: d.find_element("id", "conn").get_attribute("data-phase") == "live")


def _type_token(driver: Any, token: str) -> None:
    box = driver.find_element("id", "token")
    box.clear()
    box.send_keys(token)


def _click(card: Any, button: str) -> None:
    card.find_element("css selector", f"button.{button}").click()


# ---------------------------------------------------------------------- tests
def test_alert_appears_within_2_s_with_its_strip_and_flagged_beats(stack: Stack, browser: Any) -> None:
    _open(browser, stack)
    ev = _alert("p-0001")
    assert ev.strip is not None
    start = ev.strip["start_ts_ms"]
    beats = _beats("p-0001", start)
    before, after = beats[: len(beats) // 2], beats[len(beats) // 2:]
    for _, raw in before:  # some beats are scored before the alert, the rest after it
        stack.produce(stack.topics.scores, "p-0001", raw)
    t0 = time.monotonic()
    stack.produce(stack.topics.alerts, "p-0001", ev.to_json())
    card = _wait(browser, "the alert's card", lambda d: _card(d, ev.alert_id), timeout_s=5)
    shown_s = time.monotonic() - t0
    print(f"alert on the page {shown_s:.3f} s after it was produced")
    assert shown_s <= 2.0, f"the alert took {shown_s:.2f} s to appear"
    for _, raw in after:
        stack.produce(stack.topics.scores, "p-0001", raw)

    # the strip is redrawn as the beats scored after the alert arrive: wait for all of them
    n_flagged = sum(1 for _, raw in beats if json.loads(raw)["flagged"])
    _wait(browser, "every beat of the strip marked",
          lambda d: len(card.find_elements("css selector", "svg.strip path.beat")) == len(beats))
    n = len(ev.strip["samples_mv"])
    trace = card.find_element("css selector", "svg.strip path.trace")
    d = trace.get_attribute("d")
    assert d.startswith("M ") and d.count(" L ") == n - 1, "one path point per sample"
    assert trace.get_attribute("data-samples") == str(n) == str(int(STRIP_S * FS_HZ))
    strip_svg = card.find_element("css selector", "svg.strip")
    # 25 mm/s and 10 mm/mV in the drawing's own millimetre units (the viewBox)
    assert strip_svg.get_attribute("data-mm-per-s") == "25" and strip_svg.get_attribute("data-mm-per-mv") == "10"
    assert float(strip_svg.get_dom_attribute("viewBox").split()[2]) == pytest.approx(STRIP_S * 25)
    assert len(card.find_elements("css selector", "svg.strip path.beat.flagged")) == n_flagged >= 2
    assert card.get_attribute("data-priority") == "high" and card.get_attribute("data-status") == "open"
    assert card.find_element("css selector", ".rule").text == ev.rule
    assert card.find_element("css selector", ".escalation").text.startswith("level ")

    tile = browser.find_element("css selector", '.patient[data-patient-id="p-0001"]')
    assert tile.get_attribute("data-priority") == "high"
    assert tile.find_element("css selector", ".hr").text.startswith(str(round(60000 / RR_MS)))
    assert tile.find_element("css selector", ".rhythm").text == "ventricular run"
    assert "97 %" in tile.find_element("css selector", ".sq").text
    assert "last data" in tile.find_element("css selector", ".since").text
    banner = browser.find_element("id", "alarm-banner")
    assert banner.is_displayed() and "p-0001" in banner.text
    tone = browser.find_element("id", "tone")
    tone.click()  # the optional alarm tone: it sounds while a HIGH alert is unanswered
    _wait(browser, "the alarm tone's first burst", lambda d: tone.get_dom_attribute("data-bursts") == "1")


def test_the_demos_screenshot_of_the_console(stack: Stack, browser: Any, tmp_path: Path) -> None:
    """services.screenshot (what ``cardiowatch demo`` photographs the console with) waits
    for the page to show the alerts, then writes a PNG of the whole page."""
    from services.console import READY_JS
    from services.screenshot import screenshot

    ev = _alert("p-0001")
    stack.produce(stack.topics.alerts, "p-0001", ev.to_json())
    browser.get(stack.url)
    _wait(browser, "the alert on the page", lambda d: _card(d, ev.alert_id))
    out = screenshot(stack.url, tmp_path / "console.png", ready_js=READY_JS, ready_args=[1], timeout_s=30)
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 1400 and height >= 400, (width, height)
    assert len(png) > 20_000  # a drawn page, not a blank one


def test_acknowledge_in_the_page_records_the_ack_and_stops_escalation(stack: Stack, browser: Any) -> None:
    _open(browser, stack)
    a = _alert("p-0001")
    stack.produce(stack.topics.alerts, "p-0001", a.to_json())
    card = _wait(browser, "alert A", lambda d: _card(d, a.alert_id))
    _type_token(browser, TOKEN)
    _click(card, "ack")
    # two facts arriving in either order: the API's answer to the click, and the ack as
    # read back from the acks topic through the console's event stream
    _wait(browser, "the ack API's answer on A's card",
          lambda d: "Acknowledged by nurse.a (ward)" in card.find_element("css selector", ".result").text)
    _wait(browser, "A shown acknowledged by nurse.a",
          lambda d: card.get_attribute("data-status") == "acknowledged"
          and "nurse.a (ward)" in card.find_element("css selector", ".acked").text)
    acks = stack.records(stack.topics.acks)
    assert [(r["alert_id"], r["action"], r["by"], r["team"]) for r in acks] == [(a.alert_id, "ack", "nurse.a", "ward")]
    ack_ms = acks[0]["ts_ms"]
    level_at_ack = int(card.find_element("css selector", ".escalation").get_attribute("data-level"))
    assert not browser.find_element("id", "alarm-banner").is_displayed()  # answered: no longer alarming

    # Sentinel: B, raised after the ack with the same 2 s escalation, escalates. A was armed
    # before the ack, so had its escalation gone on it would have been due before B's.
    b = _alert("p-0002")
    stack.produce(stack.topics.alerts, "p-0002", b.to_json())
    card_b = _wait(browser, "alert B", lambda d: _card(d, b.alert_id))
    _wait(browser, "B escalated to level 1 on the page",
          lambda d: int(card_b.find_element("css selector", ".escalation").get_attribute("data-level")) >= 1,
          timeout_s=15)
    events = [AlertEvent.from_dict(r) for r in stack.records(stack.topics.alerts)]
    assert any(e.alert_id == b.alert_id and e.action == "escalated" for e in events)
    assert any(e.alert_id == a.alert_id and e.action == "acknowledged" for e in events)
    late = [e for e in events if e.alert_id == a.alert_id and e.action == "escalated"
            and e.details["wall_ms"] > ack_ms]
    assert late == [], "A escalated after it was acknowledged"
    assert int(card.find_element("css selector", ".escalation").get_attribute("data-level")) == level_at_ack

    # Resolve B from the page: the record goes to the acks topic and B leaves the list.
    _click(card_b, "resolve")
    _wait(browser, "B gone from the open alerts", lambda d: _card(d, b.alert_id) is None)
    assert [(r["alert_id"], r["action"]) for r in stack.records(stack.topics.acks)][-1] == (b.alert_id, "resolve")


def test_a_wrong_token_shows_an_error_and_changes_nothing(stack: Stack, browser: Any) -> None:
    _open(browser, stack)
    c = _alert("p-0003", priority="medium")
    stack.produce(stack.topics.alerts, "p-0003", c.to_json())
    card = _wait(browser, "alert C", lambda d: _card(d, c.alert_id))
    _type_token(browser, "not-the-token-0123456789abcdef")
    _click(card, "ack")
    err = _wait(browser, "an error on C's card",
                lambda d: card.find_element("css selector", ".error").text or None)
    assert "HTTP 401" in err and "invalid bearer token" in err
    # The ack API answers only after the ack record is written, so once the error is shown
    # a record, had one been made, would already be on the topic.
    assert stack.records(stack.topics.acks) == []
    assert card.get_attribute("data-status") == "open"
    assert card.find_element("css selector", ".acked").text == "not yet"
    assert stack.state()["alerts"][0]["status"] == "open"
    # and with no token at all the page says so without calling anything
    _type_token(browser, "")
    _click(card, "ack")
    assert "Enter your acknowledgement token" in card.find_element("css selector", ".error").text


def _comparable(state: dict[str, Any]) -> dict[str, Any]:
    """A console's state without what differs between two consoles by design: sequence
    numbers and the server's clock."""
    return {"patients": [{k: v for k, v in p.items() if k != "seq"} for p in state["patients"]],
            "alerts": [{k: v for k, v in a.items() if k != "seq"} for a in state["alerts"]]}


def test_a_high_alert_stays_latched_across_a_reload_and_a_console_restart(stack: Stack, browser: Any) -> None:
    _open(browser, stack)
    d = _alert("p-0004")
    assert d.strip is not None
    for _, raw in _beats("p-0004", d.strip["start_ts_ms"]):
        stack.produce(stack.topics.scores, "p-0004", raw)
    stack.produce(stack.topics.alerts, "p-0004", d.to_json())
    cleared = AlertEvent.from_dict({**_alert("p-0004", action="cleared", revision=2,
                                             onset_ms=d.onset_ts_ms).to_dict(), "detected_ts_ms": d.detected_ts_ms + 9000})
    stack.produce(stack.topics.alerts, "p-0004", cleared.to_json())

    def latched(drv: Any) -> bool:
        card = _card(drv, d.alert_id)
        return (card is not None and card.get_attribute("data-latched") == "true"
                and len(card.find_elements("css selector", "svg.strip path.beat.flagged")) > 0
                and drv.find_element("id", "alarm-banner").is_displayed())

    _wait(browser, "D latched with its strip and the alarm banner", latched)
    assert "latched" in browser.find_element("id", "alarm-banner").text
    assert "ended at" in _card(browser, d.alert_id).find_element("css selector", ".cleared").text
    before = _comparable(stack.state())

    browser.refresh()
    _wait(browser, "D still latched after a reload", latched)

    old_url = stack.url
    stack.restart_console()
    assert stack.url != old_url  # a new console process' port: nothing carried over in memory
    assert _comparable(stack.state()) == before
    _open(browser, stack)
    _wait(browser, "D still latched on the restarted console", latched)

    _type_token(browser, TOKEN)
    _click(_card(browser, d.alert_id), "ack")  # acknowledged and already over: closed
    _wait(browser, "D gone and the banner down",
          lambda drv: _card(drv, d.alert_id) is None and not drv.find_element("id", "alarm-banner").is_displayed())
    assert [(r["alert_id"], r["action"]) for r in stack.records(stack.topics.acks)] == [(d.alert_id, "ack")]


def test_the_buttons_say_so_when_the_ack_api_cannot_be_reached(kafka_broker: Any,
                                                                make_topics: Callable[..., Topics]) -> None:
    """A console whose dispatcher is down (here: nothing listens at the ack API's address)
    keeps serving its page, and a forwarded ack answers 502 naming the API, not a crash."""
    from services.broker import free_port

    topics = make_topics(1)
    dead = f"http://127.0.0.1:{free_port()}"

    async def go() -> None:
        async with ConsoleServer(ConsoleSettings(KafkaSettings(bootstrap=kafka_broker.bootstrap, topics=topics),
                                                 ack_api_url=dead, port=0)) as server:
            await asyncio.wait_for(server.live.wait(), 60)
            import aiohttp

            async with aiohttp.ClientSession() as http:
                async with http.post(server.url + "api/alerts/p1%3Ax/ack", data=b"{}",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 502
                    assert dead in (await r.json())["error"]
                async with http.get(server.url) as r:
                    assert r.status == 200 and "central station" in await r.text()
                    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                async with http.get(server.url + "healthz") as r:
                    assert (await r.json())["status"] == "ok"

    asyncio.run(go())
