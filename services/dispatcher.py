"""Delivery stage: the alert dispatcher: ``alerts`` topic to care-team webhooks.

This module is the consume loop and its wiring: per-patient queues, parking, offsets
and commits, the ack API, start and stop. The jobs it wires live beside it:

* :mod:`services.webhook`: the HTTP transport (:class:`WebhookPoster`) and request signing;
* :mod:`services.delivery`: one alert along its route: retries, failover, circuit breaker;
* :mod:`services.alert_log`: the start-up rebuild from ``alerts`` and ``acks``, the acks
  tail and the escalation loop;
* :mod:`streaming.deadletter`: the dead-letter record (the worker's schema).

Guarantees
----------
* At-least-once: offsets are committed per partition only up to the lowest offset not
  yet delivered or dead-lettered, so a killed dispatcher resumes without loss. A
  redelivery carries the same ``webhook-id`` (``AlertEvent.event_id``).
* Order per patient: one sequential queue per Kafka key (patient id); a failing
  endpoint holds back only its own patients.
* Memory stays bounded without a failing endpoint holding back healthy ones: records
  waiting behind their patient's earlier alerts keep their bytes in memory only up to
  ``max_held_bytes`` in all; past that they are *parked* (only topic, partition and
  offset kept; uncommitted) and read back from the log when their turn comes. Fetching
  pauses only when ``max_in_flight`` records (a few hundred bytes each once parked)
  are unfinished.
* Retries with full-jitter exponential backoff, per-endpoint timeouts, then the failover
  endpoint; a per-endpoint circuit breaker (:class:`CircuitBreaker`) sends alerts
  straight to the failover while their primary keeps failing, instead of each alert
  paying the primary's retries again. When every route fails the event goes to
  ``alerts_deadletter`` and a technical ``delivery_failure`` alert is produced to
  ``alerts``, routed to the ops team. A failed ``delivery_failure`` alert is only
  dead-lettered (no loop).
* Dead letters (``alerts_deadletter``) are ``cardiowatch.deadletter/1`` records, the
  worker's schema, with ``stream`` ``alerts``: the record's key and value byte for byte
  (base64) and a reason: ``undecodable_alert``, ``all_routes_failed`` (with every
  attempt's ``reasons``, ``event_id`` and ``alert_id``) or ``dispatch_error``.
* Escalation: every alert is fed to an ``EscalationTracker``; due escalations are
  produced to ``alerts`` (the audit log) and delivered from there to the route's
  escalation contact for their level. Acks (``acks`` topic or the ack API) stop them.
* Bounded state: the alert book and the tracker forget a finished alert (resolved, or
  acknowledged with its condition over) ``CARDIOWATCH_ALERT_RETENTION_HOURS`` after it
  finished; open and unacknowledged ones never. Each alert's latest state is written
  (about every ``state_flush_s``) to the compacted ``alert_state`` topic, a tombstone
  once forgotten, with per-partition checkpoints; on start the book and tracker are
  rebuilt from it and the ``alerts``/``acks`` records after its checkpoints (from the
  whole logs, once, where it has none yet). A rebuild that cannot read to the end of a
  topic in ``CARDIOWATCH_DISPATCH_REBUILD_TIMEOUT_S`` fails start-up
  (:class:`RebuildIncompleteError`, exit status 75) instead of going on with partial
  state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CollectorRegistry, start_http_server

from services.access import AccessConfigError, TokenBook
from services.ack_api import AckApi, AckRecord, AlertBook
from services.alert_log import (
    EscalationTrackerLike,
    RebuildIncompleteError,
    apply_tailed_ack as _apply_tailed_ack,
    default_tracker,
    escalate,
    log_behind,
    open_log_reader,
    rebuild,
    tail_acks,
)
from services.alert_state import Checkpoint, StateEntry, alert_record, checkpoint_key, checkpoint_record
from services.delivery import (
    DELIVERY_FAILURE,
    CircuitBreaker,
    DeliveryResult,
    _Abandon,
    alert_team,
    deliver,
    delivery_failure_alert,
    is_delivery_failure,
)
from services.routing import RoutingConfig, load_routing
from services.settings import DispatcherSettings
from services.topics import TopicLayoutError, check_topics
from services.webhook import (
    AiohttpPoster,
    DeliveryTimeout,
    DeliveryTransportError,
    HttpxPoster,
    WebhookPoster,
    as_poster,
    scrub,
)
from streaming.deadletter import DeadLetter
from streaming.events import AlertEvent
from streaming.kafka_security import check_connection
from streaming.logread import LogReader
from streaming.metrics import DispatcherMetrics
from models.cli_help import HelpFormatter

# The transport, the delivery policy and the log-backed state live in their own modules;
# their public names stay importable from here, where callers have always found them.
__all__ = [
    "DELIVERY_FAILURE",
    "CircuitBreaker",
    "DispatchOptions",
    "DeliveryResult",
    "DeliveryTimeout",
    "DeliveryTransportError",
    "WebhookPoster",
    "HttpxPoster",
    "AiohttpPoster",
    "EXIT_REBUILD_INCOMPLETE",
    "OffsetBook",
    "EscalationTrackerLike",
    "RebuildIncompleteError",
    "deliver",
    "delivery_failure_alert",
    "is_delivery_failure",
    "alert_team",
    "scrub",
    "run_dispatcher",
    "open_log_reader",
    "log_behind",
    "main",
]

log = logging.getLogger("cardiowatch.dispatcher")

# EX_TEMPFAIL: the start-up rebuild could not read its topics to the end in time; a
# restart may succeed once the broker answers (or with a longer deadline)
EXIT_REBUILD_INCOMPLETE = 75


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    """Knobs of one dispatcher run (tests shrink them)."""

    max_in_flight: int = 200_000
    max_held_bytes: int = 64 * 1024 * 1024
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    commit_interval_s: float = 0.5
    rebuild_timeout_s: float = 30.0
    # the raw replay (a cluster without alert state yet) refuses to hold more records than this
    rebuild_max_records: int = 1_000_000
    # how often changed alert state and checkpoints are written to the alert-state topic
    state_flush_s: float = 1.0
    stop_grace_s: float = 10.0
    serve_ack_api: bool = True


class OffsetBook:
    """Per-partition completion tracking: commit only below the lowest unfinished offset."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}  # one past the highest offset seen
        self._committed: dict[TopicPartition, int] = {}

    @property
    def in_flight(self) -> int:
        return sum(len(s) for s in self._pending.values())

    def add(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        pending = self._pending.get(tp)
        if pending is not None:
            pending.discard(offset)

    def drop(self, tp: TopicPartition) -> None:
        """Forget a revoked partition; completions arriving later are ignored."""
        self._pending.pop(tp, None)
        self._next.pop(tp, None)
        self._committed.pop(tp, None)

    def commit_points(self) -> dict[TopicPartition, int]:
        """Offsets to commit (next record to read) that moved since the last commit."""
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            pending = self._pending.get(tp)
            point = min(pending) if pending else nxt
            if point > self._committed.get(tp, -1):
                out[tp] = point
        return out

    def point(self, tp: TopicPartition) -> int | None:
        """Where ``tp`` is complete up to (every offset below is finished), or ``None``
        before its first record."""
        if tp not in self._next:
            return None
        pending = self._pending.get(tp)
        return min(pending) if pending else self._next[tp]

    def mark_committed(self, points: dict[TopicPartition, int]) -> None:
        for tp, off in points.items():
            if tp in self._next:
                self._committed[tp] = off


@dataclass
class _Item:
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    ts_ms: int  # record timestamp: when the alert was appended to the log
    parked: bool = False  # value dropped to save memory; read back from the log


@dataclass
class _State:
    settings: DispatcherSettings
    routing: RoutingConfig
    client: WebhookPoster
    producer: AIOKafkaProducer
    tracker: EscalationTrackerLike
    book: AlertBook
    metrics: DispatcherMetrics
    stopping: asyncio.Event
    offsets: OffsetBook = field(default_factory=OffsetBook)
    queues: dict[bytes, asyncio.Queue[_Item]] = field(default_factory=dict)
    workers: dict[bytes, asyncio.Task[None]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    patient_span_ms: dict[str, tuple[int, int]] = field(default_factory=dict)
    raised: int = 0
    max_held_bytes: int = 64 * 1024 * 1024  # DispatchOptions.max_held_bytes
    held_bytes: int = 0
    parked: dict[tuple[TopicPartition, int], _Item] = field(default_factory=dict)
    fetcher: LogReader | None = None
    breaker: CircuitBreaker | None = None
    # ack records this process's ack API is publishing: the acks tail skips them, so the
    # publisher alone applies each one and logs its "acknowledged" event (see _KafkaAckSink)
    own_acks: set[bytes] = field(default_factory=set)
    # the alert-state topic: each alert's alerts partition, the alerts changed since the last
    # write, and the next acks offset applied per acks partition (see services.alert_state)
    alert_partition: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    acks_pos: dict[int, int] = field(default_factory=dict)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)  # the last written, per partition

    @property
    def topics(self) -> Any:
        return self.settings.kafka.topics

    def observe(self, ev: AlertEvent, now_ms: int, partition: int | None = None) -> None:
        self.book.observe(ev, now_ms)
        if not is_delivery_failure(ev):
            self.tracker.observe(ev, now_ms)
        if partition is not None:
            self.alert_partition.setdefault(ev.alert_id, partition)
        self.dirty.add(ev.alert_id)
        if ev.category == "physiological":
            lo, hi = self.patient_span_ms.get(ev.patient_id, (ev.onset_ts_ms, ev.detected_ts_ms))
            self.patient_span_ms[ev.patient_id] = (min(lo, ev.onset_ts_ms), max(hi, ev.detected_ts_ms))
            if ev.action == "raised":
                self.raised += 1

    def restore(self, e: StateEntry) -> None:
        """One alert's state as the alert-state topic holds it."""
        if e.book is not None:
            self.book.restore(e.book)
        if e.tracker is not None:
            self.tracker.restore(e.alert_id, e.tracker)
        self.alert_partition[e.alert_id] = e.partition

    def forget(self, now_ms: int) -> None:
        """Forget what is past the retention (the next state write tombstones it)."""
        self.dirty.update(self.book.forget(now_ms))
        self.dirty.update(self.tracker.forget(now_ms))

    def apply_ack(self, rec: AckRecord) -> AlertEvent | None:
        self.dirty.add(rec.alert_id)
        self.book.apply(rec)
        fn = self.tracker.acknowledge if rec.action == "ack" else self.tracker.resolve
        ev = fn(rec.alert_id, rec.ts_ms, rec.by)
        if ev is not None and rec.team is not None:  # the audit log says from which team, too
            ev = dataclasses.replace(ev, details={**ev.details, "by_team": rec.team})
        return ev

    def refresh_gauges(self) -> None:
        open_, unack = self.book.counts()
        for p, n in open_.items():
            self.metrics.open_alerts.labels(priority=p).set(n)
        for p, n in unack.items():
            self.metrics.unacknowledged.labels(priority=p).set(n)
        hour_ms = 3_600_000
        observed_ms = sum(max(hour_ms, hi - lo) for lo, hi in self.patient_span_ms.values())
        if observed_ms:
            self.metrics.alerts_per_patient_day.set(self.raised / (observed_ms / 86_400_000))
        self.metrics.alerts_held.labels(store="book").set(len(self.book))
        self.metrics.alerts_held.labels(store="tracker").set(len(self.tracker))
        self.metrics.in_flight.set(self.offsets.in_flight)
        self.metrics.held_bytes.set(self.held_bytes)
        if self.breaker is not None:
            self.metrics.circuits_open.set(self.breaker.open_count())


async def _send(st: _State, topic: str, key: str | bytes, value: bytes) -> None:
    await st.producer.send_and_wait(topic, value=value, key=key if isinstance(key, bytes) else key.encode())


def _dead_letter(item: _Item, reason: str, detail: str, **extra: Any) -> DeadLetter:
    """``item`` as a dead letter of the worker's schema: key and value kept byte for byte."""
    return DeadLetter("alerts", reason, detail, item.key, item.value, item.tp.partition, item.offset,
                      extra=extra)


async def _process(st: _State, item: _Item) -> None:
    try:
        ev = AlertEvent.from_json(item.value or b"")
    except Exception as e:  # any undecodable value ([] or null too): dead-letter, go on
        dl = _dead_letter(item, "undecodable_alert", f"{type(e).__name__}: {e}")
        await _send(st, st.topics.alerts_deadletter, item.key or b"", dl.to_json())
        st.metrics.deliveries.labels(outcome="undecodable", priority="unknown").inc()
        return
    result = await deliver(ev, st.routing, st.client, st.metrics, st.stopping, st.rng, st.breaker)
    now_ms = int(time.time() * 1000)
    if result.outcome == "deadlettered":
        log.warning("all routes failed for %s: %s", ev.event_id, "; ".join(result.reasons[-4:]))
        dl = _dead_letter(item, "all_routes_failed",
                          f"no route delivered {ev.event_id} in {result.attempts} attempts"
                          + (f"; last: {result.reasons[-1]}" if result.reasons else ""),
                          reasons=list(result.reasons), failed_wall_ms=now_ms,
                          event_id=ev.event_id, alert_id=ev.alert_id)
        await _send(st, st.topics.alerts_deadletter, ev.patient_id, dl.to_json())
        if not is_delivery_failure(ev):  # a failed failure alert is only dead-lettered: no loop
            fail = delivery_failure_alert(ev, result.reasons[-8:], now_ms)
            await _send(st, st.topics.alerts, fail.patient_id, fail.to_json())
    elif ev.produced_wall_ms is not None:
        st.metrics.delivery_latency.observe(max(0.0, now_ms - ev.produced_wall_ms) / 1000.0)
    st.metrics.deliveries.labels(outcome=result.outcome, priority=ev.priority).inc()
    # escalation clocks run from when the alert entered the log, live and on replay alike
    st.observe(ev, item.ts_ms, item.tp.partition)


async def write_state(st: _State, owned: set[int], points: dict[int, int]) -> int:
    """Write the alerts changed since the last write whose alerts partition is in
    ``owned`` (a tombstone for those forgotten), then a checkpoint for each partition of
    ``points`` (``{alerts partition: offset below which every record is applied}``),
    with the acks positions applied; returns the records written.

    Alerts of partitions this process does not own are left to their owner (it sees
    every record of them; this process only what the rebuild read). On a failed send
    the changed alerts stay marked and the next write tries again."""
    topic, alerts = st.topics.alert_state, st.topics.alerts
    batch, st.dirty = st.dirty, set()
    wall_ms = int(time.time() * 1000)
    futures, gone = [], []
    try:
        for a in batch:
            p = st.alert_partition.get(a)
            book, tracker = st.book.export(a), st.tracker.export(a)
            if book is None and tracker is None:
                gone.append(a)
            if p is None or p not in owned:
                continue
            value = None if book is None and tracker is None else \
                alert_record(alerts, StateEntry(a, p, book, tracker), wall_ms)
            futures.append(await st.producer.send(topic, key=a.encode(), value=value))
        await asyncio.gather(*futures)
        # only once every alert record has landed: a checkpoint vouches for them; one that
        # says what the last one said is not written again (the topic stays small)
        acks = dict(st.acks_pos)
        fresh = {p: Checkpoint(p, off, acks) for p, off in sorted(points.items())
                 if p in owned and st.checkpoints.get(p) != Checkpoint(p, off, acks)}
        cps = [await st.producer.send(topic, key=checkpoint_key(alerts, p),
                                      value=checkpoint_record(alerts, cp, wall_ms)) for p, cp in fresh.items()]
        await asyncio.gather(*cps)
        st.checkpoints.update(fresh)
    except BaseException:
        st.dirty.update(batch)
        raise
    for a in gone:
        st.alert_partition.pop(a, None)
    return len(futures) + len(cps)


async def _retry_until_stopping(st: _State, step: Callable[[], Awaitable[bool]], what: str,
                                fatal: tuple[type[BaseException], ...] = ()) -> bool:
    """Run ``step`` until it returns True, backing off 0.5 s doubling to 30 s after it
    raises or returns False; False only when the dispatcher is stopping first.

    Exceptions of the ``fatal`` types are not retried but raised to the caller."""
    delay = 0.5
    while not st.stopping.is_set():
        try:
            if await step():
                return True
        except fatal:
            raise
        except Exception:
            log.exception("%s failed; retrying", what)
        await asyncio.sleep(delay)
        delay = min(2 * delay, 30.0)
    return False


async def _deadletter_unexpected(st: _State, item: _Item, exc: Exception) -> bool:
    """Keep an alert that could not be processed; False only when stopping first."""
    doc = _dead_letter(item, "dispatch_error", f"{type(exc).__name__}: {exc}").to_json()

    async def step() -> bool:
        await _send(st, st.topics.alerts_deadletter, item.key or b"", doc)
        st.metrics.deliveries.labels(outcome="dispatch_error", priority="unknown").inc()
        return True

    return await _retry_until_stopping(st, step, f"dead-lettering {item.tp} offset {item.offset}")


async def _unpark(st: _State, item: _Item) -> bool:
    """Read a parked record's bytes back from the log; False only when stopping first.

    A fetch also fills the other parked records it returns (the ones queued behind)."""
    if not item.parked:
        return True

    async def step() -> bool:
        assert st.fetcher is not None
        recs = await st.fetcher.fetch(item.tp, item.offset)
        if recs[0].offset > item.offset:
            # retention removed it before its turn: say so (the caller dead-letters the
            # offset with this reason) and keep the patient's later alerts going
            raise LookupError(f"parked alert record {item.tp.topic}[{item.tp.partition}]@{item.offset} "
                              f"is no longer in the log (it starts at {recs[0].offset})")
        for r in recs:
            other = st.parked.pop((item.tp, r.offset), None)
            if other is not None:
                other.value, other.parked = r.value, False
                st.held_bytes += len(r.value or b"")
        return not item.parked  # False: the fetch ended before the offset, ask again

    return await _retry_until_stopping(st, step, f"reading parked {item.tp} offset {item.offset} back",
                                       fatal=(LookupError,))


async def _worker(st: _State, key: bytes) -> None:
    q = st.queues[key]
    try:
        while not q.empty() and not st.stopping.is_set():
            item = q.get_nowait()
            try:
                if item.parked and not await _unpark(st, item):
                    return
                await _process(st, item)
            except _Abandon:
                return
            except Exception as exc:
                # Never skip to the patient's next alert (order) and never leave this one
                # in limbo (it would hold the partition's commit point forever): keep it in
                # the alerts dead-letter topic with the reason, retrying that until it lands.
                log.exception("unexpected error on %s offset %d; dead-lettering it",
                              item.tp, item.offset)
                if not await _deadletter_unexpected(st, item, exc):
                    return
            st.held_bytes -= len(item.value or b"")
            item.value = None
            st.offsets.done(item.tp, item.offset)
    finally:
        if st.workers.get(key) is asyncio.current_task():
            del st.workers[key]
            if q.empty() or st.stopping.is_set():
                st.queues.pop(key, None)


def _enqueue(st: _State, item: _Item) -> None:
    key = item.key or b""
    q = st.queues.get(key)
    if q is None:
        q = st.queues[key] = asyncio.Queue()
    size = len(item.value or b"")
    must_wait = key in st.workers  # its patient's earlier alerts are still being delivered
    if must_wait and st.fetcher is not None and st.held_bytes + size > st.max_held_bytes:
        item.value, item.parked = None, True
        st.parked[(item.tp, item.offset)] = item
        st.metrics.parked.inc()
    else:
        st.held_bytes += size
    q.put_nowait(item)
    if key not in st.workers:
        st.workers[key] = asyncio.create_task(_worker(st, key), name=f"deliver:{key[:32]!r}")


def apply_tailed_ack(st: _State, raw: bytes | None) -> None:
    """An ack record read back from the ``acks`` topic (see :func:`services.alert_log.apply_tailed_ack`)."""
    _apply_tailed_ack(raw, st.own_acks, st.apply_ack)


async def _send_until_sent(st: _State, topic: str, key: str, value: bytes) -> bool:
    """Send, retrying with backoff until it lands; False only when stopping first."""

    async def step() -> bool:
        await _send(st, topic, key, value)
        return True

    return await _retry_until_stopping(st, step, f"producing to {topic}")


class _KafkaAckSink:
    def __init__(self, st: _State) -> None:
        self._st = st

    async def publish(self, record: AckRecord) -> None:
        raw = record.to_json()
        self._st.own_acks.add(raw)  # before the send: the acks tail may read it back at once
        try:
            await _send(self._st, self._st.topics.acks, record.alert_id, raw)
        except BaseException:
            self._st.own_acks.discard(raw)
            raise
        ev = self._st.apply_ack(record)
        if ev is not None:  # the acknowledgement itself goes to the audit log (and the team)
            await _send(self._st, self._st.topics.alerts, ev.patient_id, ev.to_json())


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, st: _State, consumer: AIOKafkaConsumer) -> None:
        self._st, self._c = st, consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        points = {tp: o for tp, o in self._st.offsets.commit_points().items() if tp in revoked}
        if points:
            with contextlib.suppress(Exception):
                await self._c.commit(points)
        for tp in revoked:
            self._st.offsets.drop(tp)
        self._st.metrics.assigned_partitions.set(0)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._st.metrics.assigned_partitions.set(len(assigned))


