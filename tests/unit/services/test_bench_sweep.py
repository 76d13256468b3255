"""bench stream's sweep logic, table and plot, its usage without arguments, and the
process and broker readings every bench run records (no broker, no worker started)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services import bench_stream
from services.bench_proc import cpu_seconds, peak_rss_mib, scratch_dir, topic_bytes


def _run(n: int, sustained: bool) -> dict:
    return {"patients": n, "sustained": sustained, "consumer_lag_messages": {"slope_per_s": 0.1 if sustained else 9.0},
            "event_to_score_latency_s": {"p50": 1.0 + n / 1000, "p99": 2.0 + n / 1000, "n": 10},
            "beats_scored_per_s": n * 1.2, "cpu_cores": {"worker": 0.5, "broker": 0.2, "load_generator": None},
            "worker_peak_rss_mib": 900.0, "streaming_to_model_ratio": 0.02, "streaming_to_core_ratio": 0.3,
            "topic_bytes_per_patient_s": {"cardiowatch.ecg": 1300.0, "cardiowatch.scores": 400.0},
            "worker_stage_mean_ms_per_batch": {"ecg_core": 200.0, "send": 40.0}}


def test_sweep_stops_at_the_first_count_not_sustained_and_reports_the_largest_sustained() -> None:
    asked: list[int] = []

    def run(n: int) -> dict:
        asked.append(n)
        return _run(n, n <= 200)

    res = bench_stream.sweep([100, 200, 300, 400], run)
    assert asked == [100, 200, 300]
    assert res["largest_sustained_patients"] == 200
    assert [r["patients"] for r in res["runs"]] == [100, 200, 300]
    assert bench_stream.sweep([100, 200, 300, 400], run, keep_going=True)["runs"][-1]["patients"] == 400


def test_sweep_with_nothing_sustained_says_so() -> None:
    res = bench_stream.sweep([500, 1000], lambda n: _run(n, False))
    assert res["largest_sustained_patients"] is None
    table = bench_stream.format_sweep(res)
    assert "largest sustained: none of 500,1000" in table


def test_sweep_table_has_one_row_per_run_with_its_figures() -> None:
    res = bench_stream.sweep([100, 200, 300], lambda n: _run(n, n < 300))
    lines = bench_stream.format_sweep(res).splitlines()
    assert lines[0].split()[0] == "patients"
    rows = [ln.split() for ln in lines[1:4]]
    assert [r[0] for r in rows] == ["100", "200", "300"]
    assert [r[1] for r in rows] == ["yes", "yes", "no"]
    assert rows[2][2] == "+9.0" and rows[0][3] == "1.10" and rows[0][4] == "2.10"
    assert "-" in rows[0]  # a process whose CPU could not be read
    assert "largest sustained: 200 patients" in lines[4]
    assert "cardiowatch.ecg 1300" in lines[5] and "ecg_core 200.0" in lines[6]


def test_sweep_plot_is_written(tmp_path: Path) -> None:
    res = bench_stream.sweep([100, 200], lambda n: _run(n, True))
    bench_stream.plot_sweep(tmp_path / "p" / "sweep.png", res)
    assert (tmp_path / "p" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text", ["", "100,100", "300,200", "0,100", "100,abc"])
def test_sweep_counts_must_be_positive_and_increasing(text: str) -> None:
    with pytest.raises(ValueError, match="--sweep"):
        bench_stream.parse_counts(text)


def test_sweep_counts_parse() -> None:
    assert bench_stream.parse_counts("500, 1000,2000") == [500, 1000, 2000]


def test_bench_stream_without_arguments_prints_usage_and_starts_nothing() -> None:
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "services.cli", "bench", "stream"], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[3])
    assert p.returncode == 2
    assert p.stdout.startswith("usage: cardiowatch bench stream")
    assert "--patients N" in p.stderr and "--sweep" in p.stderr
    assert "[bench]" not in p.stderr  # no run began
    assert time.monotonic() - t < 120


def test_cpu_seconds_and_peak_rss_of_a_live_and_a_gone_process() -> None:
    before = cpu_seconds(os.getpid())
    x = 0
    t = time.process_time()
    while time.process_time() - t < 0.2:
        x += 1
    after = cpu_seconds(os.getpid())
    assert before is not None and after is not None and after - before >= 0.1
    rss = peak_rss_mib(os.getpid())
    assert rss is not None and rss > 10
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert cpu_seconds(p.pid) is None and peak_rss_mib(p.pid) is None


def test_topic_bytes_sums_segments_per_topic(tmp_path: Path) -> None:
    for name, sizes in {"cardiowatch.ecg-0": [100, 50], "cardiowatch.ecg-1": [25],
                        "app-ecg-state-changelog-3": [7], "__cluster_metadata-0": [9]}.items():
        d = tmp_path / name
        d.mkdir()
        for i, n in enumerate(sizes):
            (d / f"{i:020d}.log").write_bytes(b"x" * n)
        (d / "00000000000000000000.index").write_bytes(b"i" * 1000)  # not a segment
    (tmp_path / "meta.properties").write_text("x")
    (tmp_path / "not-a-partition").mkdir()
    assert topic_bytes(tmp_path) == {"cardiowatch.ecg": 175, "app-ecg-state-changelog": 7, "__cluster_metadata": 9}
    assert topic_bytes(tmp_path / "missing") == {}


def test_scratch_dir_is_removed_however_the_run_ends(tmp_path: Path) -> None:
    with scratch_dir("cw-test-") as d:
        (d / "f").write_text("x")
        seen = d
    assert not seen.exists()
    with pytest.raises(RuntimeError):
        with scratch_dir("cw-test-") as d:
            seen = d
            raise RuntimeError("run failed")
    assert not seen.exists()
    with scratch_dir("cw-test-", keep=True) as d:
        seen = d
    assert seen.is_dir()
    seen.rmdir()
