"""Unit tests of the alert conditions (streaming/conditions.py): the registry, settings,
rules called on their own, and a condition added from outside the module."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

import streaming.policy as policy_module
from streaming.conditions import (
    REGISTRY,
    AnomalousBeatsSettings,
    Clear,
    Condition,
    Decision,
    Finding,
    FrequentEctopySettings,
    Hold,
    AtrialFibrillationSettings,
    PauseSettings,
    RuleContext,
    Tachycardia,
    VentricularRun,
    VentricularRunSettings,
    bounded,
    check_settings,
    conditions_table,
)
from streaming.events import HRObservation, ScoredBeat
from streaming.policy import (
    CONDITIONS,
    HR_CONDITIONS,
    AlarmSettings,
    AlertPolicy,
    HRLimits,
    PatientPolicyState,
    PolicyConfig,
    PolicyConfigError,
    SignalSettings,
)

REPO = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000_000
PID = "p1"


# ---------------------------------------------------------------- registry + description
def test_registry_names_match_the_public_tables() -> None:
    assert list(CONDITIONS) == [c.name for c in REGISTRY]
    assert CONDITIONS == {
        "ventricular_run": "physiological", "ventricular_fibrillation": "physiological",
        "pause": "physiological",
        "tachycardia": "physiological", "bradycardia": "physiological",
        "frequent_ectopy": "physiological", "atrial_fibrillation": "physiological",
        "anomalous_beats": "physiological", "lead_off": "technical",
        "signal_noisy": "technical", "no_data": "technical",
        "device_clock": "technical"}
    assert HR_CONDITIONS == ("tachycardia", "bradycardia", "atrial_fibrillation")
    for c in REGISTRY:
        assert c.settings_type.section == c.name


def test_policy_docstring_table_is_the_registrys() -> None:
    table = conditions_table(REGISTRY)
    assert table in (policy_module.__doc__ or ""), (
        "streaming/policy.py's conditions table disagrees with the registry; paste:\n" + table)


def test_readme_table_is_the_registrys() -> None:
    table = conditions_table(REGISTRY, "markdown")
    assert table in (REPO / "README.md").read_text(), (
        "README.md's conditions table disagrees with the registry; paste:\n" + table)


def test_example_yaml_sets_every_setting_of_every_section() -> None:
    raw = yaml.safe_load((REPO / "deploy" / "policy.example.yaml").read_text())
    sections = {"alarms": AlarmSettings, "signal": SignalSettings, "hr_limits": HRLimits}
    sections.update({c.name: c.settings_type for c in REGISTRY})
    assert set(raw) == set(sections) | {"patient_limits"}
    for name, kind in sections.items():
        assert set(raw[name]) == {f.name for f in fields(kind)}, name
        assert kind(**raw[name]) == kind(), f"{name}: the example should show the defaults"


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("make,needle", [
    (lambda: VentricularRunSettings(min_beats=1), "ventricular_run.min_beats"),
    (lambda: VentricularRunSettings(min_beats=3.0), "ventricular_run.min_beats"),
    (lambda: VentricularRunSettings(max_rr_ms=float("nan")), "ventricular_run.max_rr_ms"),
    (lambda: PauseSettings(pause_s=True), "pause.pause_s"),
    (lambda: PauseSettings(pause_s=0.5), "pause.pause_s must be in"),
    (lambda: FrequentEctopySettings(per_min=3, clear_per_min=4), "frequent_ectopy.clear_per_min"),
    (lambda: AnomalousBeatsSettings(k=9), "anomalous_beats.k"),
    (lambda: AtrialFibrillationSettings(clear_s=-1.0), "atrial_fibrillation.clear_s"),
    (lambda: AlarmSettings(high_ignores_cooldown="yes"), "alarms.high_ignores_cooldown"),
    (lambda: HRLimits(tachy_bpm=40), "hr_low_bpm < brady_bpm < tachy_bpm"),
    (lambda: SignalSettings(min_quality=2), "signal.min_quality"),
])
def test_bad_settings_name_the_key(make, needle: str) -> None:
    with pytest.raises(PolicyConfigError, match=needle):
        make()


def test_config_rejects_settings_of_the_wrong_condition_or_an_unknown_one() -> None:
    with pytest.raises(PolicyConfigError, match="pause settings must be PauseSettings"):
        PolicyConfig(conditions={"pause": VentricularRunSettings()})
    with pytest.raises(PolicyConfigError, match="unknown condition 'vfib'"):
        PolicyConfig(conditions={"vfib": PauseSettings()})


def test_config_fills_defaults_and_reads_by_class() -> None:
    cfg = PolicyConfig(conditions={"ventricular_run": VentricularRunSettings(min_beats=4)})
    assert list(cfg.conditions) == [c.name for c in REGISTRY]
    assert cfg.settings(VentricularRun).min_beats == 4
    assert cfg.settings(Tachycardia) == Tachycardia.settings_type()


def test_yaml_sections_reject_flat_keys_and_non_mappings(tmp_path: Path) -> None:
    p = tmp_path / "policy.yaml"
    for text, needle in (("ectopy_k: 3\n", "now anomalous_beats.k"),
                         ("pause: 4\n", "pause must be a mapping"),
                         ("vfib:\n  x: 1\n", "unknown policy key 'vfib'"),
                         ("alarms:\n  cooldown: 1\n", "alarms.cooldown")):
        p.write_text(text)
        with pytest.raises(PolicyConfigError, match=needle):
            policy_module.load_policy_config(p)


# ---------------------------------------------------------------- rules on their own
def _ctx(open_alerts: tuple[str, ...] = (), hr_continuous: bool = True) -> RuleContext:
    return RuleContext(PatientPolicyState(PID), set(open_alerts), 0.5, (30.0, 50.0, 120.0, 180.0),
                       hr_continuous)


def _beat(ts: int, rr: float | None, flagged: bool) -> ScoredBeat:
    return ScoredBeat(f"{PID}:{ts}", PID, "d1", ts, rr, 0.9 if flagged else 0.1, 0.3, flagged,
                      0.95, "m/1")


def test_ventricular_run_rule_counts_consecutive_fast_flagged_beats() -> None:
    rule = VentricularRun()
    st = rule.new_state()
    out = [rule.observe(st, _beat(T0 + i * 450, 450.0, True), _ctx()) for i in range(3)]
    assert out[:2] == [None, None]
    assert isinstance(out[2], Finding) and out[2].priority == "high"
    assert out[2].onset_ts_ms == T0 and out[2].details["run_length_beats"] == 3
    assert rule.observe(st, _beat(T0 + 2000, 800.0, False), _ctx()) is None
    assert st == rule.new_state()  # a slow beat ends the run


def test_tachycardia_rule_holds_inside_the_hysteresis_band() -> None:
    rule = Tachycardia()
    st = rule.new_state()
    obs = HRObservation(PID, "d1", T0, 190.0)
    f = rule.observe(st, obs, _ctx())
    assert isinstance(f, Finding) and (f.priority, f.update) == ("high", "hr_delta")
    assert rule.observe(st, HRObservation(PID, "d1", T0 + 1000, 117.0), _ctx()) == Hold(T0 + 1000)
    assert rule.observe(st, HRObservation(PID, "d1", T0 + 2000, 110.0), _ctx()) is None


# ---------------------------------------------------------------- a condition added later
@dataclass(frozen=True, slots=True)
class AFObservation:
    """What a watch's own (optical) atrial-fibrillation classifier might emit."""

    patient_id: str
    device_id: str
    ts_ms: int
    quality: float | None
    af_probability: float


