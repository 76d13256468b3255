"""The batch cycle's order: batch k+1's core overlaps batch k's delivery, and nothing else moves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streaming.batch import BatchCycle
from streaming.metrics import WorkerMetrics
from streaming.statecache import DecodedCache


@dataclass
class _State:
    n: int

    def to_bytes(self, policy: Any) -> bytes:
        return str(self.n).encode()


@dataclass
class _Result:
    states: dict[str, _State]
    dead: list[Any] = field(default_factory=list)
    alerts: list[Any] = field(default_factory=list)
    scored: list[Any] = field(default_factory=list)
    gaps: int = 0
    gap_notes: list[Any] = field(default_factory=list)
    redelivered: int = 0
    clock_events: list[Any] = field(default_factory=list)


class _Core:
    """Counts each patient's messages on top of the state it is given."""

    policy = None

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def process(self, msgs: list[Any], states: Any) -> _Result:
        out: dict[str, _State] = {}
        for m in msgs:
            pid = m.key.decode()
            base = out.get(pid) or states.get(pid)
            out[pid] = _State((base.n if base else 0) + 1)
        self.log.append(f"core {[m.offset for m in msgs]} -> {sorted((k, v.n) for k, v in out.items())}")
        return _Result(out)


class _Guard:
    topic = "t"

    async def fill(self, msgs: list[Any]) -> list[Any]:
        return msgs

    def applied(self, msgs: list[Any]) -> list[tuple[int, int]]:
        return []


class _Message:
    def __init__(self, log: list[str], offset: int) -> None:
        self.key, self.value, self.partition, self.offset = b"p-1", b"", 0, offset
        self.refcount, self.log = 1, log

    def incref(self) -> None:
        self.refcount += 1


@dataclass
class _Event:
    message: _Message


class _Table(dict):  # type: ignore[type-arg]
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append(f"store {key.decode()}={value.decode()}")
        super().__setitem__(key, value)


def _cycle(log: list[str], gates: list[asyncio.Event]) -> BatchCycle:
    async def send_all(dead: Any, alerts: Any, scores: Any) -> None:
        gate = gates.pop(0)
        log.append("send")
        await gate.wait()
        log.append("sent")

    async def confirm(table: Any) -> None:
        log.append("confirmed")

    def ack(message: _Message) -> None:
        message.refcount -= 1
        log.append(f"ack {message.offset} (refs left {message.refcount})")

    table = _Table(log)
    cache: DecodedCache[_State] = DecodedCache(lambda b: _State(int(b)))
    return BatchCycle("ecg", _Core(log), table, cache, _Guard(), WorkerMetrics(CollectorRegistry()),  # type: ignore[arg-type]
                      send_all, confirm, ack, lambda topic, p, o: None)


def test_next_core_runs_while_the_batch_before_is_delivered_and_outputs_state_offsets_keep_their_order():
    async def main() -> list[str]:
        log: list[str] = []
        gates = [asyncio.Event(), asyncio.Event()]
        c = _cycle(log, list(gates))
        b1 = [_Event(_Message(log, o)) for o in (0, 1)]
        b2 = [_Event(_Message(log, o)) for o in (2,)]
        await c.run(b1)  # returns with batch 1 in flight
        assert all(e.message.refcount == 2 for e in b1)  # Faust's own ack cannot commit them
        second = asyncio.ensure_future(c.run(b2))
        await asyncio.sleep(0.01)
        assert log[-1] == "core [2] -> [('p-1', 3)]"  # batch 2 sees batch 1's state (2)...
        assert "sent" not in log  # ...before batch 1's outputs are delivered
        gates[0].set()
        await second
        gates[1].set()
        async with c.lock:
            await c.drain()
        return log

    log = asyncio.run(main())
    assert log == ["core [0, 1] -> [('p-1', 2)]", "send", "core [2] -> [('p-1', 3)]", "sent",
                   "store p-1=2", "confirmed", "ack 0 (refs left 1)", "ack 1 (refs left 1)",
                   "send", "sent", "store p-1=3", "confirmed", "ack 2 (refs left 1)"]


def test_a_failure_finishing_a_batch_reaches_the_next_batch_and_the_drain():
    async def main() -> None:
        log: list[str] = []
        c = _cycle(log, [])  # no gate: send_all raises IndexError, as a bug would
        await c.run([_Event(_Message(log, 0))])
        with pytest.raises(IndexError):
            async with c.lock:
                await c.drain()
        async with c.lock:
            await c.drain()  # the failed batch is not in flight any more

    asyncio.run(main())
