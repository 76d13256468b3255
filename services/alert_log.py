"""Delivery stage, state: the dispatcher's escalation state, rebuilt from and kept in the log.

On start :func:`rebuild` reads the compacted alert-state topic (:mod:`services.alert_state`)
and replays the ``alerts`` and ``acks`` records after its checkpoints, in log-time order,
into the escalation tracker and the alert book (the whole logs, once, on a cluster whose
state topic has no checkpoint yet); it reads to the end of each within a deadline or
raises :class:`RebuildIncompleteError`, never going on with partial state.
:func:`tail_acks` then follows ``acks``
(acknowledgements made through another dispatcher or the topic itself), and
:func:`escalate` produces each due escalation to ``alerts`` (the audit log), from where
the consume loop delivers it to the level's contact like any other alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from models.errors import CardiowatchError
from services.ack_api import AckRecord
from services.alert_state import StateEntry, StateSnapshot
from services.routing import RoutingConfig
from streaming.events import AlertEvent
from streaming.kafka_security import KafkaSecurity

__all__ = [
    "EscalationTrackerLike",
    "RebuildIncompleteError",
    "Rebuilt",
    "default_tracker",
    "escalate",
    "log_behind",
    "open_log_reader",
    "read_state",
    "rebuild",
    "tail_acks",
]

log = logging.getLogger("cardiowatch.dispatcher")


class EscalationTrackerLike(Protocol):
    """The part of ``streaming.escalation.EscalationTracker`` the dispatcher uses."""

    def observe(self, event: AlertEvent, now_ms: int) -> Any: ...
    def acknowledge(self, alert_id: str, now_ms: int, by: str) -> AlertEvent | None: ...
    def resolve(self, alert_id: str, now_ms: int, by: str) -> AlertEvent | None: ...
    def due(self, now_ms: int) -> list[AlertEvent]: ...
    def forget(self, now_ms: int) -> list[str]: ...
    def export(self, alert_id: str) -> dict[str, Any] | None: ...
    def restore(self, alert_id: str, state: Mapping[str, Any]) -> None: ...
    def __len__(self) -> int: ...


def default_tracker(routing: RoutingConfig, retention_ms: int = 24 * 3_600_000) -> EscalationTrackerLike:
    """``streaming.escalation.EscalationTracker`` with the routing file's escalation policy."""
    from streaming.escalation import EscalationConfig, EscalationTracker
    return EscalationTracker(EscalationConfig(
        escalate_after_s=dict(routing.escalation.escalate_after_s),
        max_level=routing.escalation.max_level), retention_ms=retention_ms)


async def open_log_reader(bootstrap: str, topics: list[str], timeout_s: float = 30.0,
                          security: KafkaSecurity | None = None,
                          ) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A group-less consumer assigned every partition of ``topics``, at the beginning."""
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         **(security or KafkaSecurity()).aiokafka_kwargs())
    await c.start()
    deadline = time.monotonic() + timeout_s
    # without a group the subscription assigns every partition once metadata has arrived
    while {tp.topic for tp in c.assignment()} != set(topics):
        if time.monotonic() > deadline:
            await c.stop()
            raise TimeoutError(f"no partitions for topics {topics} after {timeout_s} s")
        await asyncio.sleep(0.05)
    tps = sorted(c.assignment(), key=lambda tp: (tp.topic, tp.partition))
    await c.seek_to_beginning(*tps)
    return c, tps


async def log_behind(c: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    """Whether any partition's position is still before ``end``."""
    for tp, off in end.items():
        if await c.position(tp) < off:
            return True
    return False


