"""Reading records back by offset, and where a consumer group starts, on the real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.structs import OffsetAndMetadata

from streaming.logread import LogReader

pytestmark = pytest.mark.integration


def test_read_range_and_start_offsets(kafka_broker, make_topics):
    topic = make_topics(partitions=2).ecg
    p = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    for i in range(5):
        p.send(topic, value=f"a{i}".encode(), partition=0)
    p.send(topic, value=b"b0", partition=1)
    p.flush(30)
    p.close()
    c = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id="g-logread",
                      enable_auto_commit=False)
    c.commit({KTopicPartition(topic, 0): OffsetAndMetadata(3, "", -1)})
    c.close()
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def go():
        r = LogReader(kafka_broker.bootstrap)
        try:
            return (await r.start_offsets("g-logread", [tp0, tp1]),
                    await r.start_offsets("g-nobody", [tp0]),
                    await r.read_range(tp0, 1, 3),
                    await r.read_range(tp1, 0, 0))
        finally:
            await r.stop()

    committed, none, middle, other = asyncio.run(go())
    # partition 0: its committed offset; partition 1 (nothing committed): the log's first
    assert committed == {0: 3, 1: 0} and none == {0: 0}
    assert [(x.offset, x.value) for x in middle] == [(1, b"a1"), (2, b"a2"), (3, b"a3")]
    assert [x.value for x in other] == [b"b0"]
