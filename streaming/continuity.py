"""Every offset of a source partition reaches the stream core, in order, or is read back.

Faust can lose records between its fetcher and an agent without noticing. One case,
reproduced by the worker crash test (faust-streaming 0.15.3): when recovery completes,
Faust resumes the stream partitions, seeks them to the committed offsets, and only then
resumes its flow control, which empties the agents' input queues; records fetched in
between are dropped although their offsets count as read, and Faust's commit
bookkeeping then lets the next commit step over a single missing offset. The worker
restarted with its state at offset 68 of a partition and was next handed offset 70;
offset 69 (a second of one patient's ECG, with its beats) was gone for good.

The worker therefore checks, per source partition, that the offsets it is handed
follow on from the last one it applied. A hole is read back from the log with a
group-less consumer (:class:`streaming.logread.LogReader`) and put in front of the
batch; the core skips anything it had already applied (per-patient offsets), so reading
back too much is harmless and reading back too little cannot happen.

After a restart or a rebalance a partition's position is the lower of two: the consumer
group's committed offset (else the log's first offset), and the offset after the highest
``last_offset`` among the restored patient states of that partition. Starting from the
committed offset matters even when the states are further on: records Faust drops there
are never acked, and its commits stop at the first offset never acked (they would stay
frozen until the next rebalance); and a batch killed while its states were half stored
has patients behind the highest offset. Reading back what was applied already costs a
fetch; the core skips it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiokafka import TopicPartition

from streaming.pipeline import InMessage

log = logging.getLogger(__name__)


def find_holes(expected: dict[int, int], msgs: Sequence[InMessage]) -> list[tuple[int, int, int]]:
    """Offsets missing in front of or between ``msgs``, per partition.

    ``expected`` maps a partition to the next offset it should deliver (partitions not
    in it are not checked). Returns ``(partition, first, last)`` ranges, inclusive.
    Offsets below the expected one are redeliveries, not holes."""
    nxt = dict(expected)
    holes: list[tuple[int, int, int]] = []
    for m in msgs:
        e = nxt.get(m.partition)
        if e is not None and m.offset > e:
            holes.append((m.partition, e, m.offset - 1))
        if e is None or m.offset + 1 > e:
            nxt[m.partition] = m.offset + 1
    return holes


def advance(expected: dict[int, int], msgs: Iterable[InMessage]) -> None:
    """Record that ``msgs`` were applied: each partition's next offset moves past them."""
    for m in msgs:
        if m.offset + 1 > expected.get(m.partition, -1):
            expected[m.partition] = m.offset + 1


class ContinuityGuard:
    """Keeps one source topic's offsets contiguous for a worker.

    Parameters
    ----------
    topic : str
        The source topic (its partitions are the ones checked).
    reader : LogReader-like
        ``await reader.read_range(tp, first, last)`` returns the records of a range.
    resume_point : callable
        ``resume_point(partition)`` gives the next offset to apply according to the
        restored states, or None when no state says.
    generation : callable
        The consumer group generation; when it changes (a rebalance) every partition's
        position is taken again, since another worker may have moved it.
    group : str or None
        The consumer group: ``await reader.start_offsets(group, tps)`` gives where it
        starts each partition; the position is the lower of that and the states'. Without
        a group (and without states) the first record seen sets the position.
    """

    def __init__(self, topic: str, reader: Any, resume_point: Callable[[int], int | None],
                 generation: Callable[[], int], group: str | None = None) -> None:
        self.topic, self.reader, self.group = topic, reader, group
        self.resume_point, self.generation = resume_point, generation
        self.expected: dict[int, int] = {}
        self._gen: int | None = None
        self._read_back: list[tuple[int, int]] = []

    async def fill(self, msgs: list[InMessage]) -> list[InMessage]:
        """``msgs`` with every hole in front of or between them read back from the log,
        sorted by (partition, offset). Raises what the reader raises."""
        gen = self.generation()
        if gen != self._gen:
            self.expected.clear()
            self._gen = gen
        new = sorted({m.partition for m in msgs} - self.expected.keys())
        if new:
            starts: dict[int, int] = {}
            if self.group is not None:
                starts = await self.reader.start_offsets(
                    self.group, [TopicPartition(self.topic, p) for p in new])
            for p in new:
                known = [x for x in (self.resume_point(p), starts.get(p)) if x is not None]
                if known:
                    self.expected[p] = min(known)
        holes = find_holes(self.expected, msgs)
        if not holes:
            return msgs
        extra: list[InMessage] = []
        for p, first, last in holes:
            recs = await self.reader.read_range(TopicPartition(self.topic, p), first, last)
            extra += [InMessage(r.key, r.value, p, r.offset) for r in recs]
            # offsets without a record (transaction markers, compaction) are no loss
            log.log(logging.WARNING if recs else logging.DEBUG,
                    "offsets %d..%d of %s[%d] never reached the agent; read %d record(s) "
                    "back from the log", first, last, self.topic, p, len(recs))
        self._read_back += [(m.partition, m.offset) for m in extra]
        return sorted(extra + msgs, key=lambda m: (m.partition, m.offset))

    def applied(self, msgs: Iterable[InMessage]) -> list[tuple[int, int]]:
        """Call once ``msgs`` (as returned by :meth:`fill`) are applied and stored.

        Returns the ``(partition, offset)`` of the records read back since the last
        call: the consumer never handed them out, so it will not mark them done by
        itself, and its commits would stop at them."""
        advance(self.expected, msgs)
        out, self._read_back = self._read_back, []
        return out
