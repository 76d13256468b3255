"""Faust shell: the app, the ECG and heart-rate agents, the tick timer and ``/metrics``.

Each agent body is a short adapter: take a micro-batch of events, read back from the
log any offsets Faust skipped (:mod:`streaming.continuity`), hand the raw records
to the pure core (:mod:`streaming.pipeline`), send what it returns, then store the new
per-patient state. Ordering inside a batch is what makes restarts safe:

1. scores, alerts and dead letters are sent and their delivery awaited;
2. only then is each patient's state written to its table, and the body waits until
   those changelog records are delivered too (:class:`ConfirmedTable`: Faust's own
   flush before a commit can give up early and commit offsets ahead of the state);
3. only after the batch body returns does Faust ack the offsets for commit.

A worker killed anywhere in between replays from the last committed offset: if the
state had not been written, the replay recomputes the same beats with the same ids
(receivers dedupe by id); if it had, the core recognises the already-applied offsets
and skips them. Nothing is lost either way. Offsets Faust commits without the agent
having applied them, or drops at a restart (it can, see :mod:`streaming.continuity`),
are read back, from the lower of the committed offset and the restored states' position.

Tables use ``use_partitioner=True`` with the patient id (the raw topics' key) as key,
so each state lands in the changelog partition that matches its source partition, even
though a micro-batch mixes partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streaming.continuity import ContinuityGuard
from streaming.kafka_security import KafkaSecurity
from streaming.events import DeviceClockEvent
from streaming.logread import LogReader
from streaming.metrics import WorkerMetrics
from streaming.pipeline import (
    DeadLetter,
    ECGPatientState,
    ECGPipeline,
    HRPatientState,
    HRPipeline,
    InMessage,
)

__all__ = ["AppConfig", "ConfirmedTable", "TABLES", "changelog_topic", "count_clock_events", "create_app",
           "leader_topic", "partition_of", "process_safely"]

log = logging.getLogger(__name__)
S = TypeVar("S")
T = TypeVar("T")

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


class _DecodedCache(Generic[S]):
    """Decoded patient states, valid while the table still holds the very bytes object
    they were decoded from (identity, not equality: any other write, a recovery or a
    rebalance makes a new object and forces a fresh decode). The core never mutates
    the states it is given, so handing the same object to the next batch is safe."""

    def __init__(self, decode: Any) -> None:
        self.decode = decode
        self._entries: dict[str, tuple[bytes, S]] = {}

    def get(self, pid: str, raw: bytes) -> S:
        hit = self._entries.get(pid)
        if hit is not None and hit[0] is raw:
            return hit[1]
        state = self.decode(raw)
        self._entries[pid] = (raw, state)
        return state

    def put(self, pid: str, raw: bytes, state: S) -> None:
        self._entries[pid] = (raw, state)

    def drop(self, pid: str) -> None:
        self._entries.pop(pid, None)


class _LazyStates(Mapping[str, S], Generic[S]):
    """Patient states read from a table on first use, through the decoded cache."""

    def __init__(self, table: Any, cache: _DecodedCache[S]) -> None:
        self._table, self._cache, self._seen = table, cache, {}

    def __getitem__(self, pid: str) -> S:
        if pid not in self._seen:
            raw = self._table.get(pid.encode())
            if raw is None:
                raise KeyError(pid)
            self._seen[pid] = self._cache.get(pid, raw)
        return self._seen[pid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._seen)

    def __len__(self) -> int:
        return len(self._seen)


SEND_ATTEMPTS = 8  # ~1 min of backoff before a worker that cannot deliver stops hard
CHANGELOG_TIMEOUT_S = 60.0


class ConfirmedTable(faust.Table):
    """A Faust table whose changelog writes can be awaited.

    Faust flushes its producer before it commits offsets, but that flush gives up as
    soon as its send buffer makes no progress for 0.1 s
    (``faust.transport.producer.ProducerBuffer.flush_atmost``). On a busy worker it can
    therefore commit a batch's offsets while the batch's state records are still in
    Faust's buffer; killed at that moment, the worker restarts with a state older than
    its committed offsets, sees a sequence gap and loses what spanned it (a pause that
    was in progress, for one). :meth:`confirm` waits until every state record written
    so far is in the broker, so the agent returns (and its offsets become committable)
    only after that.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[asyncio.Future[Any]] = []

    def partition_for_key(self, key: Any) -> int | None:
        """The changelog partition of ``key``: Kafka's default partitioner over the table's
        partitions, as the raw topic's producers place the same key.

        Faust would ask its producer (eager partitioning), which reads its cached cluster
        metadata without fetching what is missing; whenever the changelog is not in that
        cache the lookup fails (``TypeError`` in aiokafka's ``_partition``) and the agent
        crashes half-way through storing a batch. That happens after a broker is lost,
        until new leaders are known (found by ``tests/integration/test_broker_loss.py``),
        and on a first start: the one refresh Faust makes after declaring a changelog can
        be answered before a KRaft broker publishes the new topic, and the next is 5 min
        away (``tests/integration/test_faults.py``). The result is the same whenever the
        metadata is there."""
        if self.use_partitioner and isinstance(key, bytes) and self.partitions:
            return partition_of(key, self.partitions)
        return super().partition_for_key(key)  # type: ignore[no-any-return]

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unconfirmed.append(fut)
        return fut

    async def confirm(self, timeout_s: float = CHANGELOG_TIMEOUT_S) -> int:
        """Wait until the changelog records written so far are delivered; how many.

        Raises what the delivery raised, or :class:`TimeoutError`."""
        futs, self._unconfirmed = self._unconfirmed, []
        if futs:
            await asyncio.wait_for(asyncio.gather(*futs), timeout_s)
        return len(futs)


