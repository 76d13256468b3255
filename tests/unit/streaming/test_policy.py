"""Unit tests of the alert policy (streaming/policy.py): pure, event time passed in."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from streaming.conditions import (
    AnomalousBeats,
    AnomalousBeatsState,
    AtrialFibrillationSettings,
    FrequentEctopySettings,
    Pause,
)
from streaming.events import AlertEvent, HRObservation, QualityObservation, ScoredBeat
from streaming.policy import (
    AlertPolicy,
    PatientLimits,
    PatientPolicyState,
    PolicyConfig,
    PolicyConfigError,
    load_policy_config,
)

REPO = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000_000  # event-time origin, epoch ms
PID = "p1"


class Sim:
    """Feeds one patient's events through a policy, keeping the state and all alerts."""

    def __init__(self, config: PolicyConfig | None = None, patient_id: str = PID) -> None:
        self.policy = AlertPolicy(config or PolicyConfig())
        self.pid = patient_id
        self.state = self.policy.initial_state(patient_id)
        self.events: list[AlertEvent] = []
        self.t = T0  # time of the last beat
        self.n = 0

    def _take(self, res: tuple[list[AlertEvent], PatientPolicyState]) -> list[AlertEvent]:
        evs, self.state = res
        self.events.extend(evs)
        return evs

    def beat(self, rr_ms: float = 800.0, flagged: bool = False, score: float | None = None,
             quality: float = 0.95, beat_class: str = "?", p_ventricular: float | None = None,
             p_run: float | None = None) -> list[AlertEvent]:
        self.t += int(rr_ms)
        self.n += 1
        b = ScoredBeat(beat_id=f"{self.pid}:{self.n}", patient_id=self.pid, device_id="d1",
                       r_ts_ms=self.t, rr_ms=rr_ms if self.n > 1 else None,
                       score=score if score is not None else (0.9 if flagged else 0.05),
                       threshold=0.31, flagged=flagged, signal_quality=quality,
                       model_version="ecg-lstm-ae/1", beat_class=beat_class,
                       p_ventricular=p_ventricular, p_run=p_run)
        return self._take(self.policy.on_beats(self.state, [b]))

    def beats(self, count: int, **kw: object) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        for _ in range(count):
            out += self.beat(**kw)  # type: ignore[arg-type]
        return out

    def hr(self, ts_ms: int, hr_bpm: float, rr_ms: tuple[float, ...] = (),
           quality: float | None = 0.9, hr_score: float | None = None,
           hr_threshold: float | None = None) -> list[AlertEvent]:
        obs = HRObservation(patient_id=self.pid, device_id="d1", ts_ms=ts_ms, hr_bpm=hr_bpm,
                            rr_ms=rr_ms, quality=quality, hr_score=hr_score,
                            hr_threshold=hr_threshold)
        return self._take(self.policy.on_hr(self.state, obs))

    def quality(self, ts_ms: int, duration_ms: int = 1000, *, lead_off: bool = False,
                noisy: bool = False, quality: float = 0.9) -> list[AlertEvent]:
        obs = QualityObservation(patient_id=self.pid, device_id="d1", ts_ms=ts_ms,
                                 duration_ms=duration_ms, quality=quality, lead_off=lead_off,
                                 noisy=noisy)
        return self._take(self.policy.on_quality(self.state, obs))

    def tick(self, now_ms: int, event_ts_ms: int | None = None) -> list[AlertEvent]:
        return self._take(self.policy.on_tick(self.state, now_ms, event_ts_ms=event_ts_ms))


def conds(evs: list[AlertEvent], action: str | None = None) -> list[str]:
    return [e.condition for e in evs if action is None or e.action == action]


