"""Ack API handlers without Kafka: each team sees and acts on its own patients only; bad
tokens are rate-limited; another team's alert answers exactly as an unknown one."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestClient, TestServer

from services.access import BadTokenLimiter, TokenBook, hash_token
from services.ack_api import AckApi, AckRecord, AlertBook
from services.dispatcher import DELIVERY_FAILURE, alert_team, delivery_failure_alert
from services.routing import RoutingConfig, parse_routing
from streaming.events import AlertEvent

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
CARDIO, ICU, OPS = "cardio-token-0123456789abcdef", "icu-token-0123456789abcdef", "ops-token-0123456789abcdef"
T0 = 1_767_225_600_000


def routing() -> RoutingConfig:
    ep = {"primary": {"url": "http://127.0.0.1:1/h", "secret": SECRET}}
    return parse_routing({"default_team": "cardio", "ops_team": "ops", "teams": {
        "cardio": {"routes": {"default": ep}, "tokens": [{"user": "nurse.c", "token_hash": hash_token(CARDIO)}]},
        "icu": {"routes": {"default": ep}, "tokens": [{"user": "nurse.i", "token_hash": hash_token(ICU)}]},
        "ops": {"routes": {"default": ep}, "tokens": [{"user": "eng.o", "token_hash": hash_token(OPS)}]}},
        "patients": {"p-icu": "icu"}})


def alert(patient: str, action: str = "raised") -> AlertEvent:
    return AlertEvent(alert_id=f"{patient}:brady:{T0}", revision=0, action=action,  # type: ignore[arg-type]
                      patient_id=patient, device_id="d", condition="bradycardia",
                      category="physiological", priority="high", onset_ts_ms=T0,
                      detected_ts_ms=T0 + 1000, rule="hr_low")


class Sink:
    def __init__(self, book: AlertBook) -> None:
        self.book, self.records = book, []  # type: ignore[var-annotated]

    async def publish(self, record: AckRecord) -> None:
        self.records.append(record)
        self.book.apply(record)


def run(test: Callable[[TestClient, Sink, AlertBook], Awaitable[None]],
        limiter: BadTokenLimiter | None = None) -> None:
    async def go() -> None:
        r = routing()
        book = AlertBook()
        for pid in ("p-cardio", "p-unmapped", "p-icu"):
            book.observe(alert(pid))
        book.observe(delivery_failure_alert(alert("p-icu"), ("x",), T0))
        sink = Sink(book)
        api = AckApi(book, TokenBook(r.tokens), sink, team_of=alert_team(r), limiter=limiter)
        async with TestClient(TestServer(api.app)) as client:
            await test(client, sink, book)
    asyncio.run(go())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_team_lists_only_its_patients() -> None:
    async def t(c: TestClient, sink: Sink, book: AlertBook) -> None:
        async def ids(token: str) -> list[tuple[str, str]]:
            r = await c.get("/v1/alerts", headers=bearer(token))
            assert r.status == 200
            return sorted((a["patient_id"], a["condition"]) for a in (await r.json())["alerts"])
        # unmapped patients go to the default team, as their alerts do
        assert await ids(CARDIO) == [("p-cardio", "bradycardia"), ("p-unmapped", "bradycardia")]
        assert await ids(ICU) == [("p-icu", "bradycardia")]
        assert await ids(OPS) == [("p-icu", DELIVERY_FAILURE)]  # routed to ops, so ops sees it
        assert (await c.get("/v1/alerts")).status == 401
    run(t)


def test_another_teams_alert_answers_exactly_as_an_unknown_one() -> None:
    async def t(c: TestClient, sink: Sink, book: AlertBook) -> None:
        icu_alert = alert("p-icu").alert_id
        for action in ("ack", "resolve"):
            foreign = await c.post(f"/v1/alerts/{icu_alert}/{action}", headers=bearer(CARDIO))
            unknown = await c.post(f"/v1/alerts/{icu_alert}x/{action}", headers=bearer(CARDIO))
            assert foreign.status == unknown.status == 403
            f_body, u_body = await foreign.json(), await unknown.json()
            assert f_body["error"] == u_body["error"].replace(f"{icu_alert}x", icu_alert)
            assert set(foreign.headers) - {"Date"} == set(unknown.headers) - {"Date"}
        assert sink.records == []
        # resolved alerts of another team are 403 too (not 409, which would reveal them)
        sink.book.apply(AckRecord(icu_alert, "resolve", "nurse.i", T0, team="icu"))
        r = await c.post(f"/v1/alerts/{icu_alert}/ack", headers=bearer(CARDIO))
        assert r.status == 403
        r = await c.post(f"/v1/alerts/{icu_alert}/ack", headers=bearer(ICU))
        assert r.status == 409
    run(t)


def test_an_unknown_id_answers_like_a_known_foreign_one_byte_for_byte() -> None:
    """Two runs, one where the id exists for another team, one where it does not exist."""
    bodies: list[tuple[int, bytes]] = []

    async def t(c: TestClient, sink: Sink, book: AlertBook) -> None:
        r = await c.post(f"/v1/alerts/{alert('p-icu').alert_id}/ack", headers=bearer(CARDIO))
        bodies.append((r.status, await r.read()))
        r = await c.post(f"/v1/alerts/{alert('p-gone').alert_id}/ack", headers=bearer(CARDIO))
        body = await r.read()
        bodies.append((r.status, body.replace(b"p-gone", b"p-icu")))
    run(t)
    assert bodies[0] == bodies[1] and bodies[0][0] == 403


def test_ack_records_user_and_team() -> None:
    async def t(c: TestClient, sink: Sink, book: AlertBook) -> None:
        aid = alert("p-icu").alert_id
        r = await c.post(f"/v1/alerts/{aid}/ack", headers=bearer(ICU), json={"note": "seen"})
        assert r.status == 200
        body = await r.json()
        assert (body["by"], body["team"]) == ("nurse.i", "icu")
        rec = sink.records[0]
        assert (rec.alert_id, rec.action, rec.by, rec.team, rec.note) == (aid, "ack", "nurse.i", "icu", "seen")
        assert AckRecord.from_json(rec.to_json()) == rec
        old = b'{"alert_id":"a","action":"ack","by":"u","ts_ms":1,"note":null}'  # before teams
        assert AckRecord.from_json(old).team is None
    run(t)


def test_repeated_bad_tokens_get_429_with_retry_after() -> None:
    async def t(c: TestClient, sink: Sink, book: AlertBook) -> None:
        aid = alert("p-cardio").alert_id
        for _ in range(3):
            r = await c.post(f"/v1/alerts/{aid}/ack", headers=bearer("wrong-token-0123456789"))
            assert r.status == 401
        r = await c.post(f"/v1/alerts/{aid}/ack", headers=bearer("wrong-token-0123456789"))
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        # locked out: even the right token waits, so a lucky guess is not confirmed
        r = await c.get("/v1/alerts", headers=bearer(CARDIO))
        assert r.status == 429
        assert (await c.get("/healthz")).status == 200
        assert sink.records == []
    run(t, BadTokenLimiter(burst=3, refill_per_s=0.01))


def test_a_missing_header_is_not_counted_as_a_bad_token() -> None:
    async def t(c: TestClient, sink: Sink, book: AlertBook) -> None:
        for _ in range(5):
            assert (await c.get("/v1/alerts")).status == 401
        assert (await c.get("/v1/alerts", headers=bearer(CARDIO))).status == 200
    run(t, BadTokenLimiter(burst=1, refill_per_s=0.01))


def test_alert_team_follows_routing() -> None:
    r = routing()
    team_of = alert_team(r)
    book = AlertBook()
    book.observe(alert("p-icu"))
    book.observe(delivery_failure_alert(alert("p-icu"), ("x",), T0))
    teams = sorted(team_of(a) for a in book.alerts())
    assert teams == ["icu", "ops"]

