"""Console stage: ``cardiowatch console``, the care team's live central-station web page.

A process of its own that reads the ``alerts``, ``acks`` and ``scores`` topics with one
group-less aiokafka consumer, folds them into a :class:`services.console_view.ConsoleView`
and serves a plain HTML/CSS/JavaScript page (``services/console_static``) that it keeps
live with server-sent events. The page's *acknowledge* and *resolve* buttons go through
the dispatcher's existing acknowledgement API (:mod:`services.ack_api`) with the token the
user typed in: the console forwards the call (path, ``Authorization`` header and body)
unchanged and relays the answer, so the ack API alone decides who may act on what, and
the ack record reaches the ``acks`` topic the one way it always does.

Why its own process and not a page served by the dispatcher
-----------------------------------------------------------
* The dispatcher's one job is getting alerts to care teams within seconds. The console
  reads the scores topic (one record per beat of every patient) and holds open a stream
  per browser; neither belongs in the process whose latency pages people.
* The page must stay up while the dispatcher restarts (issue 10): served by the
  dispatcher it would go dark exactly then. Here it keeps showing the alarms; only the
  buttons answer "the acknowledgement API did not answer" until the dispatcher is back.
* Its state is nothing but a fold of the topics, so any number of consoles can run,
  each rebuilding itself on start (alerts and acks from the beginning, in record-time
  order as the dispatcher does; scores back to the earliest open alert's strip), and a
  console restart or a browser reload mid-alarm shows the same page.

Going through the console rather than calling the ack API from the browser keeps the
page on one origin (no CORS on the ack API, which needs no port open to browsers). The
price: the ack API sees every console user at the console's address, so its bad-token
limit (5 in a burst, then one per 10 s) is shared by everyone using one console.

Endpoints: ``GET /`` (the page), ``/static/*``, ``GET /api/state`` (the view as JSON),
``GET /api/events`` (server-sent events: ``snapshot`` then ``delta`` messages),
``POST /api/alerts/{alert_id}/ack`` and ``/resolve`` (forwarded), ``GET /healthz``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from yarl import URL

from services.console_view import Admit, ConsoleView, Topic
from services.dispatcher import DELIVERY_FAILURE, log_behind, open_log_reader
from services.routing import load_routing
from services.settings import ConsoleSettings, SettingsError
from streaming.kafka_security import check_connection
from models.cli_help import HelpFormatter

__all__ = ["STATIC_DIR", "READY_JS", "ConsoleServer", "run_console", "main"]

log = logging.getLogger("cardiowatch.console")

STATIC_DIR = Path(__file__).resolve().parent / "console_static"
# The page loads nothing but its own files; data is drawn with DOM calls, never as HTML.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
#: True in the page once it follows the topics live and shows at least ``arguments[0]``
#: alert cards (for a screenshot: services.screenshot).
READY_JS = ("const n = document.querySelectorAll('article.alert').length;"
            "return document.getElementById('conn').dataset.phase === 'live' && n >= arguments[0];")
_PUSH_EVERY_S = 0.1  # at most ten updates a second to each browser (beats arrive per patient)
_PING_EVERY_S = 15.0  # an SSE comment keeps proxies from closing an idle stream
_REBUILD_MAX_RECORDS = 1_000_000  # alerts + acks held while sorting them, as the dispatcher does


class ConsoleServer:
    """The console: a topic reader and the web server, on one event loop.

    Parameters
    ----------
    settings : ConsoleSettings
        Kafka, the ack API's URL, port and read-back bounds.
    session : aiohttp.ClientSession, optional
        For the calls to the ack API (default: one of its own).
    """

    def __init__(self, settings: ConsoleSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self._admit = _team_filter(settings)
        self.view = ConsoleView(admit=self._admit)
        self.status: dict[str, Any] = {"phase": "starting", "detail": "connecting to Kafka"}
        self.rebuilt = asyncio.Event()  # alerts and acks read back: the page shows them
        self.live = asyncio.Event()  # scores read back too: the page is what it will stay
        self._session, self._own_session = session, session is None
        self._tick = asyncio.Event()
        self._stopping = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._port = settings.port
        topics = settings.kafka.topics
        self._topic_kind: dict[str, Topic] = {topics.alerts: "alerts", topics.acks: "acks",
                                              topics.scores: "scores"}
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/alerts/{alert_id}/{action:ack|resolve}", self._act)
        app.router.add_static("/static", STATIC_DIR, follow_symlinks=False)
        app.on_response_prepare.append(self._headers)
        self.app = app

    @property
    def url(self) -> str:
        return f"http://{self.settings.bind_host}:{self._port}/"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind the web server (the page shows "rebuilding" until the topics are read) and
        start reading the topics."""
        k = self.settings.kafka
        await check_connection(k.bootstrap, k.security, k.connect_timeout_s)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.ack_timeout_s))
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.bind_host, self.settings.port)
        await site.start()
        if self._port == 0:
            self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._reader = asyncio.create_task(self._read_forever(), name="console-reader")

    async def stop(self) -> None:
        self._stopping.set()
        self._notify()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ConsoleServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _notify(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _set_status(self, phase: str, detail: str) -> None:
        if self.status != {"phase": phase, "detail": detail}:
            self.status = {"phase": phase, "detail": detail}
            log.info("console %s: %s", phase, detail)
            self._notify()

    # ------------------------------------------------------------------ topics
    async def _read_forever(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self._read()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # topics missing, broker gone: say so on the page, try again
                log.exception("reading the topics failed; retrying in %.0f s", delay)
                self._set_status("error", f"cannot read the topics ({type(e).__name__}: {str(e)[:200]}); "
                                          f"retrying")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(2 * delay, 30.0)

    async def _read(self) -> None:
        st, topics = self.settings, self.settings.kafka.topics
        self._set_status("rebuilding", "reading the alerts and acks topics from the beginning")
        c, tps = await open_log_reader(st.kafka.bootstrap, [topics.alerts, topics.acks, topics.scores],
                                       st.rebuild_timeout_s, st.kafka.security)
        try:
            score_tps = [tp for tp in tps if tp.topic == topics.scores]
            log_tps = [tp for tp in tps if tp.topic != topics.scores]
            c.pause(*score_tps)
            view = await self._rebuild_log(c, log_tps)
            self.view = view  # browsers get a fresh snapshot of the new view
            self.rebuilt.set()
            await self._replay_scores(c, score_tps)
            self._set_status("live", "following the alerts, acks and scores topics")
            self.live.set()
            await self._tail(c)
        finally:
            await c.stop()

    async def _rebuild_log(self, c: AIOKafkaConsumer, tps: list[TopicPartition]) -> ConsoleView:
        """Alerts and acks up to their current end, folded in record-time order (the
        dispatcher's order), into a new view."""
        end = await c.end_offsets(tps)
        held: list[tuple[int, int, Topic, bytes | None]] = []
        deadline = time.monotonic() + self.settings.rebuild_timeout_s
        while (await log_behind(c, end) and time.monotonic() < deadline
               and len(held) < _REBUILD_MAX_RECORDS):
            for tp, recs in (await c.getmany(*tps, timeout_ms=200, max_records=5000)).items():
                kind = self._topic_kind[tp.topic]
                # records past the end arrived meanwhile: newer, so they sort after the rest
                held += [(r.timestamp, len(held) + i, kind, r.value) for i, r in enumerate(recs)]
        if await log_behind(c, end):
            log.error("console rebuilt only partly: stopped after %d alert and ack records (limits "
                      "%.0f s, %d records)", len(held), self.settings.rebuild_timeout_s, _REBUILD_MAX_RECORDS)
        held.sort(key=lambda x: (x[0], x[1]))
        view = ConsoleView(admit=self._admit)
        for ts, _, kind, raw in held:
            view.apply_record(kind, raw, ts)
        log.info("console rebuilt from %d alert and ack records (%s undecodable); %d alerts open",
                 len(held), view.undecodable, len(view.open_alerts()))
        return view

    async def _replay_scores(self, c: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """Scores from ``scores_lookback_s`` ago, or from the earliest open alert's strip
        when that is older (its beats get marked again), up to their current end."""
        st = self.settings
        now_ms = int(time.time() * 1000)
        from_ms = now_ms - int(st.scores_lookback_s * 1000)
        strip_wall = self.view.earliest_open_strip_wall_ms()
        if strip_wall is not None:
            from_ms = min(from_ms, strip_wall - 60_000)  # a strip ends at its alert; 6 s before it
        from_ms = max(from_ms, now_ms - int(st.scores_replay_max_s * 1000))
        self._set_status("rebuilding", f"reading scores back from {(now_ms - from_ms) / 1000:.0f} s ago")
        found = await c.offsets_for_times({tp: max(0, from_ms) for tp in tps})
        end = await c.end_offsets(tps)
        for tp in tps:
            got = found.get(tp)
            c.seek(tp, got.offset if got is not None else end[tp])
        c.resume(*tps)
        deadline = time.monotonic() + st.rebuild_timeout_s
        while await log_behind(c, end) and time.monotonic() < deadline and not self._stopping.is_set():
            await self._fold_batch(c)

    async def _tail(self, c: AIOKafkaConsumer) -> None:
        while not self._stopping.is_set():
            try:
                await self._fold_batch(c)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup must not freeze the page for good
                log.exception("reading the topics failed; retrying")
                self._set_status("error", "lost the connection to Kafka; retrying")
                await asyncio.sleep(1.0)
                continue
            if self.status["phase"] != "live":
                self._set_status("live", "following the alerts, acks and scores topics")

    async def _fold_batch(self, c: AIOKafkaConsumer) -> None:
        batches = await c.getmany(timeout_ms=100, max_records=2000)
        changed = False
        for tp, recs in batches.items():
            kind = self._topic_kind[tp.topic]
            for r in recs:
                changed |= self.view.apply_record(kind, r.value, r.timestamp)
        if changed:
            self._notify()

    # ------------------------------------------------------------------ web
    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok" if self.status["phase"] == "live" else self.status["phase"],
                                  "detail": self.status["detail"]})

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "status": self.status, "server_ms": int(time.time() * 1000),
                "ack_api": self.settings.ack_api_url, "team": self.settings.team}

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self._message(self.view.snapshot()), headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        view: ConsoleView | None = None
        sent_seq, sent_status = -1, None
        last_write = time.monotonic()
        try:
            while not self._stopping.is_set():
                tick = self._tick
                if view is not self.view:
                    view = self.view
                    await _sse(resp, "snapshot", self._message(view.snapshot()))
                elif view.seq > sent_seq or self.status != sent_status:
                    await _sse(resp, "delta", self._message(view.changes_since(sent_seq)))
                elif time.monotonic() - last_write >= _PING_EVERY_S:
                    await resp.write(b": ping\n\n")
                else:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(tick.wait(), _PING_EVERY_S)
                    continue
                sent_seq, sent_status, last_write = view.seq, dict(self.status), time.monotonic()
                await asyncio.sleep(_PUSH_EVERY_S)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            pass  # the browser went away (or the console stops); EventSource reconnects
        return resp

    async def _act(self, request: web.Request) -> web.Response:
        """Forward an ack or resolve to the ack API as it came, and relay the answer."""
        alert_id, action = request.match_info["alert_id"], request.match_info["action"]
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        auth = request.headers.get("Authorization")
        if auth is not None:
            headers["Authorization"] = auth
        base = self.settings.ack_api_url
        url = URL(f"{base}/v1/alerts/{quote(alert_id, safe='')}/{action}", encoded=True)
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as r:
                text = await r.text()
                status = r.status
        except asyncio.TimeoutError:
            return _err(504, f"the acknowledgement API at {base} did not answer within "
                             f"{self.settings.ack_timeout_s:g} s; nothing was recorded by the console")
        except aiohttp.ClientError as e:
            return _err(502, f"the acknowledgement API at {base} cannot be reached ({type(e).__name__}); "
                             "is the dispatcher running?")
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"error": f"the acknowledgement API answered HTTP {status}: {text[:200]}"}
        if not isinstance(answer, dict):
            answer = {"error": f"the acknowledgement API answered HTTP {status} with {text[:200]}"}
        return web.json_response(answer, status=status)