async def retry_or_stop(step: Callable[[], Awaitable[T]], what: str, why_safe: str,
                        on_failure: Callable[[], Any] | None = None,
                        attempts: int = SEND_ATTEMPTS) -> T:
    """Run ``step`` until it succeeds, backing off 0.5 s, 1 s, 2 s ... 10 s; after
    ``attempts`` failures stop the process hard (exit status 70).

    For the steps an agent cannot skip: its batch's offsets are acked as soon as the
    body returns, even by an exception, so giving up would lose the batch. Stopping
    hard leaves them unacked; ``why_safe`` says what the restart does about it."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return await step()
        except Exception as exc:  # Kafka errors, timeouts: do the whole step again
            if on_failure is not None:
                on_failure()
            log.warning("%s failed (attempt %d/%d): %r", what, attempt, attempts, exc)
            if attempt == attempts:
                log.critical("%s keeps failing; stopping hard so that %s", what, why_safe)
                os._exit(70)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a key (murmur2, as the Java, aiokafka and
    kafka-python producers compute it)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


class _Overlay(Mapping[str, Any]):
    """States from the table, overlaid with those changed earlier in this batch."""

    def __init__(self, base: Any, changed: dict[str, Any]) -> None:
        self._base, self._changed = base, changed

    def __getitem__(self, pid: str) -> Any:
        if pid in self._changed:
            return self._changed[pid]
        value = self._base.get(pid)
        if value is None:
            raise KeyError(pid)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._changed)

    def __len__(self) -> int:
        return len(self._changed)


def _merge_results(results: list[Any]) -> Any:
    """One batch result from the results of processing its messages one by one."""
    first = results[0]
    merged = {}
    for f in first.__dataclass_fields__:
        values = [getattr(r, f) for r in results]
        if f == "states":
            merged[f] = {k: v for r in results for k, v in r.states.items()}
        elif isinstance(values[0], list):
            merged[f] = [x for v in values for x in v]
        elif isinstance(values[0], (int, float)):
            merged[f] = sum(values)
        else:
            merged[f] = values[-1]
    return type(first)(**merged)


def process_safely(core: Any, msgs: list[InMessage], states: Mapping[str, Any],
                   stream: str) -> Any:
    """Run a stream core on a batch; never raises.

    The core dead-letters bad messages itself. Should a batch-level step still fail
    (a bug, a model error), the batch is retried one message at a time so that only the
    culprit is dead-lettered (``processing_error``) and the stream goes on.
    """
    try:
        return core.process(msgs, states)
    except Exception:
        log.exception("batch of %d failed in the %s core; retrying message by message",
                      len(msgs), stream)
    results: list[Any] = []
    changed: dict[str, Any] = {}
    for m in msgs:
        view = _Overlay(states, changed)
        try:
            r = core.process([m], view)
        except Exception as exc:
            r = core.process([], view)
            r.dead.append(DeadLetter.from_error(stream, exc, m))  # type: ignore[arg-type]
        changed.update(r.states)
        results.append(r)
    return _merge_results(results) if results else core.process([], states)


def count_clock_events(metrics: WorkerMetrics, stream: str,
                       events: Iterable[DeviceClockEvent]) -> None:
    """Count and log the device restarts and clock jumps a core reported (a restart
    that also set the clock back counts as both)."""
    for e in events:
        if e.kind == "restart":
            metrics.restarts.labels(stream).inc()
        if e.direction != "none":
            metrics.clock_jumps.labels(stream, e.direction).inc()
        log.warning("device clock (%s stream): %s", stream, e.describe())


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
    # The tick timer and the agents both rewrite a patient's state; one lock keeps a
    # batch's read-modify-write from interleaving with a tick's.
    ecg_lock, hr_lock = asyncio.Lock(), asyncio.Lock()

    ecg_cache: _DecodedCache[ECGPatientState] = _DecodedCache(
        lambda b: ECGPatientState.from_bytes(b, ecg.policy))
    hr_cache: _DecodedCache[HRPatientState] = _DecodedCache(
        lambda b: HRPatientState.from_bytes(b, hr.policy))

    def resume_point(table: ConfirmedTable, cache: _DecodedCache[Any], partition: int) -> int | None:
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

    ecg_guard = ContinuityGuard(cfg.topic_ecg, reader, lambda p: resume_point(ecg_table, ecg_cache, p),
                                generation, group=app.conf.id)
    hr_guard = ContinuityGuard(cfg.topic_hr, reader, lambda p: resume_point(hr_table, hr_cache, p),
                               generation, group=app.conf.id)

    async def contiguous(guard: ContinuityGuard, msgs: list[InMessage], stream: str) -> list[InMessage]:
        """``msgs`` with any offsets the consumer skipped read back in front (see
        :mod:`streaming.continuity`). A hole that cannot be read stops the worker hard:
        going on would lose what is in it, a restart reads it again."""
        async def read() -> list[InMessage]:
            out = await guard.fill(msgs)
            metrics.read_back.labels(stream).inc(len(out) - len(msgs))
            return out

        return await retry_or_stop(read, f"reading skipped offsets of the {stream} stream back",
                                   "a restart reads them again")

    def applied(guard: ContinuityGuard, msgs: list[InMessage]) -> None:
        """Mark a stored batch applied; records read back are acked in Faust's consumer
        like the ones it handed out (its commit stops at any offset never acked)."""
        for p, o in guard.applied(msgs):
            app.consumer.ack(faust.types.Message(guard.topic, p, o, 0.0, 0, None, None, None, None))

    def store(table: Any, cache: _DecodedCache[Any], pid: str, st: Any, policy: Any) -> None:
        raw = st.to_bytes(policy)
        table[pid.encode()] = raw
        cache.put(pid, raw, st)

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

        Never raises: the batch's offsets are acked as soon as the agent body ends, even
        by an exception, so giving up here would lose the batch. Failed sends are
        retried (the same records again: consumers dedupe by id); if the broker stays
        unreachable the worker stops hard, leaving the offsets uncommitted so a restart
        replays the batch.
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

    @app.agent(ecg_topic)
    async def ecg_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(cfg.batch_max, within=cfg.batch_within_s):
            msgs = [InMessage(e.message.key, e.message.value, e.message.partition,
                              e.message.offset) for e in events]
            metrics.messages_in.labels("ecg").inc(len(msgs))
            async with ecg_lock:
                msgs = await contiguous(ecg_guard, msgs, "ecg")
                t = time.perf_counter()
                res = process_safely(ecg, msgs, _LazyStates(ecg_table, ecg_cache), "ecg")
                metrics.stage_latency.labels("ecg_core").observe(time.perf_counter() - t)
                for n in res.model_batch_sizes:
                    metrics.batch_size.observe(n)
                if res.model_calls:
                    metrics.inference_latency.observe(res.model_seconds)
                t = time.perf_counter()
                await send_all(res.dead, res.alerts, res.scored)
                metrics.stage_latency.labels("send").observe(time.perf_counter() - t)
                now = time.time()
                for s in res.scored:
                    metrics.event_to_score.observe(max(0.0, now - s.r_ts_ms / 1000.0))
                for q in res.quality:
                    metrics.chunk_to_output.observe(max(0.0, now - (q.ts_ms + q.duration_ms) / 1000.0))
                metrics.beats_scored.inc(len(res.scored))
                metrics.gaps.labels("ecg").inc(res.gaps)
                for g in res.gap_notes:
                    log.info("gap: %s", g.describe())
                count_clock_events(metrics, "ecg", res.clock_events)
                metrics.redelivered.labels("ecg").inc(res.redelivered)
                t = time.perf_counter()
                for pid, st in res.states.items():
                    store(ecg_table, ecg_cache, pid, st, ecg.policy)
                await confirm_stored(ecg_table)
                applied(ecg_guard, msgs)
                metrics.stage_latency.labels("store_state").observe(time.perf_counter() - t)

    @app.agent(hr_topic)
    async def hr_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(cfg.batch_max, within=cfg.batch_within_s):
            msgs = [InMessage(e.message.key, e.message.value, e.message.partition,
                              e.message.offset) for e in events]
            metrics.messages_in.labels("hr").inc(len(msgs))
            async with hr_lock:
                msgs = await contiguous(hr_guard, msgs, "hr")
                t = time.perf_counter()
                res = process_safely(hr, msgs, _LazyStates(hr_table, hr_cache), "hr")
                metrics.stage_latency.labels("hr_core").observe(time.perf_counter() - t)
                await send_all(res.dead, res.alerts, [])
                metrics.hr_scored.inc(res.windows_scored)
                metrics.gaps.labels("hr").inc(res.gaps)
                for g in res.gap_notes:
                    log.info("gap: %s", g.describe())
                count_clock_events(metrics, "hr", res.clock_events)
                metrics.redelivered.labels("hr").inc(res.redelivered)
                for pid, st in res.states.items():
                    store(hr_table, hr_cache, pid, st, hr.policy)
                await confirm_stored(hr_table)
                applied(hr_guard, msgs)

    async def tick_table(table: ConfirmedTable, cache: _DecodedCache[Any], core: Any, policy: Any,
                         topic: str, now_ms: int, skip: Any = None) -> None:
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
        for key, raw_state in list(table.items()):
            if raw_state is None or (skip is not None and skip(key)):
                continue
            pid = key.decode(errors="replace")
            if partition_of(key, cfg.partitions) not in owned:
                cache.drop(pid)
                continue
            try:
                ev, st = core.tick(cache.get(pid, raw_state), now_ms)
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
            store(table, cache, pid, st, policy)
        await confirm_stored(table)

    @app.on_before_shutdown.connect
    async def _close_reader(sender: Any, **kwargs: Any) -> None:
        await reader.stop()

    @app.timer(interval=cfg.tick_interval_s)
    async def tick() -> None:
        now_ms = int(time.time() * 1000)
        async with ecg_lock:
            await tick_table(ecg_table, ecg_cache, ecg, ecg.policy, cfg.topic_ecg, now_ms)
        # Patients seen only on the heart-rate stream (no ECG device) still need the
        # no-data check; patients with ECG get it once, from the ECG state above.
        async with hr_lock:
            await tick_table(hr_table, hr_cache, hr, hr.policy, cfg.topic_hr, now_ms,
                             skip=lambda key: ecg_table.get(key) is not None)
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