@dataclass(frozen=True, slots=True)
class WatchAFSettings:
    section: ClassVar[str] = "watch_af"
    min_probability: float = bounded(0.8, 0.0, 1.0)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True)
class WatchAFState:
    since_ts_ms: int | None = None


class WatchAF(Condition[WatchAFSettings, WatchAFState]):
    """Open while AF lasts, cleared when it ends."""

    name = "watch_af"
    category = "physiological"
    settings_type = WatchAFSettings
    state_type = WatchAFState
    consumes = (AFObservation,)
    derived_from = "hr"
    rows = (("medium", "AF probability >= ``min_probability``"),)

    def observe(self, state: WatchAFState, obs: AFObservation,
                ctx: RuleContext) -> Decision | None:
        if obs.af_probability < self.settings.min_probability:
            state.since_ts_ms = None
            return Clear(obs.ts_ms, "AF ended")
        if state.since_ts_ms is None:
            state.since_ts_ms = obs.ts_ms
        return Finding("medium", obs.ts_ms, state.since_ts_ms,
                       f"AF probability {obs.af_probability:.2f}", obs.af_probability, "rate",
                       min_step=0.1, details={"af_probability": obs.af_probability})


def _af(ts: int, p: float, quality: float | None = 0.9) -> AFObservation:
    return AFObservation(PID, "d1", ts, quality, p)


def test_a_new_condition_is_one_class_and_one_registry_entry(tmp_path: Path) -> None:
    registry = REGISTRY + (WatchAF,)
    p = tmp_path / "policy.yaml"
    p.write_text("watch_af:\n  min_probability: 0.7\n")
    raw = yaml.safe_load(p.read_text())
    policy = AlertPolicy(PolicyConfig.from_mapping(raw, registry=registry))
    assert policy.config.settings(WatchAF).min_probability == 0.7
    assert "watch_af" in conditions_table(registry)

    st = policy.initial_state(PID)
    evs, st = policy.on_observation(st, _af(T0, 0.9))
    assert [(e.condition, e.action, e.priority, e.onset_ts_ms) for e in evs] == [
        ("watch_af", "raised", "medium", T0)]
    evs, st = policy.on_observation(st, _af(T0 + 60_000, 0.95))  # lasts: still one alert
    assert evs == []
    # its state round-trips with the rest
    assert policy.state_from_json(policy.state_to_json(st)) == st
    evs, st = policy.on_observation(st, _af(T0 + 61_000, 0.2))  # ends: cleared at once
    assert [(e.action, e.rule, e.detected_ts_ms) for e in evs] == [
        ("cleared", "AF ended", T0 + 61_000)]
    # the shared cooldown applies to it like to any other condition
    evs, st = policy.on_observation(st, _af(T0 + 62_000, 0.9))
    assert evs == []


