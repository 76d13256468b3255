"""A broker lost mid-stream on a real three-node cluster, with nothing lost.

Replication 3, ``min.insync.replicas`` 2, topics applied from the plan, workers not
allowed to declare any. Two workers and the dispatcher run while patients stream; one
broker (the leader of the most raw-topic partitions) is killed with SIGKILL; every beat
must be scored (ids equal to a reference run of the same core), every alert delivered,
no sequence gap seen, both workers still running; then the broker is started again and
must rejoin every partition's ISR. The figures are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient

from models.synthetic import Event
from services.cluster import LocalCluster
from services.dispatcher import DispatchOptions, run_dispatcher
from services.receiver import WebhookReceiver
from services.routing import parse_routing
from services.settings import DispatcherSettings, KafkaSettings, Topics, TopicSettings
from services.topics import apply, plan
from test_worker import _metric_value, reference, stream_for
from worker_harness import WorkerProcess, produce, read_all, read_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "whsec_" + base64.b64encode(b"broker-loss-secret-0123456789").decode()
PARTITIONS = 4


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(nodes=3).start()
    try:
        yield c
    finally:
        c.stop()


class DispatcherThread:
    """The dispatcher and a signed-webhook receiver on their own event loop."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.receiver: WebhookReceiver | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)

    def start(self) -> DispatcherThread:
        self._thread.start()
        if not self.ready.wait(120):
            raise RuntimeError(f"dispatcher not ready in 120 s: {self.error!r}")
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with WebhookReceiver(SECRET) as rec:
            self.receiver = rec
            routing = parse_routing({
                "default_team": "t", "escalation": {"escalate_after_s": {"high": 3600, "medium": 3600}},
                "teams": {"t": {"retry": {"max_attempts": 20, "base_backoff_s": 0.1, "max_backoff_s": 1.0,
                                          "total_budget_s": 60},
                                "routes": {"default": {"primary": {"url": rec.url, "secret": SECRET}}}}}})
            await run_dispatcher(self.settings, routing, stop=self._stop,
                                 options=DispatchOptions(serve_ack_api=False),
                                 on_ready=lambda api: self.ready.set())

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


