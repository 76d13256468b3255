"""Put on ``PYTHONPATH`` of a worker process by a test: Faust's consumer loses one ECG
record between its fetch and the agent, as Faust itself did in the crash test (records
fetched while recovery completes are dropped from the agents' queues).

``CARDIOWATCH_TEST_DROP=<partition>:<offset>`` names the record of the ECG topic
(``CARDIOWATCH_TOPIC_ECG``) that is never handed on; the fetcher sees the next offset
after it and counts the skipped one as read, exactly as in the real case. Nothing else
in the worker is touched."""

import os

from faust.transport import consumer as _consumer

_topic = os.environ["CARDIOWATCH_TOPIC_ECG"]
_partition, _offset = (int(x) for x in os.environ["CARDIOWATCH_TEST_DROP"].split(":"))
_dropped = False
_getmany = _consumer.Consumer.getmany


async def _lossy_getmany(self, timeout):  # type: ignore[no-untyped-def]
    global _dropped
    async for tp, message in _getmany(self, timeout):
        if (not _dropped and tp.topic == _topic and tp.partition == _partition
                and message.offset == _offset):
            _dropped = True
            continue
        yield tp, message


_consumer.Consumer.getmany = _lossy_getmany  # type: ignore[method-assign]
