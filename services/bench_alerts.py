"""Benchmark of the delivery stage: alerts topic to a local signed-webhook receiver.

``cardiowatch bench alerts --json [--alerts N --patients P] [--bootstrap HOST:PORT]``
starts a local Kafka broker (unless ``--bootstrap`` is given), a
:class:`~services.receiver.WebhookReceiver`, and the dispatcher in this process; it
produces N alerts spread over P patients and reports delivered alerts/s and the
produced-to-received latency percentiles (wall clock, milliseconds).
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
from services.receiver import WebhookReceiver
from services.routing import parse_routing
from services.settings import DispatcherSettings, KafkaSettings, Topics
from streaming.events import AlertEvent
from streaming.metrics import DispatcherMetrics

__all__ = ["bench", "main"]


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


async def bench(bootstrap: str, n_alerts: int, n_patients: int, partitions: int,
                create_topics: Any) -> dict[str, Any]:
    """Run one benchmark against ``bootstrap``; ``create_topics(names, partitions)`` makes topics."""
    from aiokafka import AIOKafkaProducer

    prefix = f"bench.{uuid.uuid4().hex[:8]}"
    d = Topics()
    topics = Topics(alerts=f"{prefix}.{d.alerts}", acks=f"{prefix}.{d.acks}",
                    alerts_deadletter=f"{prefix}.{d.alerts_deadletter}")
    create_topics([topics.alerts, topics.acks, topics.alerts_deadletter], partitions)
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    async with WebhookReceiver(secret) as rec:
        routing = parse_routing({"default_team": "bench", "teams": {"bench": {"routes": {"default": {
            "primary": {"url": rec.url, "secret": secret, "timeout_s": 10}}}}}})
        settings = DispatcherSettings(KafkaSettings(bootstrap=bootstrap, topics=topics),
                                      routing_file=Path("<bench>"), group_id=f"{prefix}.dispatcher")
        stop, ready = asyncio.Event(), asyncio.Event()
        metrics = DispatcherMetrics(CollectorRegistry())
        task = asyncio.create_task(run_dispatcher(
            settings, routing, stop=stop, metrics=metrics,
            options=DispatchOptions(max_in_flight=max(1000, n_alerts)),
            tokens={}, on_ready=lambda _api: ready.set()))
        await asyncio.wait_for(ready.wait(), 120)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        t0 = time.time()
        try:
            futs = []
            for i in range(n_alerts):
                pid = f"bench-{i % n_patients:04d}"
                now_ms = int(time.time() * 1000)
                ev = AlertEvent(alert_id=f"{pid}:vt:{i}", revision=1, action="raised", patient_id=pid,
                                device_id=f"dev-{pid}", condition="ventricular_tachycardia",
                                category="physiological", priority="high", onset_ts_ms=now_ms - 2000,
                                detected_ts_ms=now_ms, rule="bench", score=1.0, threshold=0.5,
                                model_version="bench", signal_quality=1.0, produced_wall_ms=now_ms)
                futs.append(await producer.send(topics.alerts, ev.to_json(), key=pid.encode()))
            await asyncio.gather(*futs)
            produced_s = time.time() - t0
            deadline = time.monotonic() + 120 + n_alerts / 50
            while len(rec.received) < n_alerts and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            await producer.stop()
            stop.set()
            await asyncio.wait_for(task, 60)
        got = rec.received
        lat_ms = [a.received_wall_ms - a.body["produced_wall_ms"] for a in got]
        span_s = (max(a.received_wall_ms for a in got) / 1000 - t0) if got else float("nan")
        return {
            "benchmark": "alerts",
            "alerts": n_alerts, "patients": n_patients, "partitions": partitions,
            "delivered": len(got), "duplicates": len(rec.duplicates),
            "produce_s": round(produced_s, 3),
            "wall_s": round(span_s, 3),
            "alerts_per_s": round(len(got) / span_s, 1) if got else 0.0,
            "latency_ms_p50": _percentile(lat_ms, 50) if got else None,
            "latency_ms_p99": _percentile(lat_ms, 99) if got else None,
            "latency_ms_max": max(lat_ms) if got else None,
            "python": platform.python_version(), "cpus": os.cpu_count(),
        }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cardiowatch bench alerts``."""
    p = argparse.ArgumentParser(prog="cardiowatch bench alerts", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--alerts", type=int, default=2000)
    p.add_argument("--patients", type=int, default=50)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    a = p.parse_args(argv)
    for name in ("alerts", "patients", "partitions"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.bootstrap:
        broker = None
        bootstrap = a.bootstrap
        from services.broker import create_topics as _create

        def create(names: list[str], parts: int) -> None:
            _create(bootstrap, names, parts)
    else:
        broker = LocalBroker(partitions=a.partitions).start()
        bootstrap = broker.bootstrap
        create = broker.create_topics  # type: ignore[assignment]
    try:
        result = asyncio.run(bench(bootstrap, a.alerts, a.patients, a.partitions, create))
    finally:
        if broker is not None:
            broker.stop()
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return 0 if result["delivered"] == a.alerts else 1


if __name__ == "__main__":
    sys.exit(main())