# ---------------------------------------------------------------- persistence (k of n)
def test_k_minus_1_flagged_beats_raise_nothing_and_k_raise_low() -> None:
    s = Sim()
    s.beats(10)
    assert s.beat(flagged=True) == []
    s.beats(2)
    assert s.beat(flagged=True) == []  # 2 of the last 8
    s.beat()
    evs = s.beat(flagged=True)  # 3 of the last 8
    assert [(e.condition, e.action, e.priority) for e in evs] == [
        ("anomalous_beats", "raised", "low")]
    e = evs[0]
    assert e.category == "physiological" and e.revision == 1
    assert e.onset_ts_ms == T0 + 11 * 800  # the first flagged beat of the window
    assert e.detected_ts_ms == s.t
    assert e.rule == "3 of 8 beats above threshold 0.31"
    assert e.score == 0.9 and e.threshold == 0.31 and e.model_version == "ecg-lstm-ae/1"
    assert e.alert_id == f"{PID}:anomalous_beats:{e.onset_ts_ms}"
    assert e.strip is None and e.produced_wall_ms is None


def test_flagged_beats_spread_beyond_n_never_raise() -> None:
    s = Sim()
    for _ in range(20):
        s.beats(4)
        s.beat(flagged=True)  # 1 flagged in every 5 beats: at most 2 of any 8
    assert "anomalous_beats" not in conds(s.events)  # (15/min is frequent ectopy though)


# ---------------------------------------------------------------- hysteresis + updates
def test_clears_only_after_condition_absent_for_clear_after_s() -> None:
    s = Sim()
    s.beats(3, flagged=True)
    assert conds(s.events, "raised") == ["anomalous_beats"]
    # k-of-8 stays true for 5 more clean beats; then it must stay absent for 30 s
    last_present = None
    for _ in range(100):
        before = s.t
        evs = s.beat()
        if evs:
            break
        if sum(f for _, f in _recent_flags(s)) >= 3:
            last_present = s.t
        assert s.t - (last_present or before) < 30_000
    assert [(e.action, e.revision) for e in evs] == [("cleared", 2)]
    assert last_present is not None and s.t - last_present >= 30_000
    assert s.t - last_present < 30_000 + 800
    assert evs[0].alert_id == s.events[0].alert_id


def _recent_flags(s: Sim) -> list[list[int]]:
    st = s.state.conditions[AnomalousBeats.name]
    assert isinstance(st, AnomalousBeatsState)
    return st.recent_flags


def test_one_open_alert_per_condition_updates_not_repeats() -> None:
    s = Sim()
    # frequent ectopy: one flagged beat in every 5 -> 15/min, kept up for 2 minutes
    for _ in range(30):
        s.beats(4)
        s.beat(flagged=True)
    raised = [e for e in s.events if e.action == "raised"]
    assert conds(raised) == ["frequent_ectopy"]
    assert [e for e in s.events if e.action == "updated"] == []  # same rate: no updates
    # the rate doubles (>= 1.5x): one update, then no more within update_min_interval_s
    for _ in range(30):
        s.beat()
        s.beat(flagged=True)
    ups = [e for e in s.events if e.action == "updated"]
    assert len(ups) == 1 and ups[0].revision == 2 and ups[0].priority == "medium"
    assert ups[0].alert_id == raised[0].alert_id
    assert (ups[0].details["estimated_rate_per_min"]
            >= 1.5 * raised[0].details["estimated_rate_per_min"])


def test_priority_rise_updates_at_once() -> None:
    s = Sim()
    for i in range(31):
        s.hr(T0 + i * 1000, 130.0)
    assert [(e.condition, e.action, e.priority) for e in s.events] == [
        ("tachycardia", "raised", "medium")]
    evs = s.hr(T0 + 32_000, 190.0)  # 2 s later, well within update_min_interval_s
    assert [(e.action, e.priority, e.revision) for e in evs] == [("updated", "high", 2)]
    assert evs[0].alert_id == s.events[0].alert_id
    assert evs[0].onset_ts_ms == T0
    assert s.hr(T0 + 33_000, 192.0) == []  # no update per observation


# ---------------------------------------------------------------- cooldown
def _raise_and_clear_anomalous(s: Sim) -> None:
    s.beats(3, flagged=True)
    while not [e for e in s.events if e.action == "cleared"]:
        s.beat()


def test_cooldown_blocks_reraise_then_new_episode_has_new_id() -> None:
    s = Sim(PolicyConfig(conditions={
        "frequent_ectopy": FrequentEctopySettings(per_min=20, clear_per_min=10)}))
    _raise_and_clear_anomalous(s)
    cleared_at = s.events[-1].detected_ts_ms
    assert s.beats(3, flagged=True) == []  # within cooldown_s = 60
    s.beats(8)  # flush the k-of-n window
    while s.t - cleared_at < 60_000:
        s.beat()
    evs = s.beats(3, flagged=True)
    assert [(e.condition, e.action) for e in evs] == [("anomalous_beats", "raised")]
    assert evs[0].alert_id != s.events[0].alert_id


def test_high_priority_ignores_cooldown() -> None:
    s = Sim()
    s.beats(3)
    assert conds(s.beat(rr_ms=4500)) == ["pause"]
    while "pause" in s.state.open_alerts:
        s.beat()
    evs = s.beat(rr_ms=5000)  # seconds after the clear
    assert [(e.condition, e.action, e.priority) for e in evs] == [("pause", "raised", "high")]


# ---------------------------------------------------------------- suppression
def test_lead_off_suppresses_ecg_alerts_and_raises_technical_instead() -> None:
    s = Sim()
    s.beats(5)
    t = s.t
    out: list[AlertEvent] = []
    for i in range(5):  # 5 s of lead off, flagged fast "beats" (artefact) inside it
        out += s.quality(t + i * 1000, lead_off=True, quality=0.0)
        out += s.beats(2, rr_ms=500, flagged=True, quality=0.9)
        if i == 1:
            assert out == []  # 2 s of lead off: not yet
    assert [(e.condition, e.category, e.priority, e.action) for e in out] == [
        ("lead_off", "technical", "medium", "raised")]
    assert out[0].onset_ts_ms == t
    # lead back on: technical alert clears after technical_clear_s of good signal
    t2 = t + 5000
    evs: list[AlertEvent] = []
    for i in range(6):
        evs += s.quality(t2 + i * 1000)
    assert [(e.condition, e.action) for e in evs] == [("lead_off", "cleared")]


def test_unusable_signal_resets_pending_persistence() -> None:
    s = Sim()
    s.beats(5)
    s.beats(2, flagged=True)
    s.quality(s.t + 1, noisy=True, quality=0.2)  # one noisy chunk
    s.t += 1001
    s.quality(s.t + 1)  # usable again
    assert s.beats(1, flagged=True) == []  # would be 3 of 8 without the reset
    ref = Sim()
    ref.beats(5)
    ref.beats(2, flagged=True)
    assert conds(ref.beats(1, flagged=True)) == ["anomalous_beats"]


def test_noisy_signal_technical_alert_after_10_s() -> None:
    s = Sim()
    out: list[AlertEvent] = []
    for i in range(9):
        out += s.quality(T0 + i * 1000, noisy=True, quality=0.3)
    assert out == []
    out += s.quality(T0 + 9000, noisy=True, quality=0.3)  # chunk ends at 10 s
    assert [(e.condition, e.priority, e.category) for e in out] == [
        ("signal_noisy", "low", "technical")]


# ---------------------------------------------------------------- clinician limits
def test_hard_limits_raise_high_even_with_low_model_scores() -> None:
    s = Sim()
    s.beats(5, score=0.01)  # the model sees nothing
    evs = s.hr(s.t, 190.0, hr_score=0.01, hr_threshold=0.5)
    assert [(e.condition, e.priority, e.action) for e in evs] == [
        ("tachycardia", "high", "raised")]
    assert evs[0].details["hr_bpm"] == 190.0 and evs[0].details["hard_limit_bpm"] == 180.0
    s2 = Sim(patient_id="p2")
    evs = s2.hr(T0, 25.0)
    assert [(e.condition, e.priority) for e in evs] == [("bradycardia", "high")]


