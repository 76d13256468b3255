"""Dispatcher: at-least-once delivery, per-patient order, retries/failover, dead-letter,
escalation, SIGKILL restart; against the real local Kafka broker and real aiohttp receivers.

The parts that need no broker (``deliver`` over ``httpx.MockTransport``, the circuit
breaker, OffsetBook, parking, dead letters) are tested in tests/unit/services/.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.access import hash_token
from services.ack_api import AckRecord
from services.alert_log import default_tracker, rebuild
from services.alert_state import checkpoint_key
from services.dispatcher import (
    DispatchOptions,
    log_behind,
    open_log_reader,
    run_dispatcher,
)
from services.receiver import WebhookReceiver
from services.routing import RoutingConfig, parse_routing
from services.settings import REPO_ROOT, DispatcherSettings, KafkaSettings, Topics
from streaming.events import AlertEvent
from streaming.kafka_security import KafkaSecurity
from streaming.metrics import DispatcherMetrics
from worker_harness import wait_for_no_lag

SECRET = "whsec_" + base64.b64encode(b"integration-secret-0123456789").decode()
FAST_RETRY = {"max_attempts": 3, "base_backoff_s": 0.05, "max_backoff_s": 0.2, "total_budget_s": 5}


def _alert(patient: str, seq: int, priority: str = "high", **kw: Any) -> AlertEvent:
    onset = 1_700_000_000_000 + seq * 1000
    base: dict[str, Any] = dict(
        alert_id=f"{patient}:vt:{onset}", revision=1, action="raised", patient_id=patient,
        device_id=f"dev-{patient}", condition="ventricular_tachycardia", category="physiological",
        priority=priority, onset_ts_ms=onset, detected_ts_ms=onset + 500, rule="test",
        score=0.9, threshold=0.5, model_version="t/1", signal_quality=1.0,
        produced_wall_ms=int(time.time() * 1000), details={"seq": seq})
    base.update(kw)
    return AlertEvent(**base)


def _ep(url: str, timeout_s: float = 1.0, **kw: Any) -> dict[str, Any]:
    return {"url": url, "secret": SECRET, "timeout_s": timeout_s, **kw}


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# ----------------------------------------------------------------- with the real broker

async def _produce(bootstrap: str, topic: str, events: list[AlertEvent]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    try:
        for ev in events:
            ev = AlertEvent.from_dict({**ev.to_dict(), "produced_wall_ms": int(time.time() * 1000)})
            await p.send_and_wait(topic, ev.to_json(), key=ev.patient_id.encode())
    finally:
        await p.stop()


async def _read_raw(bootstrap: str, topic: str) -> list[bytes]:
    c, tps = await open_log_reader(bootstrap, [topic])
    try:
        end = await c.end_offsets(tps)
        out: list[bytes] = []
        while await log_behind(c, end):
            for recs in (await c.getmany(timeout_ms=500)).values():
                out += [r.value for r in recs]
        return out
    finally:
        await c.stop()


async def _read_all(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(v) for v in await _read_raw(bootstrap, topic)]


async def _until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


class _Dispatcher:
    """run_dispatcher as a task in the test's loop."""

    def __init__(self, bootstrap: str, topics: Topics, routing: RoutingConfig, **kw: Any) -> None:
        self.settings = DispatcherSettings(KafkaSettings(bootstrap=bootstrap, topics=topics),
                                           routing_file=Path("unused.yaml"),
                                           group_id=f"g-{topics.alerts}", ack_port=0)
        self.routing, self.kw = routing, kw
        self.stop = asyncio.Event()
        self.metrics = DispatcherMetrics(CollectorRegistry())
        self.ready = asyncio.Event()
        self.api: Any = None

    async def __aenter__(self) -> _Dispatcher:
        def on_ready(api: Any) -> None:
            self.api = api
            self.ready.set()
        self.task = asyncio.create_task(run_dispatcher(
            self.settings, self.routing, stop=self.stop, metrics=self.metrics, on_ready=on_ready,
            **self.kw))
        done, _ = await asyncio.wait([self.task, asyncio.create_task(self.ready.wait())],
                                     timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        assert self.ready.is_set(), "dispatcher did not start"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


def _in_order(rec: WebhookReceiver) -> dict[str, list[int]]:
    per: dict[str, list[int]] = {}
    for a in rec.received:
        per.setdefault(a.body["patient_id"], []).append(a.body["details"]["seq"])
    return per


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["500", "hang", "close"])
def test_failing_primary_retries_then_fails_over_without_blocking_healthy(
        kafka_broker: Any, make_topics: Callable[..., Topics], mode: str) -> None:
    topics = make_topics(4)

    async def go() -> None:
        async with WebhookReceiver(SECRET) as bad, WebhookReceiver(SECRET) as backup, \
                WebhookReceiver(SECRET) as healthy:
            await bad.set_mode(mode)  # type: ignore[arg-type]
            routing = parse_routing({"default_team": "well", "teams": {
                "sick": {"retry": FAST_RETRY, "routes": {"default": {
                    "primary": _ep(bad.url, timeout_s=0.5), "failover": _ep(backup.url)}}},
                "well": {"retry": FAST_RETRY, "routes": {"default": {"primary": _ep(healthy.url)}}}},
                "patients": {"sick-1": "sick", "sick-2": "sick"}})
            async with _Dispatcher(kafka_broker.bootstrap, topics, routing) as d:
                sick = [_alert(p, i) for i in range(3) for p in ("sick-1", "sick-2")]
                well = [_alert(f"well-{j}", i) for i in range(3) for j in range(5)]
                t0 = time.monotonic()
                await _produce(kafka_broker.bootstrap, topics.alerts, sick + well)
                await _until(lambda: len(healthy.received) == 15, 10, "healthy deliveries")
                healthy_done_s = time.monotonic() - t0
                await _until(lambda: len(backup.received) == 6, 30, "failover deliveries")
                lat = [a.received_wall_ms - a.body["produced_wall_ms"] for a in healthy.received]
                # the sick patients need >= 3 attempts x (timeout or error) before failover;
                # the healthy team is served meanwhile
                print(f"mode={mode} healthy p50={sorted(lat)[len(lat)//2]} ms max={max(lat)} ms; "
                      f"all healthy after {healthy_done_s:.2f} s; failover after "
                      f"{time.monotonic() - t0:.2f} s")
                assert max(lat) < 1500, lat
                assert _in_order(backup) == {"sick-1": [0, 1, 2], "sick-2": [0, 1, 2]}
                assert all(v == [0, 1, 2] for v in _in_order(healthy).values())
                assert bad.requests >= 3 and not bad.received
                m = d.metrics.registry
                # the receiver records before it answers: let the last answers reach the dispatcher
                await _until(lambda: m.get_sample_value("cardiowatch_deliveries_total", {
                    "outcome": "failover_delivered", "priority": "high"}) == 6, 5, "outcome metrics")
                assert m.get_sample_value("cardiowatch_delivery_failovers_total") == 6
            await bad.set_mode("ok")

    _run(go())


