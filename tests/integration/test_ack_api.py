"""Ack API inside a running dispatcher: auth, malformed bodies, unknown/resolved alerts,
listing, and the ack record on the real ``acks`` topic."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.access import hash_token
from services.ack_api import AckRecord, AlertBook, TokenFileError, load_tokens
from services.dispatcher import log_behind, open_log_reader, run_dispatcher
from services.receiver import WebhookReceiver
from services.routing import parse_routing
from services.settings import DispatcherSettings, KafkaSettings, Topics
from streaming.events import AlertEvent
from streaming.metrics import DispatcherMetrics

SECRET = "whsec_" + base64.b64encode(b"ack-api-secret-0123456789").decode()
TOKEN = "nurse-token-0123456789abcdef"


def _alert(patient: str, priority: str = "high") -> AlertEvent:
    return AlertEvent(alert_id=f"{patient}:brady:1", revision=1, action="raised", patient_id=patient,
                      device_id="d", condition="bradycardia", category="physiological", priority=priority,
                      onset_ts_ms=1_700_000_000_000, detected_ts_ms=1_700_000_001_000, rule="hr_low",
                      produced_wall_ms=int(time.time() * 1000))


def test_load_tokens_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "t.yaml"
    y.write_text(f"{TOKEN}: nurse.a\n")
    assert load_tokens(y) == {TOKEN: "nurse.a"}
    j = tmp_path / "t.json"
    j.write_text(json.dumps({TOKEN: "nurse.b"}))
    assert load_tokens(j) == {TOKEN: "nurse.b"}
    j.write_text(json.dumps({"short": "x"}))
    with pytest.raises(TokenFileError, match="16 characters"):
        load_tokens(j)
    with pytest.raises(TokenFileError, match="cannot be read"):
        load_tokens(tmp_path / "missing.yaml")


def test_alert_book_statuses() -> None:
    b = AlertBook()
    ev = _alert("p1")
    b.observe(ev)
    assert b.counts() == ({"high": 1, "medium": 0, "low": 0}, {"high": 1, "medium": 0, "low": 0})
    b.apply(AckRecord(ev.alert_id, "ack", "n", 1))
    assert b.get(ev.alert_id).status == "acknowledged"  # type: ignore[union-attr]
    b.observe(AlertEvent.from_dict({**ev.to_dict(), "action": "escalated", "escalation_level": 1}))
    assert b.get(ev.alert_id).status == "acknowledged"  # type: ignore[union-attr]
    b.apply(AckRecord(ev.alert_id, "resolve", "n", 2))
    assert b.counts()[0]["high"] == 0 and b.alerts(open_only=True) == []


@pytest.mark.integration
def test_ack_api_cases(kafka_broker: Any, make_topics: Callable[..., Topics]) -> None:
    topics = make_topics(1)

    async def go() -> None:
        async with WebhookReceiver(SECRET) as team:
            routing = parse_routing({"default_team": "c", "teams": {"c": {"routes": {
                "default": {"primary": {"url": team.url, "secret": SECRET}}},
                "tokens": [{"user": "nurse.a", "token_hash": hash_token(TOKEN)}]}}})
            settings = DispatcherSettings(KafkaSettings(bootstrap=kafka_broker.bootstrap, topics=topics),
                                          routing_file=Path("unused"), group_id=f"g-{topics.alerts}",
                                          ack_port=0)
            stop, ready = asyncio.Event(), asyncio.Event()
            box: dict[str, Any] = {}

            def on_ready(api: Any) -> None:
                box["api"] = api
                ready.set()

            task = asyncio.create_task(run_dispatcher(
                settings, routing, stop=stop, metrics=DispatcherMetrics(CollectorRegistry()),
                on_ready=on_ready))
            await asyncio.wait_for(ready.wait(), 60)
            url = box["api"].url
            ev = _alert("p1")
            p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
            await p.start()
            await p.send_and_wait(topics.alerts, ev.to_json(), key=b"p1")
            await p.stop()
            deadline = time.monotonic() + 10
            while not team.received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            ack = f"{url}/v1/alerts/{ev.alert_id}/ack"
            try:
                async with httpx.AsyncClient(timeout=5) as c:
                    assert (await c.get(f"{url}/healthz")).json() == {"status": "ok"}
                    assert (await c.post(ack)).status_code == 401
                    assert (await c.post(ack, headers={"Authorization": "Bearer wrong-token-xxxxxxxxxx"})).status_code == 401
                    assert (await c.post(ack, headers={"Authorization": f"Basic {TOKEN}"})).status_code == 401
                    assert (await c.post(ack, headers=auth, content=b"{not json")).status_code == 400
                    assert (await c.post(ack, headers=auth, json=["note"])).status_code == 400
                    assert (await c.post(ack, headers=auth, json={"note": 5})).status_code == 400
                    assert (await c.post(ack, headers=auth, json={"nope": "x"})).status_code == 400
                    r = await c.post(f"{url}/v1/alerts/nobody:x:1/ack", headers=auth)
                    # 403 (issue 9): an unknown id answers as another team's alert does
                    assert r.status_code == 403 and "nobody:x:1" in r.json()["error"]
                    listed = (await c.get(f"{url}/v1/alerts?open=true", headers=auth)).json()["alerts"]
                    assert [a["alert_id"] for a in listed] == [ev.alert_id] and listed[0]["status"] == "open"
                    r = await c.post(ack, headers=auth, json={"note": "seen"})
                    assert r.status_code == 200 and r.json()["by"] == "nurse.a"
                    assert (await c.post(ack, headers=auth)).status_code == 200  # idempotent
                    r = await c.post(f"{url}/v1/alerts/{ev.alert_id}/resolve", headers=auth)
                    assert r.status_code == 200
                    assert (await c.post(ack, headers=auth)).status_code == 409
                    assert (await c.post(f"{url}/v1/alerts/{ev.alert_id}/resolve", headers=auth)).status_code == 409
                    assert (await c.get(f"{url}/v1/alerts?open=true", headers=auth)).json()["alerts"] == []
                    assert (await c.get(f"{url}/v1/alerts", headers={})).status_code == 401
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
            reader, tps = await open_log_reader(kafka_broker.bootstrap, [topics.acks])
            try:
                end = await reader.end_offsets(tps)
                recs: list[dict[str, Any]] = []
                while await log_behind(reader, end):
                    for rs in (await reader.getmany(timeout_ms=500)).values():
                        recs += [json.loads(r.value) for r in rs]
            finally:
                await reader.stop()
            assert [(r["alert_id"], r["action"], r["by"]) for r in recs] == [
                (ev.alert_id, "ack", "nurse.a"), (ev.alert_id, "ack", "nurse.a"), (ev.alert_id, "resolve", "nurse.a")]
            assert recs[0]["note"] == "seen" and isinstance(recs[0]["ts_ms"], int)
            assert {r["team"] for r in recs} == {"c"}

    asyncio.run(go())
