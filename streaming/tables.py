"""Per-patient state tables whose changelog writes can be awaited, and the partition of a key."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

__all__ = ["CHANGELOG_TIMEOUT_S", "ConfirmedTable", "partition_of"]

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


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partition for a key (murmur2, as the Java, aiokafka and
    kafka-python producers compute it)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions
