"""Benchmark of the delivery stage: alerts topic to a local signed-webhook receiver.

``cardiowatch bench alerts --json [--rate R --duration-s D] [--alerts N] [--patients P]``
starts a local Kafka broker (unless ``--bootstrap`` is given), a
:class:`~services.receiver.WebhookReceiver`, and the dispatcher in this process, then
measures two things, one after the other, on the same warm dispatcher:

* ``steady``: alerts produced at a fixed offered rate (``--rate`` alerts/s for
  ``--duration-s``) to healthy receivers, so the dispatcher is not saturated; reports
  the produced-to-received latency percentiles (wall clock, milliseconds). This is the
  number the "p99 under 500 ms when receivers are healthy" target is about.
* ``saturated``: a backlog of ``--alerts`` alerts is produced first, then a fresh
  dispatcher is started on it (as after an outage); reports the drain rate, the most
  alerts/s the dispatcher delivers (``alerts_per_s`` = delivered / ``drain_s``, from
  "consuming" to the last arrival; the start-up replay of the log into the escalation
  tracker happens before that). Latency is meaningless there and not reported.

Progress goes to stderr; the result (``--json``) to stdout. The receiver runs in the
same process and event loop as the dispatcher, so its CPU cost counts against the
dispatcher's throughput.

Profiling (dev note; stdlib only, nothing to install)::

    python -m cProfile -o /tmp/bench.prof -m services.bench_alerts --json --duration-s 0 --alerts 5000
    python -c "import pstats; pstats.Stats('/tmp/bench.prof').sort_stats('tottime').print_stats(30)"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from services.broker import LocalBroker
from services.dispatcher import DispatchOptions, run_dispatcher
from services.receiver import Arrival, WebhookReceiver
from services.routing import parse_routing
from services.settings import DispatcherSettings, KafkaSettings, Topics
from streaming.events import AlertEvent
from streaming.kafka_security import KafkaSecurity
from streaming.metrics import DispatcherMetrics
from models.cli_help import HelpFormatter

__all__ = ["LATENCY_TARGET_P99_MS", "bench", "main"]

# the product target: p99 produced-to-received latency with healthy receivers
LATENCY_TARGET_P99_MS = 500.0


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def _progress(msg: str) -> None:
    print(f"[bench alerts] {msg}", file=sys.stderr, flush=True)


def _alert(phase: str, i: int, n_patients: int) -> tuple[str, bytes]:
    pid = f"bench-{i % n_patients:04d}"
    now_ms = int(time.time() * 1000)
    ev = AlertEvent(alert_id=f"{pid}:vt:{phase}:{i}", revision=1, action="raised", patient_id=pid,
                    device_id=f"dev-{pid}", condition="ventricular_tachycardia",
                    category="physiological", priority="high", onset_ts_ms=now_ms - 2000,
                    detected_ts_ms=now_ms, rule="bench", score=1.0, threshold=0.5,
                    model_version="bench", signal_quality=1.0, produced_wall_ms=now_ms)
    return pid, ev.to_json()


def _phase_arrivals(rec: WebhookReceiver, phase: str) -> list[Arrival]:
    tag = f":vt:{phase}:"
    return [a for a in rec.received if tag in a.body["alert_id"]]


async def _wait_for(rec: WebhookReceiver, phase: str, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    while len(_phase_arrivals(rec, phase)) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        if time.monotonic() - last_report >= 2.0:
            _progress(f"{phase}: {len(_phase_arrivals(rec, phase))}/{n} delivered")
            last_report = time.monotonic()


async def _steady(producer: Any, topic: str, rec: WebhookReceiver, rate_per_s: float,
                  duration_s: float, warmup_s: float, n_patients: int) -> dict[str, Any]:
    """Offer alerts at ``rate_per_s`` on a fixed schedule (no catch-up bursts beyond it)."""
    for phase, secs in (("warmup", warmup_s), ("steady", duration_s)):
        n = max(1, int(round(rate_per_s * secs))) if secs > 0 else 0
        if n == 0:
            continue
        _progress(f"{phase}: offering {n} alerts at {rate_per_s:g}/s over {n / rate_per_s:.1f} s")
        t0 = time.monotonic()
        futs = []
        for i in range(n):
            delay = t0 + i / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key, value = _alert(phase, i, n_patients)
            futs.append(await producer.send(topic, value, key=key.encode()))
        await asyncio.gather(*futs)
        offered_s = time.monotonic() - t0
        await _wait_for(rec, phase, n, 60 + n / 20)
    got = _phase_arrivals(rec, "steady")
    lat_ms = [a.received_wall_ms - a.body["produced_wall_ms"] for a in got]
    n = max(1, int(round(rate_per_s * duration_s)))
    p99 = _percentile(lat_ms, 99) if got else None
    return {
        "offered_rate_per_s": rate_per_s, "duration_s": duration_s, "warmup_s": warmup_s,
        "alerts": n, "delivered": len(got),
        "achieved_offer_rate_per_s": round(n / offered_s, 1),
        "latency_ms_p50": _percentile(lat_ms, 50) if got else None,
        "latency_ms_p99": p99,
        "latency_ms_max": max(lat_ms) if got else None,
        "target_p99_ms": LATENCY_TARGET_P99_MS,
        "target_met": p99 is not None and len(got) == n and p99 < LATENCY_TARGET_P99_MS,
    }


async def _saturated(producer: Any, topic: str, rec: WebhookReceiver, n_alerts: int,
                     n_patients: int, start_dispatcher: Any) -> dict[str, Any]:
    """Pre-fill a backlog of ``n_alerts``, then start a dispatcher and time the drain.

    The backlog is produced before the dispatcher starts, so the rate measured is the
    dispatcher's, not the benchmark producer's (which shares this process and CPU).
    """
    _progress(f"saturated: producing a backlog of {n_alerts} alerts")
    t0 = time.time()
    futs = []
    for i in range(n_alerts):
        key, value = _alert("sat", i, n_patients)
        futs.append(await producer.send(topic, value, key=key.encode()))
    await asyncio.gather(*futs)
    produced_s = time.time() - t0
    _progress("saturated: starting a dispatcher on the backlog")
    stop, task, ready_wall_s = await start_dispatcher()
    try:
        await _wait_for(rec, "sat", n_alerts, 120 + n_alerts / 50)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    got = _phase_arrivals(rec, "sat")
    drain_s = (max(a.received_wall_ms for a in got) / 1000 - ready_wall_s) if got else float("nan")
    return {
        "alerts": n_alerts, "delivered": len(got), "produce_s": round(produced_s, 3),
        "drain_s": round(drain_s, 3),
        "alerts_per_s": round(len(got) / drain_s, 1) if got else 0.0,
    }


async def bench(bootstrap: str, n_alerts: int, n_patients: int, partitions: int,
                create_topics: Any, *, rate_per_s: float = 50.0, duration_s: float = 20.0,
                warmup_s: float = 2.0, security: KafkaSecurity | None = None) -> dict[str, Any]:
    """Run both phases against ``bootstrap``; ``create_topics(names, partitions)`` makes topics.

    Parameters
    ----------
    bootstrap : str
        Kafka bootstrap ``host:port``.
    n_alerts : int
        Backlog size of the saturated phase (0 skips it).
    n_patients : int
        Alerts are spread round-robin over this many patient keys.
    partitions : int
        Partitions of the benchmark's topics.
    create_topics : callable
        ``create_topics(names, partitions)``.
    rate_per_s : float
        Offered rate of the steady phase, alerts per second.
    duration_s : float
        Length of the measured steady phase (0 skips it).
    warmup_s : float
        Unmeasured steady traffic first (connections, fetch sessions).
    security : KafkaSecurity, optional
        How the producer and the dispatchers connect (default plaintext).
    """
    from aiokafka import AIOKafkaProducer

    security = security or KafkaSecurity()

    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    d = Topics()
    topics = Topics(alerts=f"{prefix}.{d.alerts}", acks=f"{prefix}.{d.acks}",
                    alerts_deadletter=f"{prefix}.{d.alerts_deadletter}",
                    alert_state=f"{prefix}.{d.alert_state}")
    create_topics([topics.alerts, topics.acks, topics.alerts_deadletter, topics.alert_state], partitions)
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    result: dict[str, Any] = {"benchmark": "alerts", "patients": n_patients, "partitions": partitions}
    sat_topics = Topics(alerts=f"{prefix}.sat.{d.alerts}", acks=f"{prefix}.sat.{d.acks}",
                        alerts_deadletter=f"{prefix}.sat.{d.alerts_deadletter}",
                        alert_state=f"{prefix}.sat.{d.alert_state}")
    if n_alerts > 0:
        create_topics([sat_topics.alerts, sat_topics.acks, sat_topics.alerts_deadletter,
                       sat_topics.alert_state], partitions)
    async with WebhookReceiver(secret) as rec:
        routing = parse_routing({"default_team": "bench", "teams": {"bench": {"routes": {"default": {
            "primary": {"url": rec.url, "secret": secret, "timeout_s": 10}}}}}})

        async def start_dispatcher(t: Topics, group: str) -> tuple[asyncio.Event, Any, float]:
            settings = DispatcherSettings(KafkaSettings(bootstrap=bootstrap, topics=t, security=security),
                                          routing_file=Path("<bench>"), group_id=group)
            stop, ready = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(run_dispatcher(
                settings, routing, stop=stop, metrics=DispatcherMetrics(CollectorRegistry()),
                options=DispatchOptions(max_in_flight=max(1000, n_alerts)),
                on_ready=lambda _api: ready.set()))
            await asyncio.wait_for(ready.wait(), 120)
            _progress(f"dispatcher ready on {t.alerts}")
            return stop, task, time.time()

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                    **security.aiokafka_kwargs())
        await producer.start()
        try:
            if duration_s > 0:
                stop, task, _ = await start_dispatcher(topics, f"{prefix}.dispatcher")
                try:
                    result["steady"] = await _steady(producer, topics.alerts, rec, rate_per_s,
                                                     duration_s, warmup_s, n_patients)
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 60)
                _progress(f"steady: {json.dumps(result['steady'])}")
            if n_alerts > 0:
                result["saturated"] = await _saturated(
                    producer, sat_topics.alerts, rec, n_alerts, n_patients,
                    lambda: start_dispatcher(sat_topics, f"{prefix}.sat.dispatcher"))
                _progress(f"saturated: {json.dumps(result['saturated'])}")
        finally:
            await producer.stop()
        result["duplicates"] = len(rec.duplicates)
    result.update(python=platform.python_version(), cpus=os.cpu_count())
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cardiowatch bench alerts``."""
    p = argparse.ArgumentParser(prog="cardiowatch bench alerts", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rate", type=float, default=50.0,
                   help="steady phase: offered alerts per second (default 50)")
    p.add_argument("--duration-s", type=float, default=20.0,
                   help="steady phase: measured seconds (0 skips it; default 20)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="steady phase: unmeasured seconds first")
    p.add_argument("--alerts", type=int, default=2000,
                   help="saturated phase: backlog size (0 skips it; default 2000)")
    p.add_argument("--patients", type=int, default=50, help="patients the alerts are spread over")
    p.add_argument("--partitions", type=int, default=8, help="partitions of each topic on the benchmark's broker")
    p.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    a = p.parse_args(argv)
    for name in ("patients", "partitions"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    for name in ("alerts", "duration_s", "warmup_s"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    if not a.rate > 0:
        p.error(f"--rate must be > 0, got {a.rate}")
    if a.alerts == 0 and a.duration_s == 0:
        p.error("nothing to measure: --alerts 0 and --duration-s 0")
    security = KafkaSecurity()
    if a.bootstrap:
        broker = None
        bootstrap = a.bootstrap
        security = KafkaSettings.from_env().security  # CARDIOWATCH_KAFKA_* for a given broker
        from services.broker import create_topics as _create

        def create(names: list[str], parts: int) -> None:
            _create(bootstrap, names, parts, security=security)
    else:
        _progress("starting a local Kafka broker")
        broker = LocalBroker(partitions=a.partitions).start()
        bootstrap = broker.bootstrap
        create = broker.create_topics  # type: ignore[assignment]
    try:
        result = asyncio.run(bench(bootstrap, a.alerts, a.patients, a.partitions, create,
                                   rate_per_s=a.rate, duration_s=a.duration_s, warmup_s=a.warmup_s,
                                   security=security))
    finally:
        if broker is not None:
            broker.stop()
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    ok = all(ph["delivered"] == ph["alerts"] for k, ph in result.items() if k in ("steady", "saturated"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