@pytest.mark.integration
def test_hung_team_piling_up_is_parked_and_never_holds_back_a_healthy_team(
        kafka_broker: Any, make_topics: Callable[..., Topics]) -> None:
    """A team endpoint hangs while its patients' alerts pile up. Past the held-bytes
    budget they wait as offsets only (parked) instead of pausing the consumer, so the
    healthy team is served at once; when the endpoint recovers, every parked alert is
    read back from the log and delivered intact, in order per patient."""
    topics = make_topics(4)
    patient_retry = {"max_attempts": 100, "base_backoff_s": 0.1, "max_backoff_s": 0.5,
                     "total_budget_s": 300}
    budget = 8_000

    async def go() -> None:
        async with WebhookReceiver(SECRET, mode="hang") as bad, WebhookReceiver(SECRET) as healthy:
            routing = parse_routing({"default_team": "well", "teams": {
                "sick": {"retry": patient_retry, "routes": {"default": {
                    "primary": _ep(bad.url, timeout_s=0.3)}}},
                "well": {"retry": FAST_RETRY, "routes": {"default": {"primary": _ep(healthy.url)}}}},
                "patients": {f"sick-{j}": "sick" for j in range(4)}})
            opts = DispatchOptions(max_held_bytes=budget, max_in_flight=5_000)
            async with _Dispatcher(kafka_broker.bootstrap, topics, routing, options=opts) as d:
                m = d.metrics.registry
                sick = [_alert(f"sick-{j}", i) for i in range(50) for j in range(4)]
                await _produce(kafka_broker.bootstrap, topics.alerts, sick)
                await _until(lambda: (m.get_sample_value("cardiowatch_dispatch_parked_total") or 0) >= 150,
                             30, "the sick team's backlog to be parked")
                await _until(lambda: m.get_sample_value("cardiowatch_dispatch_in_flight_messages") == 200,
                             10, "the in-flight gauge")
                # what stays in memory: the budget plus the one alert each stuck patient is on
                biggest = max(len(e.to_json()) for e in sick)
                assert m.get_sample_value("cardiowatch_dispatch_held_bytes") <= budget + 4 * biggest

                well = [_alert(f"well-{j}", i) for i in range(3) for j in range(5)]
                await _produce(kafka_broker.bootstrap, topics.alerts, well)
                await _until(lambda: len(healthy.received) == 15, 10, "healthy deliveries")
                lat = [a.received_wall_ms - a.body["produced_wall_ms"] for a in healthy.received]
                assert max(lat) < 1500, lat
                assert all(v == [0, 1, 2] for v in _in_order(healthy).values())
                assert not bad.received

                await bad.set_mode("ok")
                want = {e.event_id: e for e in sick}
                await _until(lambda: {a.webhook_id for a in bad.received} >= set(want), 90,
                             "every parked alert after recovery")
                for a in bad.received:  # the bytes read back are the alert that was produced
                    ev = want[a.webhook_id]
                    assert (a.body["alert_id"], a.body["details"]) == (ev.alert_id, ev.details)
                firsts: dict[str, list[int]] = {}
                for p, seqs in _in_order(bad).items():  # redeliveries may repeat, never reorder
                    firsts[p] = [s for i, s in enumerate(seqs) if s not in seqs[:i]]
                assert firsts == {f"sick-{j}": list(range(50)) for j in range(4)}
                await _until(lambda: m.get_sample_value("cardiowatch_dispatch_in_flight_messages") == 0,
                             10, "nothing left in flight")

    _run(go())


@pytest.mark.integration
def test_all_routes_failing_dead_letters_and_raises_one_delivery_failure(
        kafka_broker: Any, make_topics: Callable[..., Topics]) -> None:
    topics = make_topics(2)

    async def go() -> None:
        async with WebhookReceiver(SECRET, mode="down") as primary, \
                WebhookReceiver(SECRET, mode="500") as failover, WebhookReceiver(SECRET) as ops:
            routing = parse_routing({"default_team": "c", "ops_team": "ops", "teams": {
                "c": {"retry": FAST_RETRY, "routes": {"default": {
                    "primary": _ep(primary.url), "failover": _ep(failover.url)}}},
                "ops": {"retry": FAST_RETRY, "routes": {"technical": {"primary": _ep(ops.url, format="alertmanager")},
                                                         "default": {"primary": _ep(ops.url)}}}}})
            ev = _alert("p9", 1)
            async with _Dispatcher(kafka_broker.bootstrap, topics, routing):
                await _produce(kafka_broker.bootstrap, topics.alerts, [ev])
                await _until(lambda: len(ops.received) == 1, 20, "ops alert")
                body = ops.received[0].body
                assert body["version"] == "4"
                assert body["alerts"][0]["labels"]["alertname"] == "delivery_failure"
                dl = await _read_all(kafka_broker.bootstrap, topics.alerts_deadletter)
                assert [d["event_id"] for d in dl] == [ev.event_id]
                assert dl[0]["schema"] == "cardiowatch.deadletter/1" and dl[0]["reason"] == "all_routes_failed"
                assert any("HTTP 500" in r for r in dl[0]["reasons"])
                # the alert's bytes as they were in the log, not a re-encoding
                in_log = [v for v in await _read_raw(kafka_broker.bootstrap, topics.alerts)
                          if json.loads(v)["event_id"] == ev.event_id]
                assert [base64.b64decode(dl[0]["raw_b64"])] == in_log
                # now ops is down too: the failure alert is dead-lettered, never re-raised
                await ops.set_mode("down")
                ev2 = _alert("p9", 2)
                await _produce(kafka_broker.bootstrap, topics.alerts, [ev2])
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    dl = await _read_all(kafka_broker.bootstrap, topics.alerts_deadletter)
                    if len(dl) >= 3:
                        break
                    await asyncio.sleep(0.2)
                # Every alert in the log processed and committed: a failure alert raised for
                # the failed failure alert would be in the log by now (it is produced before
                # its trigger's offset completes).
                await asyncio.to_thread(wait_for_no_lag, kafka_broker.bootstrap, f"g-{topics.alerts}",
                                        [topics.alerts], 20)
                alerts = await _read_all(kafka_broker.bootstrap, topics.alerts)
                dl = await _read_all(kafka_broker.bootstrap, topics.alerts_deadletter)
            failures = [a for a in alerts if a["condition"] == "delivery_failure"]
            assert len(failures) == 2  # one per original alert, none for the failed failure alert
            assert [json.loads(base64.b64decode(d["raw_b64"]))["condition"] for d in dl] == [
                "ventricular_tachycardia", "ventricular_tachycardia", "delivery_failure"]

    _run(go())