async def run_dispatcher(settings: DispatcherSettings, routing: RoutingConfig, *,
                         client: httpx.AsyncClient | WebhookPoster | None = None,
                         stop: asyncio.Event | None = None,
                         metrics: DispatcherMetrics | None = None,
                         tracker: EscalationTrackerLike | None = None,
                         options: DispatchOptions = DispatchOptions(),
                         tokens: TokenBook | None = None,
                         on_ready: Callable[[AckApi | None], None] | None = None) -> None:
    """Consume ``alerts`` and deliver them until ``stop`` is set; then drain and commit.

    Parameters
    ----------
    settings : DispatcherSettings
        Kafka bootstrap, topics, group id, metrics and ack ports.
    routing : RoutingConfig
        Care-team routes and the escalation policy.
    client : httpx.AsyncClient or WebhookPoster, optional
        Injected HTTP client (tests); default an :class:`AiohttpPoster` (one keep-alive
        pool without a connection cap, so a hung endpoint cannot starve healthy ones).
    stop : asyncio.Event, optional
        Set to stop gracefully (SIGTERM/SIGINT do it in :func:`main`).
    metrics : DispatcherMetrics, optional
        Built on a fresh registry when not given.
    tracker : EscalationTrackerLike, optional
        Default: ``streaming.escalation.EscalationTracker`` from ``routing.escalation``.
    options : DispatchOptions
        Bounds and intervals.
    tokens : TokenBook, optional
        Ack API tokens (hashed, each a user in a team); default the routing file's.
    on_ready : callable, optional
        Called with the started ack API (or None) once consuming begins.

    Raises
    ------
    services.topics.TopicLayoutError
        Before starting anything, when the ``alerts``, ``acks`` or ``alerts_deadletter``
        topic is missing or has a replication factor below the setting.
    """
    if settings.ack_tokens_file is not None:
        raise AccessConfigError(
            f"CARDIOWATCH_ACK_TOKENS_FILE ({str(settings.ack_tokens_file)!r}) is no longer read: ack tokens "
            "belong to a team in the routing file, hashed; convert the file with 'cardiowatch token hash "
            "--from-tokens-file FILE --team TEAM' and unset the variable")
    stop = stop or asyncio.Event()
    metrics = metrics or DispatcherMetrics(CollectorRegistry())
    own_poster = AiohttpPoster() if client is None else None
    poster: WebhookPoster = own_poster if own_poster is not None else as_poster(client)  # type: ignore[arg-type]
    bootstrap, security = settings.kafka.bootstrap, settings.kafka.security
    # a bad certificate or password: one error naming it (KafkaConnectError), no retries
    await check_connection(bootstrap, security, settings.kafka.connect_timeout_s)
    # Refuse a cluster that does not fit the settings before anything is started.
    for d in await asyncio.to_thread(check_topics, settings.kafka, "dispatcher"):
        log.warning("%s; starting anyway (`cardiowatch topics apply` lists every difference)",
                    d.describe())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=2, **security.aiokafka_kwargs())
    await producer.start()
    retention_ms = int(round(settings.alert_retention_hours * 3_600_000))
    st = _State(settings, routing, poster, producer,
                tracker if tracker is not None else default_tracker(routing, retention_ms),
                AlertBook(retention_ms=retention_ms),
                metrics, asyncio.Event(), max_held_bytes=options.max_held_bytes,
                fetcher=LogReader(bootstrap, security=security),
                breaker=CircuitBreaker(options.breaker_failures, options.breaker_cooldown_s))
    tasks: list[asyncio.Task[None]] = []
    api: AckApi | None = None
    consumer: AIOKafkaConsumer | None = None
    acks_consumer: AIOKafkaConsumer | None = None
    try:
        rebuilt = await rebuild(bootstrap, st.topics.alerts, st.topics.acks, security,
                                observe=st.observe, apply_ack=st.apply_ack,
                                timeout_s=options.rebuild_timeout_s,
                                max_records=options.rebuild_max_records,
                                state_topic=st.topics.alert_state, restore=st.restore)
        acks_consumer = rebuilt.acks_consumer
        st.acks_pos.update(rebuilt.acks_end)
        for a, p in rebuilt.partitions.items():
            st.alert_partition.setdefault(a, p)
        # The rebuild read every partition to its end: its state is complete up to there
        # for all of them, so it is written now (the first time, everything the raw replay found).
        st.forget(int(time.time() * 1000))
        try:
            n = await write_state(st, set(rebuilt.alerts_end), rebuilt.alerts_end)
            log.info("wrote %d alert-state record(s) to %r after the %s rebuild", n, st.topics.alert_state,
                     rebuilt.mode)
        except Exception:  # the state stays marked; the escalation loop's next write tries again
            log.exception("writing the alert state after the %s rebuild failed; retrying later", rebuilt.mode)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=settings.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=500, **security.aiokafka_kwargs())
        consumer.subscribe([st.topics.alerts], listener=_Rebalance(st, consumer))
        await consumer.start()
        if options.serve_ack_api:
            api = AckApi(st.book, TokenBook(routing.tokens) if tokens is None else tokens, _KafkaAckSink(st),
                         team_of=alert_team(routing), host=settings.bind_host, port=settings.ack_port)
            await api.start()
        tasks.append(asyncio.create_task(tail_acks(acks_consumer, st.stopping, st.apply_ack, st.own_acks,
                                                   st.acks_pos), name="acks"))

        async def publish(ev: AlertEvent) -> bool:
            return await _send_until_sent(st, st.topics.alerts, ev.patient_id, ev.to_json())

        last_write = time.monotonic()

        async def housekeep(now_ms: int) -> None:
            nonlocal last_write
            st.forget(now_ms)
            if time.monotonic() - last_write < options.state_flush_s:
                return
            assert consumer is not None
            owned = {tp.partition for tp in consumer.assignment() if tp.topic == st.topics.alerts}
            points = {p: pt for p in owned
                      if (pt := st.offsets.point(TopicPartition(st.topics.alerts, p))) is not None}
            await write_state(st, owned, points)
            last_write = time.monotonic()

        tasks.append(asyncio.create_task(escalate(st.tracker, st.stopping, routing.escalation.poll_s,
                                                  publish=publish, refresh=st.refresh_gauges,
                                                  housekeep=housekeep),
                                         name="escalate"))
        if on_ready is not None:
            on_ready(api)
        await _consume(st, consumer, stop, options)
    finally:
        st.stopping.set()
        workers = list(st.workers.values())
        if workers:
            _, pending = await asyncio.wait(workers, timeout=options.stop_grace_s)
            for t in pending:
                t.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, *st.workers.values(), return_exceptions=True)
        if consumer is not None:
            await _commit(st, consumer)
            # what is not written is replayed from the logs after the last checkpoint
            with contextlib.suppress(Exception):
                owned = {tp.partition for tp in consumer.assignment() if tp.topic == st.topics.alerts}
                await asyncio.wait_for(write_state(st, owned, {
                    p: pt for p in owned
                    if (pt := st.offsets.point(TopicPartition(st.topics.alerts, p))) is not None}),
                    timeout=options.stop_grace_s)
            await consumer.stop()
        if acks_consumer is not None:
            await acks_consumer.stop()
        if api is not None:
            await api.stop()
        if st.fetcher is not None:
            await st.fetcher.stop()
        await producer.stop()
        if own_poster is not None:
            await own_poster.aclose()


