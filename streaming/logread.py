"""Reading records back from a Kafka log by offset, outside any consumer group.

The dispatcher reads alerts it parked (kept only as topic, partition and offset) back
from the ``alerts`` topic; the worker reads back any offsets its consumer skipped (see
:mod:`streaming.continuity`). Both use a group-less consumer, so the reads never join
a group, trigger a rebalance or move committed offsets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streaming.kafka_security import KafkaSecurity


def _group_offsets(bootstrap: str, group: str, topic: str,
                   security: KafkaSecurity) -> dict[int, int]:
    """The committed offsets of ``group`` on ``topic``'s partitions (none: absent)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **security.kafka_python_kwargs())
    try:
        got = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: m.offset for tp, m in got.items() if tp.topic == topic and m.offset >= 0}


class LogReader:
    """A group-less consumer that reads records of one partition from an offset.

    One reader serves one caller at a time (a lock); it is created lazily, so a worker
    that never needs it opens no connection.
    """

    def __init__(self, bootstrap: str, timeout_s: float = 10.0,
                 security: KafkaSecurity | None = None) -> None:
        self._bootstrap, self._timeout_s = bootstrap, timeout_s
        self._security = security or KafkaSecurity()
        self._c: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def _consumer(self) -> AIOKafkaConsumer:
        if self._c is None:
            c = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None,
                                 enable_auto_commit=False, auto_offset_reset="earliest",
                                 **self._security.aiokafka_kwargs())
            await c.start()
            self._c = c
        return self._c

    async def _fetch_unlocked(self, tp: TopicPartition, offset: int) -> list[Any]:
        c = await self._consumer()
        if c.assignment() != {tp}:
            c.assign([tp])
        c.seek(tp, offset)
        deadline = time.monotonic() + self._timeout_s
        while True:
            recs = (await c.getmany(tp, timeout_ms=500, max_records=500)).get(tp, [])
            if recs:
                return list(recs)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no record at {tp.topic}[{tp.partition}]@{offset} "
                                   f"after {self._timeout_s} s")

    async def fetch(self, tp: TopicPartition, offset: int) -> list[Any]:
        """Records of ``tp`` from ``offset`` on (one fetch's worth, at least one record
        unless the log no longer reaches ``offset``: then the list starts later).

        Raises :class:`TimeoutError` when no record at or after ``offset`` arrives in
        the reader's timeout."""
        async with self._lock:
            return await self._fetch_unlocked(tp, offset)

    async def read_range(self, tp: TopicPartition, first: int, last: int) -> list[Any]:
        """The records of ``tp`` with ``first <= offset <= last``, in offset order.

        Offsets in the range that hold no record (transaction markers, compacted or
        expired records) are simply absent from the result. Raises
        :class:`TimeoutError` if the log cannot be read up to ``last``."""
        out: list[Any] = []
        async with self._lock:
            nxt = first
            while nxt <= last:
                recs = await self._fetch_unlocked(tp, nxt)
                out.extend(r for r in recs if first <= r.offset <= last)
                nxt = max(nxt, recs[-1].offset + 1)
        return out

    async def start_offsets(self, group: str, tps: list[TopicPartition]) -> dict[int, int]:
        """Where consumer group ``group`` starts reading each of ``tps`` (partitions of one
        topic), by partition: its committed offset, or the log's first offset where it has
        none (the worker reads from the earliest offset when nothing is committed)."""
        if not tps:
            return {}
        committed = await asyncio.to_thread(_group_offsets, self._bootstrap, group, tps[0].topic,
                                              self._security)
        async with self._lock:
            first = await (await self._consumer()).beginning_offsets(tps)
        return {tp.partition: committed.get(tp.partition, first[tp]) for tp in tps}

    async def stop(self) -> None:
        if self._c is not None:
            await self._c.stop()
            self._c = None
