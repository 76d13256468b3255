"""One stream's batch cycle: the body both Faust agents share.

A micro-batch of raw records goes through four steps, and each must be finished before
the next may begin, for that batch:

1. **core**: offsets Faust skipped are read back (:mod:`streaming.continuity`) and the
   records go through the pure stream core (:func:`process_safely`);
2. **send**: scores, alerts and dead letters are sent and their delivery awaited;
3. **store**: each patient's new state is written to its table, and the cycle waits until
   those changelog records are delivered too (:class:`streaming.tables.ConfirmedTable`);
4. **ack**: only then are the batch's offsets acked for commit.

A worker killed anywhere in between replays from the last committed offset: if the
state had not been written, the replay recomputes the same beats with the same ids
(receivers dedupe by id); if it had, the core recognises the already-applied offsets
and skips them. Nothing is lost either way.

**Overlap.** Steps 2-4 mostly wait for the broker, step 1 is CPU. So :meth:`BatchCycle.run`
does step 1 of batch *k+1* while steps 2-4 of batch *k* are in flight (a task), and
waits for batch *k* to be acked before it starts sending batch *k+1*. Every batch still
goes through its steps in order, and the batches one after the other (outputs of *k*,
state of *k*, offsets of *k*, outputs of *k+1*, ...); only the core's work moves into
the time spent waiting. Batch *k+1* is processed against batch *k*'s new states (held in
memory until they are stored), and the continuity guard counts batch *k*'s offsets as
applied as soon as the core has applied them, so they are not read back.

The agent body returns before its batch is acked, and Faust acks a batch's events when
its body returns. So the cycle holds one more reference on each event's message
(``incref``) and drops it in step 4: Faust's own ack then leaves the offset uncommitted
until the state is in the changelog. A rebalance waits for every message handed out to
be acked (``stream_wait_empty``), so it also waits for the batch in flight. Whoever else
rewrites the table's states (the tick timer) takes the cycle's lock and calls
:meth:`BatchCycle.drain` first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streaming.continuity import ContinuityGuard
from streaming.events import DeviceClockEvent
from streaming.metrics import WorkerMetrics
from streaming.pipeline import DeadLetter, InMessage
from streaming.retry import retry_or_stop
from streaming.statecache import DecodedCache, LazyStates, Overlay

__all__ = ["BatchCycle", "count_clock_events", "process_safely"]

log = logging.getLogger(__name__)


def _merge_results(results: list[Any]) -> Any:
    """One batch result from the results of processing its messages one by one."""
    first = results[0]
    merged: dict[str, Any] = {}
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
        view = Overlay(states, changed)
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


@dataclass
class _InFlight:
    """A processed batch on its way out: its Faust events, read-back records and result."""

    events: Sequence[Any]
    read_back: list[tuple[int, int]]
    result: Any
    task: asyncio.Future[None] | None = None


class BatchCycle:
    """The batch cycle of one stream (``"ecg"`` or ``"hr"``), shared by both agents.

    Parameters
    ----------
    stream, core
        The stream's name and its pure core (:class:`streaming.pipeline.ECGPipeline`
        or ``HRPipeline``).
    table, cache
        The stream's state table (:class:`streaming.tables.ConfirmedTable`) and its
        decoded-state cache.
    guard
        The stream's :class:`~streaming.continuity.ContinuityGuard`.
    metrics
        Worker metrics.
    send_all
        ``await send_all(dead, alerts, scores)``: sends outputs and waits for their
        delivery (never raises; stops the worker hard when the broker stays away).
    confirm_stored
        ``await confirm_stored(table)``: waits for the table's changelog writes.
    ack_message, ack_offset
        ``ack_message(message)`` drops the cycle's reference on a Faust message (the
        last reference acks it for commit); ``ack_offset(topic, partition, offset)``
        acks a record read back from the log, which Faust never handed out.
    after_core, after_send
        ``after_core(result)`` and ``after_send(result, now_s)``: the stream's own
        metrics, once the core has run and once its outputs are delivered.
    """

    def __init__(self, stream: str, core: Any, table: Any, cache: DecodedCache[Any],
                 guard: ContinuityGuard, metrics: WorkerMetrics,
                 send_all: Callable[[list[DeadLetter], list[Any], list[Any]], Awaitable[None]],
                 confirm_stored: Callable[[Any], Awaitable[None]],
                 ack_message: Callable[[Any], None], ack_offset: Callable[[str, int, int], None],
                 after_core: Callable[[Any], None] | None = None,
                 after_send: Callable[[Any, float], None] | None = None) -> None:
        self.stream, self.core, self.table, self.cache, self.guard = stream, core, table, cache, guard
        self.metrics, self._send_all, self._confirm_stored = metrics, send_all, confirm_stored
        self._ack_message, self._ack_offset = ack_message, ack_offset
        self._after_core, self._after_send = after_core, after_send
        # stage names of cardiowatch_stage_latency_seconds: the ECG stream keeps the
        # historical unprefixed ones (dashboards and `bench stream` read them)
        pre = "" if stream == "ecg" else f"{stream}_"
        self._stages = {"core": f"{stream}_core", "wait": f"{pre}wait_previous", "send": f"{pre}send",
                        "store": f"{pre}store_state"}
        self.lock = asyncio.Lock()
        self._in_flight: _InFlight | None = None

    def states(self) -> Mapping[str, Any]:
        """Patient states as the next batch must see them: the batch in flight's new
        states in front of the table's."""
        lazy = LazyStates(self.table, self.cache)
        return lazy if self._in_flight is None else Overlay(lazy, self._in_flight.result.states)

    async def run(self, events: Sequence[Any]) -> None:
        """Take one batch of Faust events through the cycle; returns once its core has run
        and the batch before it is acked (its own sending goes on in the background)."""
        msgs = [InMessage(e.message.key, e.message.value, e.message.partition, e.message.offset)
                for e in events]
        self.metrics.messages_in.labels(self.stream).inc(len(msgs))
        async with self.lock:
            msgs = await self._contiguous(msgs)
            t = time.perf_counter()
            res = process_safely(self.core, msgs, self.states(), self.stream)
            self.metrics.stage_latency.labels(self._stages["core"]).observe(time.perf_counter() - t)
            if self._after_core is not None:
                self._after_core(res)
            # the core has applied these offsets: the next batch must not read them back
            batch = _InFlight(events, self.guard.applied(msgs), res)
            for e in events:  # Faust's ack when the body returns must not commit them yet
                e.message.incref()
            t = time.perf_counter()
            await self.drain()
            self.metrics.stage_latency.labels(self._stages["wait"]).observe(time.perf_counter() - t)
            self._in_flight = batch
            batch.task = asyncio.ensure_future(self._finish(batch))

    async def drain(self) -> None:
        """Wait until the batch in flight (if any) is sent, stored and acked. Call with
        :attr:`lock` held; raises what finishing it raised."""
        batch = self._in_flight
        if batch is None or batch.task is None:
            return
        try:
            await asyncio.shield(batch.task)
        finally:
            if batch.task.done() and self._in_flight is batch:
                self._in_flight = None

    async def _finish(self, batch: _InFlight) -> None:
        res = batch.result
        t = time.perf_counter()
        await self._send_all(res.dead, res.alerts, getattr(res, "scored", []))
        self.metrics.stage_latency.labels(self._stages["send"]).observe(time.perf_counter() - t)
        if self._after_send is not None:
            self._after_send(res, time.time())
        self.metrics.gaps.labels(self.stream).inc(res.gaps)
        for g in res.gap_notes:
            log.info("gap: %s", g.describe())
        count_clock_events(self.metrics, self.stream, res.clock_events)
        self.metrics.redelivered.labels(self.stream).inc(res.redelivered)
        t = time.perf_counter()
        for pid, st in res.states.items():
            self.store(pid, st)
        await self._confirm_stored(self.table)
        for e in batch.events:
            self._ack_message(e.message)
        for p, o in batch.read_back:
            self._ack_offset(self.guard.topic, p, o)
        self.metrics.stage_latency.labels(self._stages["store"]).observe(time.perf_counter() - t)

    async def _contiguous(self, msgs: list[InMessage]) -> list[InMessage]:
        """``msgs`` with any offsets the consumer skipped read back in front (see
        :mod:`streaming.continuity`). A hole that cannot be read stops the worker hard:
        going on would lose what is in it, a restart reads it again."""
        async def read() -> list[InMessage]:
            out = await self.guard.fill(msgs)
            self.metrics.read_back.labels(self.stream).inc(len(out) - len(msgs))
            return out

        return await retry_or_stop(read, f"reading skipped offsets of the {self.stream} stream back",
                                   "a restart reads them again")

    def store(self, pid: str, st: Any) -> None:
        """Write one patient's state to the table (its changelog record is then due)."""
        raw = st.to_bytes(self.core.policy)
        self.table[pid.encode()] = raw
        self.cache.put(pid, raw, st)