@pytest.mark.integration
def test_unacknowledged_high_alert_escalates_on_time_acknowledged_does_not(
        kafka_broker: Any, make_topics: Callable[..., Topics]) -> None:
    topics = make_topics(2)
    token = "tok-" + "x" * 20

    async def go() -> None:
        async with WebhookReceiver(SECRET) as team, WebhookReceiver(SECRET) as nurse:
            routing = parse_routing({
                "default_team": "c",
                "escalation": {"escalate_after_s": {"high": 1.0}, "max_level": 1, "poll_s": 0.05},
                "teams": {"c": {"retry": FAST_RETRY, "routes": {"default": {
                    "primary": _ep(team.url), "escalation": [_ep(nurse.url)]}},
                    "tokens": [{"user": "dr.ack", "token_hash": hash_token(token)}]}}})
            async with _Dispatcher(kafka_broker.bootstrap, topics, routing) as d:
                left, acked = _alert("p-left", 1), _alert("p-acked", 1)
                await _produce(kafka_broker.bootstrap, topics.alerts, [left, acked])
                await _until(lambda: len(team.received) == 2, 10, "first notifications")
                async with httpx.AsyncClient() as c:
                    r = await c.post(f"{d.api.url}/v1/alerts/{acked.alert_id}/ack",
                                     headers={"Authorization": f"Bearer {token}"}, json={"note": "on it"})
                    assert r.status_code == 200, r.text
                t_raised = next(a.received_wall_ms for a in team.received if a.body["patient_id"] == "p-left")
                await _until(lambda: len(nurse.received) >= 1, 10, "escalation")
                esc = nurse.received[0]
                assert esc.body["patient_id"] == "p-left" and esc.body["action"] == "escalated"
                assert esc.body["escalation_level"] == 1
                delay_s = (esc.received_wall_ms - t_raised) / 1000
                print(f"escalation arrived {delay_s:.2f} s after the first notification (after_s=1)")
                assert 0.5 <= delay_s <= 3.0
                await asyncio.sleep(2.0)
                assert [a.body["patient_id"] for a in nurse.received] == ["p-left"]  # max_level 1
                acks = await _read_all(kafka_broker.bootstrap, topics.acks)
                assert acks[0]["alert_id"] == acked.alert_id and acks[0]["by"] == "dr.ack"
                # the acknowledgement is logged and told to the team
                await _until(lambda: any(a.body["action"] == "acknowledged" for a in team.received),
                             5, "acknowledged notice")

    _run(go())


@pytest.mark.integration
@pytest.mark.slow
def test_receiver_down_60s_then_back_gets_everything_in_order(
        kafka_broker: Any, make_topics: Callable[..., Topics]) -> None:
    topics = make_topics(4)
    retry = {"max_attempts": 100, "base_backoff_s": 0.25, "max_backoff_s": 2.0, "total_budget_s": 120}

    async def go() -> None:
        async with WebhookReceiver(SECRET, mode="down") as rec:
            routing = parse_routing({"default_team": "c", "teams": {"c": {"retry": retry, "routes": {
                "default": {"primary": _ep(rec.url)}}}}})
            async with _Dispatcher(kafka_broker.bootstrap, topics, routing) as d:
                events = [_alert(f"p{j}", i) for i in range(10) for j in range(6)]
                await _produce(kafka_broker.bootstrap, topics.alerts, events)
                await asyncio.sleep(60)
                assert not rec.received
                await rec.set_mode("ok")
                await _until(lambda: len(rec.received) == 60, 30, "all 60 alerts")
                assert _in_order(rec) == {f"p{j}": list(range(10)) for j in range(6)}
                assert {a.webhook_id for a in rec.received} == {e.event_id for e in events}
                for dup in rec.duplicates:
                    assert dup.webhook_id in {e.event_id for e in events}
                assert d.metrics.registry.get_sample_value("cardiowatch_delivery_retries_total") > 6

    _run(go())


@pytest.mark.integration
def test_two_dispatchers_share_the_partitions_and_hand_over_without_loss(
        kafka_broker: Any, make_topics: Callable[..., Topics]) -> None:
    """Two dispatchers in one group split the alerts topic's partitions; when one stops,
    the other takes them over from the committed offsets. Every alert arrives, in order
    per patient (redeliveries carry their original webhook-id)."""
    topics = make_topics(4)

    async def go() -> None:
        async with WebhookReceiver(SECRET) as rec:
            routing = parse_routing({"default_team": "c", "teams": {"c": {"retry": FAST_RETRY, "routes": {
                "default": {"primary": _ep(rec.url)}}}}})
            events = [_alert(f"p{j}", i) for i in range(30) for j in range(8)]
            phases = [events[:80], events[80:160], events[160:]]
            sent: list[AlertEvent] = []

            async def produce_and_wait(batch: list[AlertEvent]) -> None:
                sent.extend(batch)
                await _produce(kafka_broker.bootstrap, topics.alerts, batch)
                await _until(lambda: {a.webhook_id for a in rec.received} >= {e.event_id for e in sent},
                             30, f"{len(sent)} deliveries")

            def delivered(d: _Dispatcher) -> float:
                return sum(d.metrics.registry.get_sample_value("cardiowatch_deliveries_total", {
                    "outcome": o, "priority": "high"}) or 0 for o in ("delivered", "failover_delivered"))

            def owned(d: _Dispatcher) -> float:
                return d.metrics.registry.get_sample_value("cardiowatch_dispatch_assigned_partitions") or 0

            d1 = _Dispatcher(kafka_broker.bootstrap, topics, routing)
            await d1.__aenter__()
            await produce_and_wait(phases[0])
            async with _Dispatcher(kafka_broker.bootstrap, topics, routing) as d2:
                await _until(lambda: owned(d2) >= 1 and owned(d1) >= 1 and owned(d1) + owned(d2) == 4,
                             60, "the partitions to be split between the two")
                before = delivered(d1), delivered(d2)
                await produce_and_wait(phases[1])
                assert delivered(d1) > before[0] and delivered(d2) > before[1], "one dispatcher idle"
                await d1.__aexit__(None, None, None)
                await _until(lambda: owned(d2) == 4, 60, "the survivor to own every partition")
                await produce_and_wait(phases[2])
            assert _in_order(rec) == {f"p{j}": list(range(30)) for j in range(8)}
            assert {a.webhook_id for a in rec.received} == {e.event_id for e in events}

    _run(go())


def _write_routing(tmp_path: Path, url: str) -> Path:
    p = tmp_path / "routing.yaml"
    p.write_text(yaml.safe_dump({"default_team": "c", "teams": {"c": {
        "retry": {"max_attempts": 20, "base_backoff_s": 0.05, "max_backoff_s": 0.5, "total_budget_s": 60},
        "routes": {"default": {"primary": _ep(url)}}}}}))
    return p


@pytest.mark.integration
def test_sigkill_mid_delivery_then_restart_loses_nothing(
        kafka_broker: Any, make_topics: Callable[..., Topics], tmp_path: Path) -> None:
    topics = make_topics(4)

    async def go() -> None:
        async with WebhookReceiver(SECRET) as rec:
            env = {**os.environ, "CARDIOWATCH_BOOTSTRAP": kafka_broker.bootstrap,
                   "CARDIOWATCH_ROUTING_FILE": str(_write_routing(tmp_path, rec.url)),
                   "CARDIOWATCH_DISPATCHER_GROUP": f"g-{topics.alerts}",
                   "CARDIOWATCH_DISPATCHER_METRICS_PORT": "0", "CARDIOWATCH_ACK_PORT": "0",
                   "CARDIOWATCH_TOPIC_ALERTS": topics.alerts, "CARDIOWATCH_TOPIC_ACKS": topics.acks,
                   "CARDIOWATCH_TOPIC_ALERTS_DEADLETTER": topics.alerts_deadletter,
                   "CARDIOWATCH_TOPIC_ALERT_STATE": topics.alert_state,
                   "PYTHONPATH": str(REPO_ROOT)}

            def spawn() -> subprocess.Popen[bytes]:
                return subprocess.Popen([sys.executable, "-m", "services.dispatcher", "--log-level", "WARNING"],
                                        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL)

            events = [_alert(f"p{j}", i) for i in range(40) for j in range(8)]
            await _produce(kafka_broker.bootstrap, topics.alerts, events)
            # slow the receiver so the kill lands mid-stream: every other request fails
            await rec.set_mode("500")
            proc = spawn()
            try:
                await _until(lambda: rec.requests > 40, 60, "dispatcher under way")
                await rec.set_mode("ok")
                await _until(lambda: len(rec.received) >= 60, 30, "some deliveries")
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                got_before = len(rec.received)
                assert got_before < len(events), "killed too late to test anything"
                proc = spawn()
                await _until(lambda: len(rec.received) == len(events), 60, "all deliveries after restart")
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            print(f"killed after {got_before}/{len(events)} unique deliveries; "
                  f"{len(rec.duplicates)} duplicates after restart")
            assert _in_order(rec) == {f"p{j}": list(range(40)) for j in range(8)}
            assert {a.webhook_id for a in rec.received} == {e.event_id for e in events}

    _run(go())