def test_per_patient_limits_override_defaults() -> None:
    cfg = PolicyConfig(patient_limits={"p1": PatientLimits(hr_high_bpm=150, tachy_bpm=100)})
    s1, s2 = Sim(cfg, "p1"), Sim(cfg, "p2")
    assert [(e.condition, e.priority) for e in s1.hr(T0, 160.0)] == [("tachycardia", "high")]
    assert s2.hr(T0, 160.0) == []  # default hard limit 180: only sustained would alert
    s3 = Sim(cfg, "p1")
    out = []
    for i in range(31):
        out += s3.hr(T0 + i * 1000, 110.0)  # above p1's 100, below the default 120
    assert [(e.condition, e.priority) for e in out] == [("tachycardia", "medium")]


# ---------------------------------------------------------------- pause
def test_pause_from_rr_at_4_s_but_not_3_9_s() -> None:
    s = Sim()
    s.beats(5)
    assert s.beat(rr_ms=3900) == []
    s.beats(5)
    evs = s.beat(rr_ms=4000)
    assert [(e.condition, e.priority) for e in evs] == [("pause", "high")]
    assert evs[0].onset_ts_ms == s.t - 4000 and evs[0].detected_ts_ms == s.t
    assert evs[0].details["pause_s"] == 4.0


def test_pause_from_tick_at_4_s_but_not_3_9_s() -> None:
    s = Sim()
    s.quality(T0, duration_ms=5000)
    s.beats(5)
    last = s.t
    assert s.tick(now_ms=10, event_ts_ms=last + 3900) == []
    evs = s.tick(now_ms=20, event_ts_ms=last + 4000)
    assert [(e.condition, e.priority, e.onset_ts_ms) for e in evs] == [("pause", "high", last)]
    # the late beat that ends the pause belongs to the same episode
    assert [e.action for e in s.beat(rr_ms=4200)] == []


def test_no_pause_from_tick_while_lead_off() -> None:
    s = Sim()
    s.beats(5)
    s.quality(s.t + 1, duration_ms=5000, lead_off=True, quality=0.0)
    evs = s.tick(now_ms=10, event_ts_ms=s.t + 6000)
    assert "pause" not in conds(evs)
    assert conds(evs) == [] or conds(evs) == ["lead_off"]


def test_pause_clock_starts_settle_s_after_a_noisy_stretch() -> None:
    """After noise the QRS detector re-learns its thresholds and its first beats come out
    late: no pause is counted from the end of the noise until settle_s (3 s) later."""
    s = Sim()
    s.quality(T0, duration_ms=5000)
    s.beats(5)
    end = s.t + 2000
    s.quality(s.t + 1, duration_ms=end - s.t - 1, noisy=True, quality=0.2)  # noisy up to `end`
    s.quality(end, duration_ms=8000)
    assert "pause" not in conds(s.tick(now_ms=10, event_ts_ms=end + 4000))  # 4 s after the noise
    assert "pause" not in conds(s.tick(now_ms=20, event_ts_ms=end + 6900))
    evs = s.tick(now_ms=30, event_ts_ms=end + 7000)  # settle 3 s + pause 4 s
    assert [(e.condition, e.onset_ts_ms) for e in evs if e.condition == "pause"] == [("pause", end + 3000)]


# ---------------------------------------------------------------- ventricular run
def test_ventricular_run_of_3_is_high_and_2_is_not() -> None:
    s = Sim()
    s.beats(5)
    assert s.beats(2, rr_ms=450, flagged=True) == []
    s.beats(10)
    s.beats(2, rr_ms=450, flagged=True)
    evs = s.beat(rr_ms=450, flagged=True)
    assert [(e.condition, e.priority) for e in evs] == [("ventricular_run", "high")]
    assert evs[0].details["run_length_beats"] == 3
    assert evs[0].onset_ts_ms == s.t - 2 * 450
    assert "rate_bpm" in evs[0].details


def test_flagged_beats_with_slow_rr_are_not_a_ventricular_run() -> None:
    s = Sim()
    s.beats(5)
    evs = s.beats(4, rr_ms=700, flagged=True)
    assert "ventricular_run" not in conds(evs)


def _n(s: Sim, count: int, rr_ms: float = 800.0) -> list[AlertEvent]:
    return s.beats(count, rr_ms=rr_ms, beat_class="N", p_ventricular=0.01, p_run=0.02)


