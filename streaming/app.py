"""Faust shell: the app, the ECG and heart-rate agents, the tick timer and ``/metrics``.

Each agent body hands its micro-batch of events to the stream's
:class:`~streaming.batch.BatchCycle`: read back any offsets Faust skipped
(:mod:`streaming.continuity`), run the pure core (:mod:`streaming.pipeline`), send what it
returns, store the new per-patient states (:class:`~streaming.tables.ConfirmedTable`),
and only then ack the offsets for commit; the core of the next batch runs while one
batch's records are being delivered (the guarantees and why they hold are in
:mod:`streaming.batch`). States are read through a decoded cache
(:mod:`streaming.statecache`); the steps that cannot be skipped retry or stop the worker
hard (:mod:`streaming.retry`).

Offsets Faust commits without the agent having applied them, or drops at a restart
(it can, see :mod:`streaming.continuity`), are read back, from the lower of the
committed offset and the restored states' position.

Tables use ``use_partitioner=True`` with the patient id (the raw topics' key) as key,
so each state lands in the changelog partition that matches its source partition, even
though a micro-batch mixes partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streaming.batch import BatchCycle, count_clock_events, process_safely
from streaming.continuity import ContinuityGuard
from streaming.kafka_security import KafkaSecurity
from streaming.logread import LogReader
from streaming.metrics import WorkerMetrics
from streaming.pipeline import DeadLetter, ECGPatientState, ECGPipeline, HRPatientState, HRPipeline
from streaming.retry import retry_or_stop
from streaming.statecache import DecodedCache
from streaming.tables import ConfirmedTable, partition_of

__all__ = ["AppConfig", "ConfirmedTable", "TABLES", "changelog_topic", "count_clock_events", "create_app",
           "leader_topic", "partition_of", "process_safely"]

log = logging.getLogger(__name__)

#: The app's tables, as (name, raw stream it keeps state for). ``services.topics`` plans
#: their changelog topics from these names, so the two never disagree.
ECG_TABLE, HR_TABLE = "ecg-state", "hr-state"
TABLES: tuple[tuple[str, Literal["ecg", "hr"]], ...] = ((ECG_TABLE, "ecg"), (HR_TABLE, "hr"))


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic Faust uses for ``table`` of app ``app_id``."""
    return f"{app_id}-{table}-changelog"


def leader_topic(app_id: str) -> str:
    """Faust's one-partition leader-election topic of app ``app_id``."""
    return f"{app_id}-__assignor-__leader"


@dataclass(frozen=True, slots=True)
class AppConfig:
    """What the Faust shell needs; built by ``services.worker`` from its settings."""

    app_id: str
    bootstrap: str
    partitions: int
    topic_ecg: str
    topic_hr: str
    topic_scores: str
    topic_alerts: str
    topic_deadletter: str
    data_dir: Path
    web_port: int
    web_bind: str = "127.0.0.1"
    batch_max: int = 512
    batch_within_s: float = 0.2
    tick_interval_s: float = 5.0
    security: KafkaSecurity = KafkaSecurity()
    # Of the topics Faust declares itself (changelogs, leader topic). A production
    # cluster plans its topics (``cardiowatch topics apply``) and sets allow_declare off.
    replication_factor: int = 1
    allow_declare: bool = True


