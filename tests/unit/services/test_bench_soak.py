"""The soak bench's figures: RSS read from /proc, growth after warm-up."""

from __future__ import annotations

import os

import pytest

from services.bench_soak import format_table, growth_after_warmup, read_rss_kib


def test_rss_of_this_process_is_read_and_a_gone_pid_gives_none() -> None:
    kib = read_rss_kib(os.getpid())
    assert kib is not None and 10_000 < kib < 50_000_000
    assert read_rss_kib(2**22 + 12345) is None  # above pid_max: no such process


def test_flat_memory_after_warm_up_is_zero_growth_and_a_leak_is_not() -> None:
    t = [10.0 * i for i in range(61)]  # 10 min, every 10 s
    flat = [200.0 if ti >= 100 else 150.0 + ti for ti in t]  # start-up climb inside the warm-up
    g = growth_after_warmup(t, flat)
    assert g["growth_pct"] == 0.0 and g["slope_mib_per_h"] == pytest.approx(0.0, abs=1e-6)
    assert g["n"] == sum(1 for ti in t if ti >= 120)
    leak = [200.0 + 0.1 * ti for ti in t]  # 6 MiB/min
    g = growth_after_warmup(t, leak)
    assert g["slope_mib_per_h"] == pytest.approx(360.0)
    # baseline: median of minutes 2-3 (215 MiB), end: median of the last minute (257 MiB)
    assert g["baseline_mib"] == pytest.approx(215.0) and g["end_mib"] == pytest.approx(257.0)
    assert g["growth_pct"] == pytest.approx(100 * (257 / 215 - 1), abs=0.01)


def test_too_few_samples_give_no_figures_and_bad_arguments_are_named() -> None:
    assert growth_after_warmup([0.0, 10.0], [1.0, 2.0])["growth_pct"] is None
    with pytest.raises(ValueError, match="warmup_frac must be in \\(0, 1\\), got 1.5"):
        growth_after_warmup([0.0], [1.0], 1.5)
    with pytest.raises(ValueError, match="equal lengths, got 2 and 1"):
        growth_after_warmup([0.0, 1.0], [1.0])


def test_the_table_lists_every_sample_and_the_growth() -> None:
    t = [10.0 * i for i in range(10)]
    res = {"warmup_frac": 0.2, "samples": [{"t_s": x, "worker_rss_mib": 300.0, "dispatcher_rss_mib": 90.0,
                                            "open_alerts": 3.0, "worker_lag": 0.0} for x in t],
           "growth": {"worker": growth_after_warmup(t, [300.0] * 10),
                      "dispatcher": growth_after_warmup(t, [90.0] * 10)}}
    text = format_table(res)
    assert len(text.splitlines()) == 1 + 10 + 1 + 2
    assert "dispatcher: after warm-up (first 20 %) 90.0 MiB -> 90.0 MiB at the end: growth 0.0 %" in text