def _v(s: Sim, rr_ms: float, p: float = 0.95) -> list[AlertEvent]:
    return s.beat(rr_ms=rr_ms, flagged=True, beat_class="V", p_ventricular=p, p_run=p)


def test_classified_run_starts_at_a_v_beat_and_continues_on_run_evidence() -> None:
    s = Sim()
    _n(s, 6)
    _v(s, 450)
    # the second beat is not V on its own but carries run evidence (a wide beat the
    # classifier half called artefact): the run goes on
    assert s.beat(rr_ms=420, beat_class="X", p_ventricular=0.1, p_run=0.6) == []
    evs = s.beat(rr_ms=430, beat_class="X", p_ventricular=0.05, p_run=0.5)
    assert [(e.condition, e.priority) for e in evs] == [("ventricular_run", "high")]
    assert evs[0].onset_ts_ms == s.t - 420 - 430
    assert evs[0].details["run_length_beats"] == 3 and evs[0].details["rate_bpm"] == pytest.approx(60_000 / 425, 0.01)


def test_classified_run_needs_a_v_start_and_a_fast_mean_rate() -> None:
    s = Sim()
    _n(s, 6)
    # no beat is V on its own: no run, however much run evidence
    for _ in range(4):
        s.beat(rr_ms=400, beat_class="X", p_ventricular=0.1, p_run=0.9)
    _n(s, 6)
    _v(s, 500)
    _v(s, 700)
    evs = _v(s, 650)  # mean RR within the run 675 ms: 89 bpm, not VT
    assert "ventricular_run" not in conds(s.events)
    evs = _v(s, 400)  # mean (700 + 650 + 400) / 3 = 583 ms: >= 100 bpm
    assert "ventricular_run" in conds(evs)


def test_an_early_detection_continues_a_run_only_on_its_ventricular_probability() -> None:
    s = Sim()
    _n(s, 6)
    _v(s, 450)
    # 200 ms after a PVC: more often its T wave than a 300 bpm beat; artefact share ignored
    s.beat(rr_ms=200, beat_class="X", p_ventricular=0.05, p_run=0.95)
    s.beat(rr_ms=400, beat_class="X", p_ventricular=0.05, p_run=0.95)
    assert "ventricular_run" not in conds(s.events)


def test_a_broken_run_restarts_at_the_next_v_beat() -> None:
    s = Sim()
    _n(s, 6)
    _v(s, 450)
    _n(s, 1, 450)  # run broken
    _v(s, 450)  # a new run starts here
    _v(s, 450)
    evs = _v(s, 450)
    assert [e.condition for e in evs] == ["ventricular_run"]
    assert evs[0].onset_ts_ms == s.t - 2 * 450


# ---------------------------------------------------------------- sustained rates
@pytest.mark.parametrize("hr_bpm,cond", [(130.0, "tachycardia"), (45.0, "bradycardia")])
def test_sustained_30_s_is_medium_and_25_s_is_not(hr_bpm: float, cond: str) -> None:
    s = Sim()
    out = []
    for i in range(26):  # 0 .. 25 s
        out += s.hr(T0 + i * 1000, hr_bpm)
    assert out == []
    s2 = Sim()
    for i in range(31):  # 0 .. 30 s
        out += s2.hr(T0 + i * 1000, hr_bpm)
    assert [(e.condition, e.priority, e.onset_ts_ms) for e in out] == [(cond, "medium", T0)]


def test_sustain_restarts_after_back_in_range() -> None:
    s = Sim()
    for i in range(40):
        s.hr(T0 + i * 1000, 130.0 if i != 20 else 100.0)
    assert s.events == []


# ---------------------------------------------------------------- atrial fibrillation
def _af(s: Sim, ts_ms: int, p: float | None, thr: float = 0.8, quality: float | None = 0.9) -> list[AlertEvent]:
    obs = HRObservation(patient_id=s.pid, device_id="d1", ts_ms=ts_ms, hr_bpm=95.0, rr_ms=(600.0,),
                        quality=quality, af_probability=p, af_threshold=None if p is None else thr)
    return s._take(s.policy.on_hr(s.state, obs))


