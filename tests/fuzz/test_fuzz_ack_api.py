"""Fuzz the acknowledgement API's handlers: any method, path, alert id, Authorization
header and body, against a live aiohttp server (no Kafka).

Property: every request gets a deliberate answer (never a 500, never a dropped
connection), errors are JSON ``{"error": ...}``, and no request ever acts on or lists
another team's alert."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from fuzz_support import fuzz_settings, json_values
from hypothesis import given
from hypothesis import strategies as st

from services.access import BadTokenLimiter, TokenBook, hash_token
from services.ack_api import AckApi, AckRecord, AlertBook
from services.dispatcher import alert_team
from services.routing import parse_routing
from streaming.events import AlertEvent

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
TOKENS = {"cardio": "cardio-token-0123456789abcdef", "icu": "icu-token-0123456789abcdef"}
T0 = 1_767_225_600_000
ROUTING = parse_routing({"default_team": "cardio", "teams": {
    team: {"routes": {"default": {"primary": {"url": "http://127.0.0.1:1/h", "secret": SECRET}}},
           "tokens": [{"user": f"nurse.{team}", "token_hash": hash_token(tok)}]}
    for team, tok in TOKENS.items()}, "patients": {"p-icu": "icu"}})
TEAM_OF = alert_team(ROUTING)
PATIENTS = ("p-cardio", "p-icu", "p-other")
ALLOWED = {200, 400, 401, 403, 404, 405, 409, 413, 429}


def _alert(pid: str, n: int) -> AlertEvent:
    return AlertEvent(alert_id=f"{pid}:brady:{n}", revision=0, action="raised", patient_id=pid, device_id="d",
                      condition="bradycardia", category="physiological", priority="high", onset_ts_ms=T0,
                      detected_ts_ms=T0, rule="r")


class Harness:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.book = AlertBook()
        for pid in PATIENTS:
            for n in range(3):
                self.book.observe(_alert(pid, n))
        self.records: list[AckRecord] = []
        harness = self

        class Sink:
            async def publish(self, record: AckRecord) -> None:
                harness.records.append(record)
                harness.book.apply(record)

        # a limit no fuzz run reaches: the limiter has its own tests; here every request
        # must reach the handlers
        api = AckApi(self.book, TokenBook(ROUTING.tokens), Sink(), team_of=TEAM_OF,
                     limiter=BadTokenLimiter(burst=10**9))
        self.server = TestServer(api.app)
        self.loop.run_until_complete(self.server.start_server())
        self.session = self.loop.run_until_complete(self._session())

    async def _session(self) -> ClientSession:
        return ClientSession()

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.run_until_complete(self.server.close())
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
alert_ids = st.one_of(st.sampled_from([f"{p}:brady:{n}" for p in PATIENTS for n in range(4)]),
                      st.text(max_size=30))
auth = st.one_of(st.none(), st.sampled_from([f"Bearer {t}" for t in TOKENS.values()]),
                 st.builds(lambda s: f"Bearer {s}", printable), printable,
                 st.sampled_from([f"bearer  {TOKENS['icu']}", f"Basic {TOKENS['cardio']}", "Bearer"]))
bodies = st.one_of(st.none(), st.binary(max_size=100),
                   st.builds(lambda v: json.dumps(v).encode(), json_values),
                   st.builds(lambda v: json.dumps({"note": v}).encode(), json_values),
                   st.just(b"x" * 70_000))
paths = st.one_of(
    st.builds(lambda a, act: f"/v1/alerts/{quote(a, safe='')}/{act}", alert_ids,
              st.sampled_from(["ack", "resolve", "nope", ""])),
    st.builds(lambda q: f"/v1/alerts?open={quote(q, safe='')}", printable),
    st.sampled_from(["/v1/alerts", "/healthz", "/", "/v1/alerts/", "/v1/alerts//ack"]),
)


@fuzz_settings(300)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), path=paths, authorization=auth,
       body=bodies)
def test_ack_api_handlers(harness: Harness, method: str, path: str, authorization: str | None,
                          body: bytes | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    before = len(harness.records)

    async def call() -> tuple[int, bytes, str]:
        async with harness.session.request(method, harness.server.make_url(path), headers=headers,
                                           data=body) as r:
            return r.status, await r.read(), r.content_type

    status, raw, ctype = harness.loop.run_until_complete(call())
    assert status in ALLOWED, (status, raw[:200])
    if status >= 400 and ctype == "application/json":
        assert isinstance(json.loads(raw).get("error"), str)
    scheme, _, token = (authorization or "").partition(" ")
    team = next((t for t, tok in TOKENS.items() if scheme.lower() == "bearer" and token.strip() == tok), None)
    if status == 200 and method == "GET" and (path.startswith("/v1/alerts?") or path == "/v1/alerts"):
        listed: list[dict[str, Any]] = json.loads(raw)["alerts"]
        assert team is not None
        assert all(TEAM_OF(harness.book.get(a["alert_id"])) == team for a in listed)  # type: ignore[arg-type]
    for rec in harness.records[before:]:  # whatever was acknowledged, was the caller's own team's
        state = harness.book.get(rec.alert_id)
        assert state is not None and rec.team == TEAM_OF(state)
        assert rec.by == f"nurse.{rec.team}"
    if status != 200:
        assert len(harness.records) == before