def _isr_sizes(bootstrap: str, names: list[str]) -> dict[tuple[str, int], int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {(t["name"], p["partition_index"]): len(p["isr_nodes"])
                for t in admin.describe_topics(names) for p in t["partitions"]}
    finally:
        admin.close()


def _leaders(bootstrap: str, names: list[str]) -> Counter:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return Counter(p["leader_id"] for t in admin.describe_topics(names) for p in t["partitions"])
    finally:
        admin.close()


def test_losing_a_broker_mid_stream_loses_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    prefix = f"test.broker-loss.{uuid.uuid4().hex[:8]}"
    d = Topics()
    topics = Topics(**{f: f"{prefix}.{getattr(d, f)}" for f in d.__dataclass_fields__})
    app_id = f"test-broker-loss-{uuid.uuid4().hex[:8]}"
    k = KafkaSettings(bootstrap=cluster.bootstrap, partitions=PARTITIONS, topics=topics,
                      topic_settings=TopicSettings(replication_factor=3, min_insync_replicas=2,
                                                   retention_hours=24, allow_declare=False))
    specs = plan(k, app_id)
    report = apply(k, specs)
    assert len(report.created) == len(specs), report

    env = {"CARDIOWATCH_REPLICATION_FACTOR": "3", "CARDIOWATCH_MIN_INSYNC_REPLICAS": "2",
           "CARDIOWATCH_TOPIC_ALLOW_DECLARE": "0", "CARDIOWATCH_RETENTION_HOURS": "24",
           # small batches: the stream is still being worked through when the broker dies
           "CARDIOWATCH_BATCH_MAX": "16"}
    workers = [WorkerProcess(cluster.bootstrap, topics, tmp_path / f"w{i}", app_id, partitions=PARTITIONS,
                             extra_env=env) for i in (1, 2)]
    dispatcher = DispatcherThread(DispatcherSettings(kafka=k, routing_file=tmp_path / "unused.yaml",
                                                     group_id=f"{app_id}-dispatcher"))
    patients = {"p-0001": [Event("vrun", 30, 5)], "p-0002": [Event("pause", 40, 5)], "p-0003": [],
                "p-0004": [Event("vrun", 50, 4)]}
    msgs = stream_for(patients, 90)
    valid = [(pid, e) for pid, e, _ in msgs]
    records = [(topics.ecg, pid.encode(), e) for pid, e in valid]
    hr_records = [(topics.hr, pid.encode(), h) for pid, _, h in msgs if h is not None]
    try:
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(w.start, 240) for w in workers]
            expected_ids, expected_alerts, _ = reference(valid)  # meanwhile, in this process
            for f in started:
                f.result()
        dispatcher.start()
        assert {a.patient_id for a in expected_alerts if a.category == "physiological"} >= \
            {"p-0001", "p-0002", "p-0004"}

        # First 40 % of the stream, then the broker dies while the workers work through it.
        half = len(records) * 2 // 5
        produce(cluster.bootstrap, records[:half] + hr_records[:len(hr_records) * 2 // 5])
        read_until(cluster.bootstrap, topics.scores, lambda r: len(r) >= len(expected_ids) // 8, 120)
        victim = _leaders(cluster.bootstrap, [topics.ecg, topics.hr]).most_common(1)[0][0]
        t_kill = time.monotonic()
        cluster.kill(victim)
        # The rest of the stream goes to the two brokers left.
        produce(cluster.bootstrap, records[half:] + hr_records[len(hr_records) * 2 // 5:])

        scores = read_until(cluster.bootstrap, topics.scores,
                            lambda r: {x["beat_id"] for _, x in r} >= expected_ids, 180)
        got_ids = Counter(x["beat_id"] for _, x in scores)
        assert set(got_ids) == expected_ids, (f"missing {sorted(expected_ids - set(got_ids))[:5]}, "
                                              f"extra {sorted(set(got_ids) - expected_ids)[:5]}\n"
                                              + "\n".join(w.log_tail(3000) for w in workers))
        t_all_scored = time.monotonic()
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, f"a worker died:\n{w.log_tail()}"
        gaps = sum(_metric_value(w, "cardiowatch_sequence_gaps_total", {"stream": s})
                   for w in workers for s in ("ecg", "hr"))
        assert gaps == 0, "\n".join(w.log_tail() for w in workers)

        # Every alert in the audit log is delivered, and the reference's alerts are among them.
        alerts = read_all(cluster.bootstrap, topics.alerts)
        raised = [x for _, x in alerts if x["action"] == "raised"]
        for a in expected_alerts:
            if a.category == "physiological":
                assert any(r["patient_id"] == a.patient_id and r["condition"] == a.condition
                           and abs(r["onset_ts_ms"] - a.onset_ts_ms) <= 3000 for r in raised), a.alert_id
        want_events = {x["event_id"] for _, x in alerts}
        rec = dispatcher.receiver
        assert rec is not None
        deadline = time.monotonic() + 90
        while {a.webhook_id for a in rec.received} < want_events and time.monotonic() < deadline:
            time.sleep(0.5)
        delivered = {a.webhook_id for a in rec.received}
        assert delivered >= want_events, f"undelivered: {sorted(want_events - delivered)[:5]}"
        assert dispatcher.error is None, dispatcher.error

        # The broker comes back and rejoins every partition's ISR.
        t_restart = time.monotonic()
        cluster.restart(victim)
        names = [s.name for s in specs]
        deadline = time.monotonic() + 90
        sizes = _isr_sizes(cluster.bootstrap, names)
        while min(sizes.values()) < 3 and time.monotonic() < deadline:
            time.sleep(1)
            sizes = _isr_sizes(cluster.bootstrap, names)
        assert min(sizes.values()) == 3, {tp: n for tp, n in sizes.items() if n < 3}
        t_rejoined = time.monotonic()

        dup_beats = sum(n - 1 for n in got_ids.values())
        dup_alert_records = len(alerts) - len({x["event_id"] for _, x in alerts})
        print(f"\nBROKER-LOSS FIGURES: killed node {victim} (of 3) mid-stream; "
              f"beats expected {len(expected_ids)}, received {len(got_ids)} unique, "
              f"{dup_beats} duplicate records; alerts expected (reference, physiological) "
              f"{sum(a.category == 'physiological' for a in expected_alerts)}, raised on the topic "
              f"{len(raised)}; alert events on the topic {len(alerts)} ({dup_alert_records} duplicate records), "
              f"delivered {len(delivered)} unique, {len(rec.duplicates)} duplicate deliveries; "
              f"sequence gaps {gaps:.0f}; kill to all scored {t_all_scored - t_kill:.1f} s; "
              f"restart to all ISRs full {t_rejoined - t_restart:.1f} s; test {time.monotonic() - t0:.0f} s")
    finally:
        dispatcher.close()
        for w in workers:
            w.stop()