# ----------------------------------------------------------------- the alert-state topic

async def _produce_acks(bootstrap: str, topic: str, recs: list[AckRecord]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    try:
        for r in recs:
            await p.send_and_wait(topic, r.to_json(), key=r.alert_id.encode())
    finally:
        await p.stop()


async def _read_records(bootstrap: str, topic: str) -> list[tuple[bytes, bytes | None]]:
    c, tps = await open_log_reader(bootstrap, [topic])
    try:
        end = await c.end_offsets(tps)
        out: list[tuple[bytes, bytes | None]] = []
        while await log_behind(c, end):
            for recs in (await c.getmany(timeout_ms=500)).values():
                out += [(r.key, r.value) for r in recs]
        return out
    finally:
        await c.stop()


def _latched_and_finished(bootstrap: str, topics: Topics) -> tuple[list[AlertEvent], list[AckRecord]]:
    """p0 resolved, p1 acknowledged and cleared (closed), p2 cleared unacknowledged (latched),
    p3..p5 open; all in the logs before any dispatcher ran."""
    now = int(time.time() * 1000)
    raised = [_alert(f"p{j}", j) for j in range(6)]
    cleared = [dataclasses.replace(raised[j], revision=2, action="cleared", details={"seq": 100 + j})
               for j in (1, 2)]
    acks = [AckRecord(raised[0].alert_id, "resolve", "nurse.a", now, None, "c"),
            AckRecord(raised[1].alert_id, "ack", "nurse.a", now, None, "c")]
    _run(_produce(bootstrap, topics.alerts, raised))
    _run(_produce_acks(bootstrap, topics.acks, acks))
    _run(_produce(bootstrap, topics.alerts, cleared))
    return raised, acks


@pytest.mark.integration
def test_first_start_rebuilds_from_the_logs_once_then_restarts_from_the_alert_state(
        kafka_broker: Any, make_topics: Callable[..., Topics]) -> None:
    topics = make_topics(2)
    raised, _ = _latched_and_finished(kafka_broker.bootstrap, topics)
    ids = [e.alert_id for e in raised]

    async def go() -> None:
        async with WebhookReceiver(SECRET) as rec:
            routing = parse_routing({"default_team": "c", "teams": {"c": {"retry": FAST_RETRY,
                                     "routes": {"default": {"primary": _ep(rec.url)}}}}})
            # a cluster with alerts and acks but no alert state yet: the raw logs, once
            async with _Dispatcher(kafka_broker.bootstrap, topics, routing) as d1:
                await _until(lambda: len(rec.received) >= 8, 30, "all 8 alerts delivered")
                first = {a: d1.api._book.export(a) for a in ids}
            assert [first[a]["status"] for a in ids] == ["resolved", "closed", "open", "open", "open", "open"]
            state = await _read_records(kafka_broker.bootstrap, topics.alert_state)
            keys = {k for k, _ in state}
            assert {a.encode() for a in ids} <= keys
            assert {checkpoint_key(topics.alerts, p) for p in (0, 1)} <= keys
            # the second start reads the state and replays nothing already in it
            seen: list[Any] = []
            done = await rebuild(kafka_broker.bootstrap, topics.alerts, topics.acks, KafkaSecurity(),
                                 observe=lambda ev, ts, p: seen.append(ev), apply_ack=seen.append,
                                 timeout_s=30, max_records=1000, state_topic=topics.alert_state,
                                 restore=seen.append)
            await done.acks_consumer.stop()
            assert done.mode == "state" and done.restored == 6 and (done.alerts, done.acks) == (0, 0)
            async with _Dispatcher(kafka_broker.bootstrap, topics, routing) as d2:
                again = {a: d2.api._book.export(a) for a in ids}
            assert again == first
            # the latched alert is still acknowledgeable, the closed one is not open again
            assert d2.api._book.get(ids[2]).status == "open"

    _run(go())


@pytest.mark.integration
def test_finished_alerts_are_forgotten_after_the_retention_and_tombstoned(
        kafka_broker: Any, make_topics: Callable[..., Topics]) -> None:
    topics = make_topics(2)
    raised, _ = _latched_and_finished(kafka_broker.bootstrap, topics)
    ids = [e.alert_id for e in raised]

    async def go() -> None:
        async with WebhookReceiver(SECRET) as rec:
            routing = parse_routing({"default_team": "c", "teams": {"c": {"retry": FAST_RETRY,
                                     "routes": {"default": {"primary": _ep(rec.url)}}}}})
            tracker = default_tracker(routing, retention_ms=2000)
            d = _Dispatcher(kafka_broker.bootstrap, topics, routing, tracker=tracker,
                            options=DispatchOptions(state_flush_s=0.2))
            d.settings = dataclasses.replace(d.settings, alert_retention_hours=2 / 3600)  # 2 s
            async with d:
                book = d.api._book
                await _until(lambda: len(book) == 4 and len(tracker) == 4, 30,
                             "the two finished alerts forgotten by the book and the tracker")
                # the latched and the open ones are never forgotten
                assert {a.alert_id for a in book.alerts()} == set(ids[2:])

                async def tombstoned() -> bool:
                    last = dict(await _read_records(kafka_broker.bootstrap, topics.alert_state))
                    return all(k in last and last[k] is None for k in (ids[0].encode(), ids[1].encode()))

                deadline = time.monotonic() + 20
                while not await tombstoned():
                    assert time.monotonic() < deadline, "no tombstones for the forgotten alerts"
                    await asyncio.sleep(0.2)
            done = await rebuild(kafka_broker.bootstrap, topics.alerts, topics.acks, KafkaSecurity(),
                                 observe=lambda ev, ts, p: None, apply_ack=lambda r: None,
                                 timeout_s=30, max_records=1000, state_topic=topics.alert_state,
                                 restore=lambda e: None)
            await done.acks_consumer.stop()
            assert done.mode == "state" and done.restored == 4

    _run(go())


@pytest.mark.integration
def test_a_rebuild_that_cannot_finish_fails_start_up_naming_topic_and_offsets(
        kafka_broker: Any, make_topics: Callable[..., Topics], tmp_path: Path) -> None:
    topics = make_topics(1)
    _run(_produce(kafka_broker.bootstrap, topics.alerts, [_alert("p0", i) for i in range(50)]))
    env = {**os.environ, "CARDIOWATCH_BOOTSTRAP": kafka_broker.bootstrap,
           "CARDIOWATCH_ROUTING_FILE": str(_write_routing(tmp_path, "http://127.0.0.1:9/hook")),
           "CARDIOWATCH_DISPATCHER_GROUP": f"g-{topics.alerts}",
           "CARDIOWATCH_DISPATCHER_METRICS_PORT": "0", "CARDIOWATCH_ACK_PORT": "0",
           "CARDIOWATCH_TOPIC_ALERTS": topics.alerts, "CARDIOWATCH_TOPIC_ACKS": topics.acks,
           "CARDIOWATCH_TOPIC_ALERTS_DEADLETTER": topics.alerts_deadletter,
           "CARDIOWATCH_TOPIC_ALERT_STATE": topics.alert_state,
           "CARDIOWATCH_DISPATCH_REBUILD_MAX_RECORDS": "10", "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run([sys.executable, "-m", "services.dispatcher", "--log-level", "WARNING"],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 75, r.stderr[-2000:]
    assert (f"cardiowatch dispatch: error: start-up rebuild did not reach the end of topic "
            f"{topics.alerts!r} within 10 records: partition 0 at offset 10 of 50") in r.stderr
    assert "does not start on partial state" in r.stderr
    # nothing was delivered or written as if the state were whole
    assert _run(_read_records(kafka_broker.bootstrap, topics.alert_state)) == []