def test_af_opens_when_af_starts_and_clears_when_it_ends() -> None:
    s = Sim()
    for i in range(60):  # sinus: probability low
        _af(s, T0 + i * 1000, 0.1)
    for i in range(60, 300):  # AF from 60 s to 300 s
        _af(s, T0 + i * 1000, 0.95)
    for i in range(300, 500):  # sinus again
        _af(s, T0 + i * 1000, 0.1)
    got = [(e.condition, e.action, e.priority, e.detected_ts_ms - T0) for e in s.events]
    assert got == [("atrial_fibrillation", "raised", "medium", 90_000),  # 30 s sustained
                   ("atrial_fibrillation", "cleared", "medium", 480_000)]  # 180 s below
    raised = s.events[0]
    assert raised.onset_ts_ms == T0 + 60_000 and raised.score == 0.95 and raised.threshold == 0.8
    assert "AF probability" in s.events[1].rule


def test_af_reopens_for_a_second_episode_never_one_alert_per_record() -> None:
    s = Sim()
    t = 0
    for p, seconds in ((0.1, 60), (0.9, 120), (0.1, 200), (0.9, 120), (0.1, 200)):
        for _ in range(seconds):
            _af(s, T0 + t * 1000, p)
            t += 1
    assert [(e.condition, e.action) for e in s.events] == [
        ("atrial_fibrillation", "raised"), ("atrial_fibrillation", "cleared")] * 2
    assert len({e.alert_id for e in s.events}) == 2


def test_af_short_excursions_and_dips_do_not_open_or_clear() -> None:
    s = Sim()
    for i in range(600):  # 15 s above in every 40 s: never sustained for 30 s
        _af(s, T0 + i * 1000, 0.9 if i % 40 < 15 else 0.2)
    assert s.events == []
    for i in range(600, 700):
        _af(s, T0 + i * 1000, 0.9)
    for i in range(700, 1300):  # inside an episode, dips of 60 s (< clear_s) keep it open
        _af(s, T0 + i * 1000, 0.2 if i % 100 < 60 else 0.9)
    assert [e.action for e in s.events] == ["raised"]


def test_af_without_a_probability_or_with_an_unusable_reading_raises_nothing() -> None:
    s = Sim()
    for i in range(100):
        _af(s, T0 + i * 1000, None)  # no AF detector, or its window is still filling
    assert s.events == []
    for i in range(100, 200):  # a strap reporting poor quality: suppressed
        _af(s, T0 + i * 1000, 0.99, quality=0.0)
    assert s.events == []
    evs = [_af(s, T0 + i * 1000, 0.99) for i in range(200, 231)]  # sustain_s 30
    assert [e.action for ev in evs for e in ev] == ["raised"]


def test_af_settings_move_the_open_and_clear_times() -> None:
    cfg = PolicyConfig(conditions={"atrial_fibrillation": AtrialFibrillationSettings(sustain_s=5, clear_s=10)})
    s = Sim(cfg)
    for i in range(30):
        _af(s, T0 + i * 1000, 0.9)
    for i in range(30, 60):
        _af(s, T0 + i * 1000, 0.1)
    assert [(e.action, e.detected_ts_ms - T0) for e in s.events] == [("raised", 5_000), ("cleared", 40_000)]


# ---------------------------------------------------------------- frequent ectopy
def test_frequent_ectopy_medium_at_6_per_minute() -> None:
    s = Sim()
    out = []
    for _ in range(5):
        s.beats(9)
        out += s.beat(flagged=True)  # one in 10 beats at 75 bpm: 7.5/min
    assert out == []
    s.beats(9)
    out = s.beat(flagged=True)  # 6th flagged beat within 60 s
    assert [(e.condition, e.priority) for e in out] == [("frequent_ectopy", "medium")]


