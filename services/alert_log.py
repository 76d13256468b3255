"""Delivery stage, state: the dispatcher's escalation state, rebuilt from and kept in the log.

On start :func:`rebuild` replays the ``alerts`` and ``acks`` topics, in log-time order,
into the escalation tracker and the alert book; :func:`tail_acks` then follows ``acks``
(acknowledgements made through another dispatcher or the topic itself), and
:func:`escalate` produces each due escalation to ``alerts`` (the audit log), from where
the consume loop delivers it to the level's contact like any other alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.ack_api import AckRecord
from services.routing import RoutingConfig
from streaming.events import AlertEvent
from streaming.kafka_security import KafkaSecurity

__all__ = [
    "EscalationTrackerLike",
    "default_tracker",
    "escalate",
    "log_behind",
    "open_log_reader",
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


def default_tracker(routing: RoutingConfig) -> EscalationTrackerLike:
    """``streaming.escalation.EscalationTracker`` with the routing file's escalation policy."""
    from streaming.escalation import EscalationConfig, EscalationTracker
    return EscalationTracker(EscalationConfig(
        escalate_after_s=dict(routing.escalation.escalate_after_s),
        max_level=routing.escalation.max_level))


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


async def rebuild(bootstrap: str, alerts_topic: str, acks_topic: str, security: KafkaSecurity, *,
                  observe: Callable[[AlertEvent, int], None], apply_ack: Callable[[AckRecord], Any],
                  timeout_s: float, max_records: int) -> AIOKafkaConsumer:
    """Replay ``alerts`` (``observe(event, log_time_ms)``) and ``acks`` (``apply_ack``) in
    log-time order; return a consumer positioned at the end of ``acks``, for
    :func:`tail_acks`. Stops early, logging an error, after ``timeout_s`` or
    ``max_records`` records."""
    c, tps = await open_log_reader(bootstrap, [alerts_topic, acks_topic], timeout_s, security)
    end = await c.end_offsets(tps)
    # Decoded as they arrive, ECG strips dropped (neither the tracker nor the book keeps
    # them), then replayed in log-time order across the two topics.
    records: list[tuple[int, int, AlertEvent | AckRecord]] = []
    skipped = 0
    deadline = time.monotonic() + timeout_s
    while (await log_behind(c, end) and time.monotonic() < deadline
           and len(records) < max_records):
        for tp, recs in (await c.getmany(timeout_ms=200, max_records=5000)).items():
            for r in recs:
                if r.offset >= end[tp]:
                    continue
                try:
                    if tp.topic == alerts_topic:
                        ev = AlertEvent.from_json(r.value)
                        item: AlertEvent | AckRecord = AlertEvent.from_dict({**ev.to_dict(), "strip": None})
                    else:
                        item = AckRecord.from_json(r.value)
                except (ValueError, TypeError, KeyError):
                    skipped += 1
                    continue
                records.append((r.timestamp, len(records), item))
    complete = not await log_behind(c, end)
    records.sort(key=lambda x: (x[0], x[1]))
    n_alerts = n_acks = 0
    for ts, _, item in records:
        if isinstance(item, AlertEvent):
            observe(item, ts)
            n_alerts += 1
        else:
            apply_ack(item)
            n_acks += 1
    if complete:
        log.info("rebuilt escalation state from %d alerts and %d acks (%d undecodable skipped)",
                 n_alerts, n_acks, skipped)
    else:
        log.error("escalation state rebuilt only partly: stopped after %d alerts and %d acks "
                  "(limits %.0f s, %d records); alerts before that point may neither escalate "
                  "nor be acknowledgeable", n_alerts, n_acks, timeout_s, max_records)
    ack_tps = [tp for tp in tps if tp.topic == acks_topic]
    c.unsubscribe()
    c.assign(ack_tps)
    for tp in ack_tps:
        c.seek(tp, end[tp])
    return c


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
                    apply_ack: Callable[[AckRecord], Any], own: set[bytes] | None = None) -> None:
    """Apply every new ``acks`` record until ``stopping`` (:func:`apply_tailed_ack`)."""
    own = set() if own is None else own
    while not stopping.is_set():
        try:
            batches = await c.getmany(timeout_ms=200)
        except Exception:  # a broker hiccup must not end ack handling for the process
            log.exception("reading the acks topic failed; retrying")
            await asyncio.sleep(1.0)
            continue
        for recs in batches.values():
            for r in recs:
                apply_tailed_ack(r.value, own, apply_ack)


async def escalate(tracker: EscalationTrackerLike, stopping: asyncio.Event, poll_s: float, *,
                   publish: Callable[[AlertEvent], Awaitable[bool]],
                   refresh: Callable[[], None]) -> None:
    """Every ``poll_s``, ``publish`` each due escalation (stamped ``produced_wall_ms``) to
    the alerts log and ``refresh`` the gauges, until ``stopping`` or ``publish`` says
    False (it retries until sent, so False means stopping)."""
    while not stopping.is_set():
        try:
            now_ms = int(time.time() * 1000)
            # due() has already moved each alert to its next level: the escalated event
            # must reach the log (and from there the next contact), so it is retried.
            for ev in tracker.due(now_ms):
                ev = AlertEvent.from_dict({**ev.to_dict(), "produced_wall_ms": now_ms})
                if not await publish(ev):
                    return
            refresh()
        except Exception:  # never let escalation die silently while delivery goes on
            log.exception("escalation step failed; continuing")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=poll_s)