def test_a_new_observation_type_gets_the_shared_suppression_and_no_data_rules() -> None:
    policy = AlertPolicy(PolicyConfig(registry=REGISTRY + (WatchAF,)))
    st = policy.initial_state(PID)
    _, st = policy.on_observation(st, _af(T0, 0.9))  # raised
    evs = []
    for wall_ms in range(1_000, 32_000, 10_000):  # 30 s of wall time without data
        out, st = policy.on_tick(st, wall_ms)
        evs += out
    assert [e.condition for e in evs] == ["no_data"]
    # a low-quality reading: heart-rate conditions are suppressed and start afresh
    evs, st = policy.on_observation(st, _af(T0 + 1000, 0.9, quality=0.1))
    assert [(e.condition, e.action) for e in evs] == [("no_data", "cleared")]
    assert st.conditions["watch_af"] == WatchAFState()
    with pytest.raises(TypeError, match="no condition consumes"):
        AlertPolicy().on_observation(st, _af(T0, 0.9))


def test_registry_is_validated() -> None:
    class Early(WatchAF):
        subsumed_by = ("no_such_condition",)

    with pytest.raises(PolicyConfigError, match="must come earlier"):
        PolicyConfig(registry=REGISTRY + (Early,))
    with pytest.raises(PolicyConfigError, match="is taken"):
        PolicyConfig(registry=REGISTRY + (VentricularRun,))

    class Misnamed(WatchAF):
        name = "afib"

    with pytest.raises(PolicyConfigError, match="section must be 'afib'"):
        PolicyConfig(registry=REGISTRY + (Misnamed,))


def test_state_json_leaves_out_what_a_condition_has_not_seen() -> None:
    policy = AlertPolicy()
    st = policy.initial_state(PID)
    assert json.loads(policy.state_to_json(st)) == {"version": 2, "patient_id": PID}
    for i in range(10):
        _, st = policy.on_beats(st, [_beat(T0 + i * 800, 800.0 if i else None, False)])
    d = json.loads(policy.state_to_json(st))
    assert set(d["conditions"]) == {"anomalous_beats"}  # the only state normal beats leave
    assert "open_alerts" not in d and "cleared_at_ts_ms" not in d


# ---------------------------------------------------------------- the AF rule and its mirror
def test_atrial_fibrillation_condition_is_the_rule_its_threshold_was_chosen_for() -> None:
    """models.hr.af.af_alert_spans (what training picks the threshold with) and the
    condition, run by the policy, give the same alerts on the same probability series."""
    import random

    from models.hr.af import AFAlertRule, af_alert_spans

    rule, cfg = AFAlertRule(), PolicyConfig()
    settings = cfg.conditions["atrial_fibrillation"]
    assert (rule.sustain_s, rule.clear_s) == (settings.sustain_s, settings.clear_s)
    assert rule.cooldown_s == cfg.alarms.cooldown_s and rule.max_gap_s == cfg.signal.hr_max_gap_s
    rng = random.Random(4)
    t, p, now, level = [], [], 0, 0.1
    for _ in range(16000):
        u = rng.random()  # mostly 1 Hz, sometimes 2 s, rarely a gap beyond hr_max_gap_s
        now += 1 if u < 0.97 else 2 if u < 0.99 else 12
        if rng.random() < 0.006:  # episodes of ~170 s, with dips below the threshold
            level = 0.92 if level < 0.5 else 0.1
        t.append(now)
        p.append(min(max(level + rng.uniform(-0.25, 0.25), 0.0), 1.0))
    policy = AlertPolicy(cfg)
    st = policy.initial_state(PID)
    events = []
    for ti, pi in zip(t, p):
        obs = HRObservation(PID, "d1", T0 + ti * 1000, 90.0, (650.0,), 0.9, af_probability=pi, af_threshold=0.7)
        evs, st = policy.on_hr(st, obs)
        events += [e for e in evs if e.condition == "atrial_fibrillation"]
    got: list[tuple[float, float, float | None]] = []
    for e in events:
        if e.action == "raised":
            got.append(((e.onset_ts_ms - T0) / 1000, (e.detected_ts_ms - T0) / 1000, None))
        elif e.action == "cleared":
            on, up, _ = got[-1]
            got[-1] = (on, up, (e.detected_ts_ms - T0) / 1000)
    want = af_alert_spans(t, p, 0.7, rule)
    assert len(want) > 5
    # the policy gives a re-opened episode an onset 1 ms after the clear (a new alert id)
    assert [(round(a), b, c) for a, b, c in got] == [(round(a), b, c) for a, b, c in want]
