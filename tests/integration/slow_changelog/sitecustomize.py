"""Put on ``PYTHONPATH`` of a worker process by the crash test: Faust's send buffer (the
path every table write takes to its changelog topic) sends each record 0.15 s late.

That is how a busy worker looks to Faust's pre-commit flush, which gives up after 0.1 s
without progress and commits the offsets anyway; a worker that trusted it would commit
offsets ahead of the state it had written, and a SIGKILL then would lose the state in
between. Nothing else in the worker is touched."""

import asyncio

from faust.transport import producer as _producer

_send_pending = _producer.ProducerBuffer._send_pending


async def _late_send_pending(self, fut):  # type: ignore[no-untyped-def]
    await asyncio.sleep(0.15)
    await _send_pending(self, fut)


_producer.ProducerBuffer._send_pending = _late_send_pending  # type: ignore[method-assign]