class RebuildIncompleteError(CardiowatchError, RuntimeError):
    """The start-up rebuild could not read to the end of a topic within its deadline.

    The dispatcher does not start on partial state (alerts before that point would
    neither escalate nor be acknowledgeable); ``behind`` names each partition, its
    position and the end offset it had to reach."""

    def __init__(self, topic: str, behind: Mapping[int, tuple[int, int]], why: str) -> None:
        self.topic, self.behind = topic, dict(behind)
        parts = ", ".join(f"partition {p} at offset {pos} of {end}"
                          for p, (pos, end) in sorted(self.behind.items())) or "no partition metadata arrived"
        super().__init__(f"start-up rebuild did not reach the end of topic {topic!r} {why}: {parts}; "
                         "the dispatcher does not start on partial state (check the broker, or raise "
                         "CARDIOWATCH_DISPATCH_REBUILD_TIMEOUT_S)")


@dataclass
class Rebuilt:
    """What :func:`rebuild` did, and the acks consumer it leaves for :func:`tail_acks`."""

    acks_consumer: AIOKafkaConsumer
    mode: str  # "state": from the alert-state topic and the logs after its checkpoints; "raw": whole logs
    alerts_end: dict[int, int]  # alerts partition -> end offset read to
    acks_end: dict[int, int]  # acks partition -> end offset read to
    restored: int = 0
    alerts: int = 0
    acks: int = 0
    partitions: dict[str, int] = field(default_factory=dict)  # alert id -> alerts partition


async def _behind(c: AIOKafkaConsumer, end: Mapping[TopicPartition, int]) -> dict[TopicPartition, tuple[int, int]]:
    out = {}
    for tp, off in end.items():
        pos = await c.position(tp)
        if pos < off:
            out[tp] = (pos, off)
    return out


async def _read_to_end(c: AIOKafkaConsumer, end: Mapping[TopicPartition, int], deadline: float,
                       timeout_s: float, on_record: Callable[[TopicPartition, Any], None],
                       max_records: int | None = None) -> None:
    """Feed every record below ``end`` to ``on_record``; raise :class:`RebuildIncompleteError`
    (naming the first topic still behind and where each of its partitions stands) when
    ``deadline`` (monotonic) passes or a record beyond the first ``max_records`` comes."""

    def fail(topic: str, at: Mapping[TopicPartition, tuple[int, int]], why: str) -> RebuildIncompleteError:
        return RebuildIncompleteError(topic, {tp.partition: v for tp, v in at.items() if tp.topic == topic}, why)

    n = 0
    while True:
        behind = await _behind(c, end)
        if not behind:
            return
        if time.monotonic() > deadline:
            raise fail(min(tp.topic for tp in behind), behind, f"within {timeout_s:g} s")
        for tp, recs in (await c.getmany(timeout_ms=200, max_records=5000)).items():
            for r in recs:
                if r.offset >= end.get(tp, 0):
                    continue
                if max_records is not None and n >= max_records:
                    at = {**await _behind(c, end), tp: (r.offset, end[tp])}
                    raise fail(tp.topic, at, f"within {max_records} records")
                on_record(tp, r)
                n += 1


async def _open(bootstrap: str, topics: list[str], deadline: float, timeout_s: float,
                security: KafkaSecurity) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    try:  # partition metadata gets at least a second, whatever is left of the deadline
        return await open_log_reader(bootstrap, topics, max(1.0, deadline - time.monotonic()), security)
    except TimeoutError:
        raise RebuildIncompleteError(topics[0], {}, f"within {timeout_s:g} s") from None


async def read_state(bootstrap: str, state_topic: str, alerts_topic: str, security: KafkaSecurity,
                     deadline: float, timeout_s: float) -> StateSnapshot:
    """Every record of the compacted alert-state topic up to its end, folded per key."""
    snap = StateSnapshot()
    c, tps = await _open(bootstrap, [state_topic], deadline, timeout_s, security)
    try:
        end = await c.end_offsets(tps)
        await _read_to_end(c, end, deadline, timeout_s,
                           lambda tp, r: snap.add(alerts_topic, r.key, r.value))
    finally:
        await c.stop()
    return snap