def _team_filter(settings: ConsoleSettings) -> Admit | None:
    """With ``CARDIOWATCH_CONSOLE_TEAM``: show the team's patients, as the routing file
    routes them (and, for the ops team, the dispatcher's delivery-failure alerts), as the
    ack API scopes a token's alerts. Raises SettingsError naming an unknown team."""
    team, path = settings.team, settings.routing_file
    if team is None:
        return None
    assert path is not None  # ConsoleSettings.from_env requires it with a team
    routing = load_routing(path)
    if team not in routing.teams:
        raise SettingsError(f"CARDIOWATCH_CONSOLE_TEAM must name a team of {str(path)!r} "
                            f"({', '.join(sorted(routing.teams))}), got {team!r}")

    def admit(patient_id: str, condition: str, category: str) -> bool:
        if condition == DELIVERY_FAILURE and category == "technical":
            return routing.ops_team == team
        return routing.team_for(patient_id).name == team

    return admit


async def _sse(resp: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
    await resp.write(f"event: {event}\ndata: {payload}\n\n".encode())


def _err(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def run_console(settings: ConsoleSettings, *, stop: asyncio.Event | None = None,
                      on_ready: Callable[[ConsoleServer], None] | None = None) -> None:
    """Serve the console until ``stop`` is set."""
    stop = stop or asyncio.Event()
    async with ConsoleServer(settings) as server:
        if on_ready is not None:
            on_ready(server)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """``cardiowatch console``: settings from ``CARDIOWATCH_*``; stops on SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(
        prog="cardiowatch console",
        description="Serve the care-team console: a live web page of every patient, the open alerts "
                    "with their ECG strips, and acknowledge/resolve buttons that go through the "
                    "dispatcher's acknowledgement API. Settings: CARDIOWATCH_BOOTSTRAP, "
                    "CARDIOWATCH_ACK_API_URL (default http://127.0.0.1:8088), CARDIOWATCH_CONSOLE_PORT "
                    "(default 8090), CARDIOWATCH_CONSOLE_BIND (default 127.0.0.1).",
        formatter_class=HelpFormatter)
    p.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = ConsoleSettings.from_env()

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(server: ConsoleServer) -> None:
            print(f"console ready url={server.url} ack_api={settings.ack_api_url}", flush=True)

        await run_console(settings, stop=stop, on_ready=ready)

    asyncio.run(_run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
