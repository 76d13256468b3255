"""The Faust shell's safety helpers, called directly."""

from __future__ import annotations

from streaming.app import partition_of, process_safely
from streaming.pipeline import InMessage
from streaming.schemas import encode_hr

from services.pipelines import build_hr_pipeline, build_policy

T0 = 1_767_225_600_000


def test_partition_of_matches_the_partitioner_faust_produces_with():
    # aiokafka's default partitioner is what Faust's producer (and so the table
    # changelogs with use_partitioner=True) uses; partition_of must agree with it.
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(8))
    keys = [b"p-0001", b"p-0002", b"rec-119", "pätient".encode()] + [f"p-{i}".encode() for i in range(200)]
    assert [partition_of(k, 8) for k in keys] == [DefaultPartitioner()(k, parts, parts) for k in keys]
    assert len({partition_of(k, 8) for k in keys}) == 8


def test_a_batch_that_breaks_the_core_is_retried_message_by_message(monkeypatch):
    hr = build_hr_pipeline(None, build_policy(None), clock_ms=lambda: T0)
    msgs = [InMessage(b"p-1", encode_hr("p-1", "d", i, T0 + 1000 * i, 70, [850]), 0, i)
            for i in range(5)]
    real = hr.policy.on_hr
    calls = {"n": 0}

    def on_hr(state, obs):
        calls["n"] += 1
        if obs.ts_ms == T0 + 2000:
            raise RuntimeError("policy bug")
        return real(state, obs)

    monkeypatch.setattr(hr.policy, "on_hr", on_hr)
    r = process_safely(hr, msgs, {}, "hr")
    assert [(d.reason, d.offset) for d in r.dead] == [("processing_error", 2)]
    assert "RuntimeError: policy bug" in r.dead[0].detail
    assert r.valid == 4 + 0  # the four good messages were applied
    assert r.states["p-1"].pos.last_seq == 4


def test_process_safely_passes_a_healthy_batch_through():
    hr = build_hr_pipeline(None, build_policy(None), clock_ms=lambda: T0)
    msgs = [InMessage(b"p-1", encode_hr("p-1", "d", 0, T0, 70, [850]), 0, 0)]
    r = process_safely(hr, msgs, {}, "hr")
    assert r.valid == 1 and not r.dead


def test_retry_or_stop_retries_then_returns(monkeypatch):
    import asyncio

    import streaming.retry as app_mod

    slept: list[float] = []

    async def no_sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr(app_mod.asyncio, "sleep", no_sleep)
    calls, failures = [], []

    async def step() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("broker away")
        return "done"

    got = asyncio.run(app_mod.retry_or_stop(step, "step", "nothing is lost",
                                            on_failure=lambda: failures.append(1)))
    assert got == "done" and len(calls) == 3 and len(failures) == 2
    assert slept == [0.5, 1.0]


def test_retry_or_stop_stops_the_process_when_the_step_keeps_failing(monkeypatch):
    import asyncio

    import pytest

    import streaming.retry as app_mod

    async def no_sleep(s: float) -> None:
        return None

    def exit_(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(app_mod.asyncio, "sleep", no_sleep)
    monkeypatch.setattr(app_mod.os, "_exit", exit_)

    async def step() -> None:
        raise TimeoutError("no broker")

    with pytest.raises(SystemExit) as e:
        asyncio.run(app_mod.retry_or_stop(step, "step", "a restart replays it", attempts=4))
    assert e.value.code == 70


def test_clock_events_are_counted_by_stream_and_direction_and_logged(caplog):
    from prometheus_client import CollectorRegistry

    from streaming.app import count_clock_events
    from streaming.events import DeviceClockEvent
    from streaming.metrics import WorkerMetrics

    m = WorkerMetrics(CollectorRegistry())
    evs = [DeviceClockEvent("p-1", "d", T0, "restart", "none", 0, 59, T0, 1, T0),
           DeviceClockEvent("p-1", "d", T0, "jump", "backward", -120_000, 60, T0, 61, T0 - 120_000),
           DeviceClockEvent("p-1", "d", T0, "glitch", "forward", 0, 59, T0, 60, T0 + 3_600_000),
           DeviceClockEvent("p-1", "d", T0, "restart", "backward", -5000, 9, T0, 0, T0 - 5000)]
    with caplog.at_level("WARNING"):
        count_clock_events(m, "ecg", evs)
    get = m.registry.get_sample_value
    assert get("cardiowatch_device_restarts_total", {"stream": "ecg"}) == 2
    assert get("cardiowatch_device_clock_jumps_total", {"stream": "ecg", "direction": "backward"}) == 2
    assert get("cardiowatch_device_clock_jumps_total", {"stream": "ecg", "direction": "forward"}) == 1
    assert "patient p-1 device d" in caplog.text and "seq 60 -> 61" in caplog.text