async def rebuild(bootstrap: str, alerts_topic: str, acks_topic: str, security: KafkaSecurity, *,
                  observe: Callable[[AlertEvent, int, int], None], apply_ack: Callable[[AckRecord], Any],
                  timeout_s: float, max_records: int, state_topic: str | None = None,
                  restore: Callable[[StateEntry], None] | None = None) -> Rebuilt:
    """Rebuild the dispatcher's state, bounded in time, or raise.

    With ``state_topic``: read it to its end and ``restore`` each alert's latest state;
    then replay only the ``alerts`` and ``acks`` records after its checkpoints. Without
    checkpoints for ``alerts_topic`` (a cluster whose dispatcher never wrote the state
    yet, or no ``state_topic``), replay both logs from the beginning, once; the caller
    then writes the state.

    Replayed records go, in log-time order, to ``observe(event, log_time_ms, partition)``
    and ``apply_ack(record)``; an ack already contained in its alert's restored state
    is not applied again.

    Raises
    ------
    RebuildIncompleteError
        A topic could not be read to its end within ``timeout_s`` (in all), or the raw
        replay needs more than ``max_records`` records; the message names the topic,
        the partitions and their offsets.
    """
    deadline = time.monotonic() + timeout_s
    snap = (await read_state(bootstrap, state_topic, alerts_topic, security, deadline, timeout_s)
            if state_topic is not None else StateSnapshot())
    if snap.undecodable:
        log.error("%d record(s) of the alert-state topic %r do not decode; their alerts are "
                  "rebuilt only from the logs after the checkpoints", snap.undecodable, state_topic)
    mode = "state" if snap.checkpoints else "raw"
    partitions: dict[str, int] = {}
    if mode == "state" and restore is not None:
        for e in snap.entries.values():
            restore(e)
            partitions[e.alert_id] = e.partition
    c, tps = await _open(bootstrap, [alerts_topic, acks_topic], deadline, timeout_s, security)
    end = await c.end_offsets(tps)
    cps = snap.checkpoints if mode == "state" else {}
    acks_from: dict[int, int] = {}
    for cp in cps.values():
        for q, off in cp.acks.items():
            acks_from[q] = min(acks_from.get(q, off), off)
    for tp in tps:
        if tp.topic == alerts_topic and tp.partition in cps:
            c.seek(tp, cps[tp.partition].alerts_offset)
        elif tp.topic == acks_topic and tp.partition in acks_from:
            # an acks partition no checkpoint names is read whole (it is new, or empty)
            c.seek(tp, acks_from[tp.partition])
    # Decoded as they arrive, ECG strips dropped (neither the tracker nor the book keeps
    # them), then replayed in log-time order across the two topics.
    records: list[tuple[int, int, int, int, AlertEvent | AckRecord]] = []
    skipped = 0

    def keep(tp: TopicPartition, r: Any) -> None:
        nonlocal skipped
        try:
            if tp.topic == alerts_topic:
                ev = AlertEvent.from_json(r.value)
                item: AlertEvent | AckRecord = AlertEvent.from_dict({**ev.to_dict(), "strip": None})
            else:
                item = AckRecord.from_json(r.value)
        except (ValueError, TypeError, KeyError):
            skipped += 1
            return
        records.append((r.timestamp, len(records), tp.partition, r.offset, item))

    try:
        await _read_to_end(c, end, deadline, timeout_s, keep, max_records=max_records)
    except BaseException:
        await c.stop()
        raise
    records.sort(key=lambda x: (x[0], x[1]))
    n_alerts = n_acks = 0
    for ts, _, partition, offset, item in records:
        if isinstance(item, AlertEvent):
            partitions.setdefault(item.alert_id, partition)
            observe(item, ts, partition)
            n_alerts += 1
        else:
            p = partitions.get(item.alert_id)
            held = cps.get(p) if p is not None else None
            if held is not None and offset < held.acks.get(partition, 0):
                continue  # already in the alert's restored state
            apply_ack(item)
            n_acks += 1
    if mode == "state":
        log.info("rebuilt escalation state from %r: %d alerts restored, then %d alert and %d ack "
                 "record(s) after its checkpoints (%d undecodable skipped)", state_topic,
                 len(snap.entries), n_alerts, n_acks, skipped)
    else:
        log.info("rebuilt escalation state from the whole logs: %d alerts and %d acks (%d undecodable "
                 "skipped)%s", n_alerts, n_acks, skipped,
                 "; the alert-state topic has no checkpoint yet, it is written now" if state_topic else "")
    ack_tps = [tp for tp in tps if tp.topic == acks_topic]
    c.unsubscribe()
    c.assign(ack_tps)
    for tp in ack_tps:
        c.seek(tp, end[tp])
    return Rebuilt(c, mode, {tp.partition: end[tp] for tp in tps if tp.topic == alerts_topic},
                   {tp.partition: end[tp] for tp in ack_tps}, len(snap.entries) if mode == "state" else 0,
                   n_alerts, n_acks, partitions)