# ---------------------------------------------------------------- no data
def test_no_data_after_30_s_wall_time_and_cleared_when_data_returns() -> None:
    s = Sim()
    s.beats(3)
    wall = 5_000_000
    s.tick(wall)
    for dt in range(1000, 30_000, 1000):
        assert s.tick(wall + dt) == []
    evs = s.tick(wall + 30_000)
    assert [(e.condition, e.category, e.priority) for e in evs] == [
        ("no_data", "technical", "medium")]
    assert evs[0].onset_ts_ms == s.t
    assert s.tick(wall + 31_000) == []
    evs = s.beat()
    assert [(e.condition, e.action) for e in evs] == [("no_data", "cleared")]


def test_no_data_not_raised_when_data_keeps_flowing_or_worker_was_down() -> None:
    s = Sim()
    wall = 5_000_000
    for i in range(60):
        s.beat()
        s.tick(wall + i * 1000)
    assert s.events == []
    assert s.tick(wall + 600_000) == []  # the worker itself was away 10 minutes


# ---------------------------------------------------------------- determinism + state
def _scenario(s: Sim) -> None:
    s.beats(5)
    s.beats(3, rr_ms=450, flagged=True)
    s.beats(40)
    s.beat(rr_ms=4300)
    for i in range(35):
        s.hr(s.t + i * 1000, 135.0)
    s.quality(s.t + 40_000, duration_ms=5000, lead_off=True, quality=0.0)
    s.beats(50)