def create_app(cfg: AppConfig, ecg: ECGPipeline, hr: HRPipeline, metrics: WorkerMetrics) -> faust.App:
    """Build the Faust app with its agents, tables, timer and ``/metrics`` page."""
    app = faust.App(
        cfg.app_id,
        broker=[f"kafka://{hp}" for hp in cfg.bootstrap.split(",")],
        broker_credentials=cfg.security.faust_credentials(),
        store="memory://",
        datadir=str(cfg.data_dir),
        topic_partitions=cfg.partitions,
        topic_replication_factor=cfg.replication_factor,
        topic_allow_declare=cfg.allow_declare,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_port=cfg.web_port,
        web_bind=cfg.web_bind,
        web_host=cfg.web_bind,
        table_standby_replicas=0,
        stream_recovery_delay=0.0,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    ecg_topic = app.topic(cfg.topic_ecg, partitions=cfg.partitions, **raw)
    hr_topic = app.topic(cfg.topic_hr, partitions=cfg.partitions, **raw)
    # bytes key and value types make Faust use the "raw" codec for the changelog.
    def table(name: str) -> ConfirmedTable:
        t = ConfirmedTable(app, name=name, default=None, partitions=cfg.partitions,
                           use_partitioner=True, key_type=bytes, value_type=bytes,
                           beacon=app.tables.beacon)
        return app.tables.add(t)  # type: ignore[no-any-return]

    ecg_table, hr_table = table(ECG_TABLE), table(HR_TABLE)
    reader = LogReader(cfg.bootstrap, security=cfg.security)
    ecg_cache: DecodedCache[ECGPatientState] = DecodedCache(lambda b: ECGPatientState.from_bytes(b, ecg.policy))
    hr_cache: DecodedCache[HRPatientState] = DecodedCache(lambda b: HRPatientState.from_bytes(b, hr.policy))

    def resume_point(table: ConfirmedTable, cache: DecodedCache[Any], partition: int) -> int | None:
        """The next offset of ``partition`` to apply, from the patient states held for it.
        A state that cannot be decoded is left out (that can only lower the result, which
        reads more back; the core then dead-letters that patient's records as before)."""
        last = -1
        for key, raw_state in list(table.items()):
            if raw_state is None or partition_of(key, cfg.partitions) != partition:
                continue
            try:
                pos = cache.get(key.decode(errors="replace"), raw_state).pos
            except Exception:
                log.exception("state of %r cannot be decoded; left out of the resume point", key)
                continue
            if pos.last_partition == partition:
                last = max(last, pos.last_offset)
        return last + 1 if last >= 0 else None

    def generation() -> int:
        return int(app.consumer_generation_id or 0)

    async def confirm_stored(table: ConfirmedTable) -> None:
        """Return only once the states just stored are in the changelog topic.

        If they cannot be delivered the worker stops hard: the batch's outputs are
        already out, its offsets are not yet acked, so a restart replays the batch
        against the previous state and recomputes the same records."""
        try:
            await table.confirm()
        except Exception as exc:
            metrics.send_failures.inc()
            log.critical("state of table %s not delivered to its changelog (%r); stopping hard "
                         "so the batch's offsets stay uncommitted", table.name, exc)
            os._exit(70)

    async def send_all(dead: list[DeadLetter], alerts: list[Any], scores: list[Any]) -> None:
        """Send a batch's outputs and wait until the broker has them all.

        Never raises: giving up here would lose the batch. Failed sends are retried (the
        same records again: consumers dedupe by id); if the broker stays unreachable the
        worker stops hard, leaving the offsets uncommitted so a restart replays the batch.
        """
        records = [(cfg.topic_deadletter, d.key, d.to_json()) for d in dead]
        records += [(cfg.topic_scores, s.patient_id.encode(), s.to_json()) for s in scores]
        records += [(cfg.topic_alerts, a.patient_id.encode(), a.to_json()) for a in alerts]

        async def send() -> None:
            # Straight to the producer (already-serialised bytes): Faust's topic.send
            # costs ~1 ms per record, and a batch carries one record per beat.
            futs = [await app.producer.send(t, k, v, None, None, None) for t, k, v in records]
            await asyncio.gather(*futs)  # delivered, not just enqueued

        await retry_or_stop(send, f"sending {len(records)} records",
                            "its offsets stay uncommitted and a restart replays the batch",
                            on_failure=metrics.send_failures.inc)
        for d in dead:
            metrics.invalid.labels(d.stream, d.reason).inc()
        now = time.time()
        for a in alerts:
            metrics.alerts.labels(a.priority, a.action).inc()
            if a.action == "raised":
                metrics.event_to_alert.observe(max(0.0, now - a.onset_ts_ms / 1000.0))

    def ack_message(message: Any) -> None:
        message.ack(app.consumer)

    def ack_offset(topic: str, partition: int, offset: int) -> None:
        # a record read back: the consumer never handed it out, so it would not mark it
        # done by itself, and its commits would stop at it
        app.consumer.ack(faust.types.Message(topic, partition, offset, 0.0, 0, None, None, None, None))

    def ecg_after_core(res: Any) -> None:
        for n in res.model_batch_sizes:
            metrics.batch_size.observe(n)
        if res.model_calls:
            metrics.inference_latency.observe(res.model_seconds)

    def ecg_after_send(res: Any, now: float) -> None:
        for s in res.scored:
            metrics.event_to_score.observe(max(0.0, now - s.r_ts_ms / 1000.0))
        for q in res.quality:
            metrics.chunk_to_output.observe(max(0.0, now - (q.ts_ms + q.duration_ms) / 1000.0))
        metrics.beats_scored.inc(len(res.scored))

    def cycle(stream: str, core: Any, table: ConfirmedTable, cache: DecodedCache[Any], topic: str,
              **hooks: Any) -> BatchCycle:
        guard = ContinuityGuard(topic, reader, lambda p: resume_point(table, cache, p), generation,
                                group=app.conf.id)
        return BatchCycle(stream, core, table, cache, guard, metrics, send_all, confirm_stored,
                          ack_message, ack_offset, **hooks)

    # The tick timer and the agents both rewrite a patient's state: a cycle's lock keeps a
    # batch's read-modify-write from interleaving with a tick's.
    ecg_cycle = cycle("ecg", ecg, ecg_table, ecg_cache, cfg.topic_ecg,
                      after_core=ecg_after_core, after_send=ecg_after_send)
    hr_cycle = cycle("hr", hr, hr_table, hr_cache, cfg.topic_hr,
                     after_send=lambda res, now: metrics.hr_scored.inc(res.windows_scored))

    async def run_agent(c: BatchCycle, stream: faust.StreamT) -> None:
        try:
            async for events in stream.take_events(cfg.batch_max, within=cfg.batch_within_s):
                await c.run(events)
        finally:  # stopping: let the batch in flight reach the broker (or stop hard trying)
            async with c.lock:
                await c.drain()

    @app.agent(ecg_topic)
    async def ecg_agent(stream: faust.StreamT) -> None:
        await run_agent(ecg_cycle, stream)

    @app.agent(hr_topic)
    async def hr_agent(stream: faust.StreamT) -> None:
        await run_agent(hr_cycle, stream)

    async def tick_table(c: BatchCycle, topic: str, now_ms: int, skip: Any = None) -> None:
        """Run ``core.tick`` over the table's patients in partitions of ``topic`` this
        worker owns now (after a rebalance the memory table still holds keys it wrote for
        partitions another worker took), send the alerts, then store every state (the
        no-data clock lives in it) and wait for the changelog.

        Never while a rebalance or a recovery is under way: Faust runs timers then too,
        and a state read from a half-restored table and written back would overwrite the
        restored one."""
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        gen = generation()
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}
        alerts, changed = [], {}
        for key, raw_state in list(c.table.items()):
            if raw_state is None or (skip is not None and skip(key)):
                continue
            pid = key.decode(errors="replace")
            if partition_of(key, cfg.partitions) not in owned:
                c.cache.drop(pid)
                continue
            try:
                ev, st = c.core.tick(c.cache.get(pid, raw_state), now_ms)
            except Exception:  # one bad state must not stop the others, or the app
                metrics.tick_errors.inc()
                log.exception("tick failed for patient %s (%s)", pid, topic)
                continue
            alerts.extend(ev)
            changed[pid] = st
        await send_all([], alerts, [])
        if app.rebalancing or generation() != gen:
            log.info("a rebalance began during the tick; its states are not stored")
            return
        for pid, st in changed.items():
            c.store(pid, st)
        await confirm_stored(c.table)

    @app.on_before_shutdown.connect
    async def _close_reader(sender: Any, **kwargs: Any) -> None:
        await reader.stop()

    @app.timer(interval=cfg.tick_interval_s)
    async def tick() -> None:
        now_ms = int(time.time() * 1000)
        async with ecg_cycle.lock:
            await ecg_cycle.drain()
            await tick_table(ecg_cycle, cfg.topic_ecg, now_ms)
        # Patients seen only on the heart-rate stream (no ECG device) still need the
        # no-data check; patients with ECG get it once, from the ECG state above.
        async with hr_cycle.lock:
            await hr_cycle.drain()
            await tick_table(hr_cycle, cfg.topic_hr, now_ms, skip=lambda key: ecg_table.get(key) is not None)
        try:
            await _update_lag()
        except Exception:
            log.exception("consumer lag update failed")

    async def _update_lag() -> None:
        consumer = app.consumer
        for topic in (cfg.topic_ecg, cfg.topic_hr):
            metrics.assigned_partitions.labels(topic).set(
                sum(1 for tp in consumer.assignment() if tp.topic == topic))
            lag = 0
            for tp in consumer.assignment():
                if tp.topic != topic:
                    continue
                try:
                    hw = consumer.highwater(tp)
                except Exception:  # partition not fetched yet
                    continue
                read = consumer._read_offset.get(tp)  # faust keeps the last offset read
                if hw is not None:
                    lag += max(0, hw - (read + 1 if read is not None else 0))
            metrics.consumer_lag.labels(topic).set(lag)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8.
        ctype = ";".join(p for p in CONTENT_TYPE_LATEST.split(";") if "charset" not in p)
        return web.bytes(generate_latest(metrics.registry), content_type=ctype.strip())

    return app