def apply_tailed_ack(raw: bytes | None, own: set[bytes], apply_ack: Callable[[AckRecord], Any]) -> None:
    """An ack record read back from the ``acks`` topic: applied unless this process's own
    ack API published it (``own``: that call applies it itself and logs the ``acknowledged``
    event; applied here first, the tracker would answer that call "already acknowledged"
    and the event would never reach the audit log or the care team). Undecodable: skipped."""
    if raw is not None and raw in own:
        own.discard(raw)
        return
    try:
        rec = AckRecord.from_json(raw or b"")
    except Exception:
        return
    apply_ack(rec)


async def tail_acks(c: AIOKafkaConsumer, stopping: asyncio.Event,
                    apply_ack: Callable[[AckRecord], Any], own: set[bytes] | None = None,
                    positions: dict[int, int] | None = None) -> None:
    """Apply every new ``acks`` record until ``stopping`` (:func:`apply_tailed_ack`),
    keeping in ``positions`` the next offset to apply per acks partition (for the
    alert-state checkpoints)."""
    own = set() if own is None else own
    positions = {} if positions is None else positions
    while not stopping.is_set():
        try:
            batches = await c.getmany(timeout_ms=200)
        except Exception:  # a broker hiccup must not end ack handling for the process
            log.exception("reading the acks topic failed; retrying")
            await asyncio.sleep(1.0)
            continue
        for tp, recs in batches.items():
            for r in recs:
                apply_tailed_ack(r.value, own, apply_ack)
                positions[tp.partition] = r.offset + 1


async def escalate(tracker: EscalationTrackerLike, stopping: asyncio.Event, poll_s: float, *,
                   publish: Callable[[AlertEvent], Awaitable[bool]],
                   refresh: Callable[[], None],
                   housekeep: Callable[[int], Awaitable[None]] | None = None) -> None:
    """Every ``poll_s``, ``publish`` each due escalation (stamped ``produced_wall_ms``) to
    the alerts log, ``housekeep(now_ms)`` (forget past the retention, write the alert
    state: in this task, so a state written never runs ahead of an escalation not yet
    in the log) and ``refresh`` the gauges, until ``stopping`` or ``publish`` says False
    (it retries until sent, so False means stopping)."""
    while not stopping.is_set():
        try:
            now_ms = int(time.time() * 1000)
            # due() has already moved each alert to its next level: the escalated event
            # must reach the log (and from there the next contact), so it is retried.
            for ev in tracker.due(now_ms):
                ev = AlertEvent.from_dict({**ev.to_dict(), "produced_wall_ms": now_ms})
                if not await publish(ev):
                    return
            if housekeep is not None:
                await housekeep(now_ms)
            refresh()
        except Exception:  # never let escalation die silently while delivery goes on
            log.exception("escalation step failed; continuing")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=poll_s)
