"""The ventricular_fibrillation condition (streaming/conditions.py) through the alert policy:
raise and clear timing, runs broken by low scores and gaps, suppression while the ECG is unusable."""

from __future__ import annotations

import pytest

from streaming.conditions import VentricularFibrillation, VentricularFibrillationSettings
from streaming.events import AlertEvent, QualityObservation, VFObservation
from streaming.policy import AlertPolicy, PolicyConfig, PolicyConfigError, PatientPolicyState

T0 = 1_700_000_000_000
PID = "p1"
THR = 0.6


class Feed:
    """One patient's VF windows (4 s, one a second) and chunk qualities into the policy."""

    def __init__(self, **settings: float) -> None:
        cfg = PolicyConfig(conditions={"ventricular_fibrillation": VentricularFibrillationSettings(**settings)})
        self.policy = AlertPolicy(cfg)
        self.st: PatientPolicyState = self.policy.initial_state(PID)
        self.events: list[AlertEvent] = []

    def window(self, end_ms: int, p: float, quality: float | None = 0.95) -> list[AlertEvent]:
        ev, self.st = self.policy.on_observation(
            self.st, VFObservation(PID, "d1", end_ms, 4000, p, THR, quality, "m@1"))
        self.events += ev
        return ev

    def windows(self, start_s: int, stop_s: int, p: float) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        for s in range(start_s, stop_s):
            out += self.window(T0 + s * 1000, p)
        return out

    def chunk(self, s: int, lead_off: bool = False, quality: float = 0.95) -> None:
        ev, self.st = self.policy.on_quality(
            self.st, QualityObservation(PID, "d1", T0 + s * 1000, 1000, quality, lead_off, False))
        self.events += ev


def _vf(events: list[AlertEvent]) -> list[tuple[str, int, int]]:
    return [(e.action, e.detected_ts_ms - T0, e.onset_ts_ms - T0) for e in events
            if e.condition == "ventricular_fibrillation"]


def test_raises_high_on_the_kth_consecutive_window_with_the_run_start_as_onset() -> None:
    f = Feed()
    f.windows(4, 20, 0.1)
    assert f.windows(20, 23, 0.9) == []  # 3 of 4
    ev = f.window(T0 + 23_000, 0.9)
    assert _vf(ev) == [("raised", 23_000, 16_000)]  # onset: start of the first window (20 s - 4 s)
    a = ev[0]
    assert (a.priority, a.category, a.score, a.threshold, a.model_version) == ("high", "physiological", 0.9, THR, "m@1")
    assert a.details["vf_windows"] == 4 and "4 consecutive ECG windows" in a.rule
    assert f.windows(24, 60, 0.95) == []  # one open alert while it lasts


def test_a_low_window_or_a_gap_breaks_the_run() -> None:
    f = Feed()
    f.windows(10, 13, 0.9)
    f.window(T0 + 13_000, 0.2)  # breaks it
    assert f.windows(14, 17, 0.9) == []
    f.window(T0 + 20_000, 0.9)  # 3 s after the last window: a gap, not the next window
    assert _vf(f.events) == []
    f.windows(21, 24, 0.9)
    assert _vf(f.events) == [("raised", 23_000, 16_000)]


def test_the_window_count_is_a_setting() -> None:
    f = Feed(consecutive_windows=2)
    assert _vf(f.windows(10, 12, 0.9)) == [("raised", 11_000, 6_000)]
    with pytest.raises(PolicyConfigError, match="ventricular_fibrillation.consecutive_windows"):
        VentricularFibrillationSettings(consecutive_windows=0)
    with pytest.raises(PolicyConfigError, match="ventricular_fibrillation.clear_s"):
        VentricularFibrillationSettings(clear_s=-1.0)


def test_holds_through_short_dips_and_clears_after_clear_s_without_a_vf_window() -> None:
    f = Feed(clear_s=10.0)
    f.windows(10, 30, 0.9)  # raised at 13 s, last VF window ends at 29 s
    assert f.windows(30, 35, 0.1) == []  # a dip inside clear_s holds it open
    f.windows(35, 37, 0.9)  # VF again, last at 36 s
    assert f.windows(37, 46, 0.1) == []  # 9 s without VF: still open
    ev = f.window(T0 + 46_000, 0.1)
    assert _vf(ev) == [("cleared", 46_000, 6_000)]
    assert "for 10 s" in ev[0].rule
    # a new episode is a new alert (HIGH ignores the cooldown)
    assert _vf(f.windows(50, 54, 0.9)) == [("raised", 53_000, 46_001)]


def test_suppressed_while_the_lead_is_off_and_for_low_quality_windows() -> None:
    f = Feed()
    for s in range(10, 20):
        f.chunk(s, lead_off=True)
        f.window(T0 + (s + 1) * 1000, 0.95)
    assert _vf(f.events) == []
    assert f.st.conditions["ventricular_fibrillation"] == VentricularFibrillation.state_type()
    for s in range(20, 30):
        f.window(T0 + (s + 1) * 1000, 0.95, quality=0.2)  # below signal.min_quality
    assert _vf(f.events) == []
    ev = []
    for s in range(30, 34):  # good signal again: a fresh run of 4 is needed
        f.chunk(s)
        ev += f.window(T0 + (s + 1) * 1000, 0.95)
    assert _vf(ev) == [("raised", 34_000, 27_000)]


def test_state_round_trips() -> None:
    f = Feed()
    f.windows(10, 12, 0.9)
    assert f.policy.state_from_json(f.policy.state_to_json(f.st)) == f.st


def test_windows_reaching_into_an_unusable_stretch_do_not_count() -> None:
    f = Feed()
    for s in range(10, 20):
        f.chunk(s, lead_off=True)
    for s in range(20, 30):
        f.chunk(s)
        f.window(T0 + (s + 1) * 1000, 0.95)
    # windows ending at 21..23 s start inside the lead-off (it ended at 20 s); the run
    # starts with the window [20 s, 24 s)
    assert _vf(f.events) == [("raised", 27_000, 20_000)]