async def _commit(st: _State, consumer: AIOKafkaConsumer) -> None:
    points = st.offsets.commit_points()
    if not points:
        return
    try:
        await consumer.commit(points)
        st.offsets.mark_committed(points)
    except Exception as e:  # rebalance in progress etc.: the next tick tries again
        log.warning("commit failed (%s); will retry", e)


async def _consume(st: _State, consumer: AIOKafkaConsumer, stop: asyncio.Event,
                   opts: DispatchOptions) -> None:
    paused = False
    last_commit = time.monotonic()
    resume_below = max(1, opts.max_in_flight // 2)
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=100, max_records=500)
        for tp, recs in batches.items():
            if tp not in consumer.assignment():
                continue
            for r in recs:
                st.offsets.add(tp, r.offset)
                _enqueue(st, _Item(tp, r.offset, r.key, r.value, r.timestamp))
        inflight = st.offsets.in_flight
        if not paused and inflight >= opts.max_in_flight:
            consumer.pause(*consumer.assignment())
            paused = True
        elif paused and inflight <= resume_below:
            consumer.resume(*consumer.assignment())
            paused = False
        if time.monotonic() - last_commit >= opts.commit_interval_s:
            await _commit(st, consumer)
            last_commit = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    """``cardiowatch dispatch``: settings from ``CARDIOWATCH_*``; stops on SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(prog="cardiowatch dispatch", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--log-level", default="INFO", help="Python logging level (DEBUG, INFO, WARNING, ERROR)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = DispatcherSettings.from_env()
    routing = load_routing(settings.routing_file)
    registry = CollectorRegistry()
    start_http_server(settings.metrics_port, addr=settings.bind_host, registry=registry)

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(api: AckApi | None) -> None:
            print(f"dispatcher ready ack_api={api.url if api else None}", flush=True)

        opts = DispatchOptions(max_in_flight=settings.max_in_flight,
                               max_held_bytes=settings.held_mib * 1024 * 1024,
                               breaker_failures=settings.breaker_failures,
                               breaker_cooldown_s=settings.breaker_cooldown_s,
                               rebuild_timeout_s=settings.rebuild_timeout_s,
                               rebuild_max_records=settings.rebuild_max_records)
        await run_dispatcher(settings, routing, stop=stop, metrics=DispatcherMetrics(registry),
                             options=opts, on_ready=ready)

    try:
        asyncio.run(_run())
    except TopicLayoutError as exc:
        print(f"cardiowatch dispatch: error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG: a restart will not help until the topics or settings change
    except RebuildIncompleteError as exc:
        print(f"cardiowatch dispatch: error: {exc}", file=sys.stderr)
        return EXIT_REBUILD_INCOMPLETE
    return 0


if __name__ == "__main__":
    sys.exit(main())