def test_replay_produces_identical_events_and_ids() -> None:
    a, b = Sim(), Sim()
    _scenario(a)
    _scenario(b)
    assert len(a.events) >= 5
    assert [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
    assert len({e.event_id for e in a.events}) == len(a.events)


def test_state_round_trips_through_json_and_continues_identically() -> None:
    s = Sim()
    s.beats(5)
    s.beats(3, rr_ms=450, flagged=True)
    s.hr(s.t, 130.0, rr_ms=(800.0, 810.0))
    s.quality(s.t, noisy=True, quality=0.2)
    s.tick(1000, event_ts_ms=s.t)
    d = s.policy.state_to_json(s.state)
    restored = s.policy.state_from_json(d)
    assert restored == s.state
    assert s.policy.state_to_json(restored) == d
    twin = Sim()
    twin.state, twin.t, twin.n = restored, s.t, s.n
    for sim in (s, twin):
        sim.events.clear()
        sim.beats(40)
        sim.beats(4, rr_ms=450, flagged=True)
        sim.beats(60)
    assert s.events and [e.to_dict() for e in s.events] == [e.to_dict() for e in twin.events]


# A version-1 state (the flat JSON of the previous release) taken from the old policy
# after _v1_before, with the events the old policy produced for _v1_after from there.
V1_FIXTURE = Path(__file__).parent / "data" / "policy_state_v1.json"


def _v1_before(s: Sim) -> None:
    """Leaves something in every part of the version-1 state."""
    s.tick(5_000_000)
    s.beats(5)
    s.beats(3, rr_ms=450, flagged=True)  # ventricular_run, cleared later
    s.beats(45)
    for _ in range(3):
        s.beats(3)
        s.beat(flagged=True)  # flags pending for frequent ectopy and anomalous beats
    s.beat(rr_ms=4300)  # pause, open
    rng = random.Random(3)
    for i in range(35):  # tachycardia (medium, open); irregular RR (no AF probability)
        s.hr(s.t + i * 1000, 135.0, rr_ms=(rng.uniform(350, 700), rng.uniform(350, 700)))
    s.quality(s.t, noisy=True, quality=0.3)  # a noisy stretch begins
    s.t += 1000
    s.quality(s.t, lead_off=True, quality=0.0)
    s.t += 1000
    s.quality(s.t)
    s.beats(2, rr_ms=450, flagged=True)  # a ventricular run in progress
    s.tick(5_001_000, event_ts_ms=s.t)


def _v1_after(s: Sim) -> None:
    s.beat(rr_ms=450, flagged=True)
    hr_t = s.t + 40_000
    for i in range(50):
        s.hr(hr_t + i * 1000, 135.0 if i < 10 else 80.0)
    s.beats(80)
    s.quality(s.t, duration_ms=4000, lead_off=True, quality=0.0)
    s.t += 4000
    for i in range(8):
        s.quality(s.t + i * 1000)
    s.tick(5_100_000)
    for i in range(40):
        s.tick(5_101_000 + i * 1000)
    s.beats(3)


def test_version_1_state_loads_and_continues_as_the_old_policy_did() -> None:
    fixture = json.loads(V1_FIXTURE.read_text())
    s = Sim()
    s.state = s.policy.state_from_json(json.dumps(fixture["state"]))
    s.t, s.n = fixture["t"], fixture["n"]
    assert set(s.state.open_alerts) == {"frequent_ectopy", "pause", "tachycardia"}
    _v1_after(s)
    assert [e.to_dict() for e in s.events] == fixture["events_after"]
    # and the same input from the start gives the same state as the migrated one
    fresh = Sim()
    _v1_before(fresh)
    assert fresh.state == s.policy.state_from_json(json.dumps(fixture["state"]))


def test_input_state_is_not_mutated() -> None:
    p = AlertPolicy()
    st = p.initial_state(PID)
    before = p.state_to_json(st)
    b = ScoredBeat(beat_id="p1:1", patient_id=PID, device_id="d1", r_ts_ms=T0, rr_ms=5000.0,
                   score=0.9, threshold=0.3, flagged=True, signal_quality=1.0,
                   model_version="m")
    evs, new = p.on_beats(st, [b])
    assert evs and p.state_to_json(st) == before and p.state_to_json(new) != before


def test_state_with_open_alerts_is_not_mutated_by_later_calls() -> None:
    s = Sim()
    s.beats(5)
    s.beats(3, rr_ms=450, flagged=True)
    s.hr(s.t, 190.0, rr_ms=(800.0, 810.0))
    assert s.state.open_alerts
    frozen = s.state
    before = s.policy.state_to_json(frozen)
    s.beats(100)  # holds, updates and clears the open alerts in later states
    s.hr(s.t, 80.0)
    s.quality(s.t, lead_off=True, quality=0.0)
    assert any(e.action == "cleared" for e in s.events)
    assert s.policy.state_to_json(frozen) == before


def test_event_for_other_patient_is_rejected() -> None:
    p = AlertPolicy()
    obs = HRObservation(patient_id="p2", device_id="d", ts_ms=T0, hr_bpm=80.0)
    with pytest.raises(ValueError, match="p2"):
        p.on_hr(p.initial_state(PID), obs)


def test_state_from_json_rejects_other_version() -> None:
    p = AlertPolicy()
    d = json.loads(p.state_to_json(p.initial_state(PID)))
    d["version"] = 99
    with pytest.raises(ValueError, match="99"):
        p.state_from_json(json.dumps(d))


# ---------------------------------------------------------------- config
def test_example_yaml_loads() -> None:
    cfg = load_policy_config(REPO / "deploy" / "policy.example.yaml")
    assert cfg.settings(Pause).pause_s == 4.0 and cfg.settings(AnomalousBeats).k == 3
    assert cfg.limits_for("demo-patient-001") == (30.0, 50.0, 110.0, 160.0)
    assert cfg.limits_for("someone-else") == (30.0, 50.0, 120.0, 180.0)


@pytest.mark.parametrize("text,needle", [
    ("pause:\n  pause_seconds: 4\n", "pause.pause_seconds"),
    ("pause:\n  pause_s: fast\n", "pause.pause_s"),
    ("anomalous_beats:\n  k: 9\n  n: 8\n", "anomalous_beats.k"),
    ("hr_limits:\n  brady_bpm: 130\n", "hr_low_bpm < brady_bpm"),
    ("patient_limits:\n  p9:\n    hr_hi: 150\n", "patient_limits.p9.hr_hi"),
    ("patient_limits:\n  p9:\n    tachy_bpm: 200\n", "patient_limits.p9"),
    ("- a\n- b\n", "mapping"),
])
def test_bad_yaml_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    with pytest.raises(PolicyConfigError, match=needle.replace(".", r"\.")):
        load_policy_config(p)


def test_missing_file_is_a_policy_config_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError, match="cannot be read"):
        load_policy_config(tmp_path / "nope.yaml")
