"""Device clock glitches, corrections, drift, reboots and duplicates through both stream
cores (issue 11): a fault sets aside at most one message and beats resume within a chunk.

ECG: the shipped bundle (TFLite runtime), one 250 Hz chunk per second; heart rate: one
sample per second. Every case compares with the same stream without the fault.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from models.synthetic import Event, SyntheticPatient
from streaming.events import DeviceClockEvent
from streaming.pipeline import ECGPatientState, HRPatientState, InMessage
from streaming.position import ECG_RULE, HR_RULE, StreamPosition
from streaming.schemas import encode_ecg, encode_hr

from services.pipelines import build_ecg_pipeline, build_hr_pipeline, build_policy, load_ecg_bundle
from services.settings import DEFAULT_MODEL_DIR

T0 = 1_767_225_600_000
HOUR_MS = 3_600_000
N = 199  # messages per stream, as in the issue
FAULT = 60  # index of the first message the fault touches


@pytest.fixture(scope="module")
def bundle():
    return load_ecg_bundle(DEFAULT_MODEL_DIR, "tflite")


def ecg_msgs(n: int = N, ts: Callable[[int], int] = lambda k: T0 + 1000 * k,
             seq: Callable[[int], int] = lambda k: k, device: Callable[[int], str] = lambda k: "d",
             events=()) -> list[InMessage]:
    """``n`` one-second chunks of one synthetic patient; ``ts``, ``seq`` and ``device``
    say what the wearable stamps on chunk ``k``."""
    src = SyntheticPatient("p", 250, events=events, seed=3)
    return [InMessage(b"p", encode_ecg("p", device(k), seq(k), ts(k), 250,
                                       src.next_chunk(250)[None, :]), 0, k) for k in range(n)]


def run_ecg(bundle, msgs, batch: int = 8, states=None):
    pipe = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
    states = dict(states or {})
    out = {"scored": [], "alerts": [], "dead": [], "clock": [], "redelivered": 0}
    for i in range(0, len(msgs), batch):
        r = pipe.process(msgs[i:i + batch], states)
        states.update(r.states)
        out["scored"] += r.scored
        out["alerts"] += r.alerts
        out["dead"] += r.dead
        out["clock"] += r.clock_events
        out["redelivered"] += r.redelivered
    out["states"] = states
    return out


def first_beat_after(scored, ts_ms: int) -> int:
    """Milliseconds from ``ts_ms`` to the first scored beat at or after it."""
    return min(s.r_ts_ms for s in scored if s.r_ts_ms >= ts_ms) - ts_ms


#: "Beats resume within one chunk": counted from the start of the first chunk accepted
#: after the fault, a beat is scored before the end of the chunk after it (a new segment's
#: QRS detector can miss a beat in its first few hundred milliseconds).
RESUME_MS = 2000


def high(alerts):
    return [a for a in alerts if a.priority == "high"]


# ------------------------------------------------------------------------ ECG faults
def test_one_chunk_stamped_an_hour_ahead_sets_aside_only_that_chunk(bundle):
    clean = run_ecg(bundle, ecg_msgs())
    r = run_ecg(bundle, ecg_msgs(ts=lambda k: T0 + 1000 * k + (HOUR_MS if k == FAULT else 0)))
    assert [(d.reason, d.offset) for d in r["dead"]] == [("out_of_order_ts", FAULT)]
    assert "3600.0 s after" in r["dead"][0].detail
    [ev] = r["clock"]
    assert (ev.kind, ev.direction, ev.shift_ms, ev.seq) == ("glitch", "forward", 0, FAULT)
    # the time base never moved: nothing is stamped in the future, beats resume in one chunk
    assert max(s.r_ts_ms for s in r["scored"]) < T0 + N * 1000
    assert first_beat_after(r["scored"], T0 + (FAULT + 1) * 1000) < RESUME_MS
    after = [s for s in r["scored"] if s.r_ts_ms >= T0 + (FAULT + 5) * 1000]
    assert [s.beat_id for s in after] == [s.beat_id for s in clean["scored"]
                                          if s.r_ts_ms >= T0 + (FAULT + 5) * 1000]
    assert high(r["alerts"]) == []


def test_clock_corrected_back_two_minutes_re_anchors_after_one_chunk(bundle):
    back = 120_000
    r = run_ecg(bundle, ecg_msgs(ts=lambda k: T0 + 1000 * k - (back if k >= FAULT else 0)))
    assert [(d.reason, d.offset) for d in r["dead"]] == [("out_of_order_ts", FAULT)]
    [ev] = r["clock"]
    assert (ev.kind, ev.direction, ev.shift_ms) == ("jump", "backward", -back)
    resumed = T0 + (FAULT + 1) * 1000 - back
    assert first_beat_after(r["scored"], resumed) < RESUME_MS
    # every chunk after the confirming one is scored in the new time base
    late = [s for s in r["scored"] if s.r_ts_ms >= resumed]
    assert len(late) >= 0.95 * (N - FAULT - 2) * 60 / 75  # ~1.2 beats per chunk at 72 bpm
    assert high(r["alerts"]) == []
    st = r["states"]["p"]
    assert st.gaps == 1 and st.pos.last_ts_ms == T0 + N * 1000 - back


def test_reboot_restarting_the_sequence_is_a_new_epoch_not_duplicates(bundle):
    r = run_ecg(bundle, ecg_msgs(seq=lambda k: k if k < FAULT else k - FAULT + 1))
    assert r["dead"] == []  # was: 59 dead-lettered as duplicate_seq
    [ev] = r["clock"]
    assert (ev.kind, ev.direction, ev.old_seq, ev.seq) == ("restart", "none", FAULT - 1, 1)
    assert first_beat_after(r["scored"], T0 + FAULT * 1000) < RESUME_MS
    assert r["states"]["p"].gaps == 1 and high(r["alerts"]) == []


def test_replacement_device_with_a_new_id_is_a_new_stream(bundle):
    r = run_ecg(bundle, ecg_msgs(seq=lambda k: k if k < FAULT else k - FAULT,
                                 device=lambda k: "d" if k < FAULT else "d-new"))
    assert r["dead"] == [] and r["clock"] == []
    assert first_beat_after(r["scored"], T0 + FAULT * 1000) < RESUME_MS
    assert r["states"]["p"].device_id == "d-new" and high(r["alerts"]) == []


@pytest.mark.parametrize("rate", [1.01, 0.99], ids=["fast", "slow"])
def test_device_clock_drifting_one_percent_keeps_one_segment_and_no_false_pause(bundle, rate):
    # Before: the beats kept the samples' clock and the chunks the device's, so a clock
    # 1 % fast raised a false HIGH pause after ~415 s.
    n = 480
    r = run_ecg(bundle, ecg_msgs(n, ts=lambda k: T0 + int(k * 1000 * rate)))
    assert r["dead"] == [] and r["clock"] == [] and r["states"]["p"].gaps == 0
    assert high(r["alerts"]) == []
    # beats follow the device's clock: the last ones are stamped where its chunks are
    last_chunk_ts = T0 + int((n - 1) * 1000 * rate)
    assert abs(max(s.r_ts_ms for s in r["scored"]) - last_chunk_ts) < 3000


def test_true_duplicates_are_dropped_and_change_nothing(bundle):
    msgs = ecg_msgs()
    clean = run_ecg(bundle, msgs)
    # a producer retry (chunk 60 again) and a gateway re-sending chunks 70..74 after
    # chunk 75, all at new offsets
    dup = msgs[:61] + [msgs[60]] + msgs[61:76] + msgs[70:75] + msgs[76:]
    dup = [InMessage(m.key, m.value, 0, i) for i, m in enumerate(dup)]
    r = run_ecg(bundle, dup)
    assert [d.reason for d in r["dead"]] == ["duplicate_seq"] * 6
    assert r["clock"] == []
    assert [s.beat_id for s in r["scored"]] == [s.beat_id for s in clean["scored"]]


def test_redelivery_after_a_crash_is_skipped_and_reproduces_the_same_ids(bundle):
    back = 120_000
    msgs = ecg_msgs(ts=lambda k: T0 + 1000 * k - (back if k >= FAULT else 0),
                    events=[Event("vrun", 100, 5)])
    whole = run_ecg(bundle, msgs)
    # the worker stored its states right after the chunk held for the clock jump, died,
    # and the consumer hands it everything from offset 50 again
    part = run_ecg(bundle, msgs[:FAULT + 1], batch=FAULT + 1)
    rest = run_ecg(bundle, msgs[50:], states=part["states"])
    assert rest["redelivered"] == FAULT + 1 - 50 and rest["dead"] == []
    assert [e.kind for e in part["clock"] + rest["clock"]] == ["jump"]
    ids = [s.beat_id for s in part["scored"] + rest["scored"]]
    assert ids == [s.beat_id for s in whole["scored"]]
    assert [a.event_id for a in part["alerts"] + rest["alerts"]] == [a.event_id for a in whole["alerts"]]
    # the run after the correction alarms with its onset in the corrected time
    [vrun] = [a for a in whole["alerts"] if a.condition == "ventricular_run" and a.action == "raised"]
    assert T0 + 100_000 - back <= vrun.onset_ts_ms <= T0 + 106_000 - back


def test_state_with_a_held_chunk_round_trips_and_old_states_load(bundle):
    msgs = ecg_msgs(n=FAULT + 1, ts=lambda k: T0 + 1000 * k - (120_000 if k >= FAULT else 0))
    r = run_ecg(bundle, msgs)
    pipe = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0)
    st = r["states"]["p"]
    assert st.pos.held is not None and st.pos.runs
    blob = st.to_bytes(pipe.policy)
    back = ECGPatientState.from_bytes(blob, pipe.policy)
    assert back.pos == st.pos and back.to_bytes(pipe.policy) == blob
    # a version-2 state (before runs and held messages) still loads; written in the
    # layout of its time (JSON header, float32 front end and strip), which the compact
    # writer of version 4 no longer writes
    from streaming.pipeline import _pack

    head = {"v": 2, "patient_id": st.patient_id, "device_id": st.device_id, "last_seq": st.pos.last_seq,
            "last_ts_ms": st.pos.last_ts_ms, "last_offset": st.pos.last_offset,
            "last_partition": st.pos.last_partition, "sample_rate_hz": st.sample_rate_hz,
            "seg_t0_ms": st.seg_t0_ms, "strip_end_ms": st.strip_end_ms, "gaps": st.gaps,
            "beats_scored": st.beats_scored}
    v2 = _pack(head, {"policy": pipe.policy.state_to_json(st.policy), "front": st.front.to_bytes(),
                      "context": st.context.to_bytes(), "strip": st.strip.tobytes()})
    old = ECGPatientState.from_bytes(v2, pipe.policy)
    assert old.pos.runs == [] and old.pos.held is None and old.pos.last_seq == st.pos.last_seq


def test_a_device_that_keeps_glitching_raises_a_device_clock_alert(bundle):
    glitches = {40, 80, 120}
    r = run_ecg(bundle, ecg_msgs(ts=lambda k: T0 + 1000 * k + (HOUR_MS if k in glitches else 0)))
    assert [d.offset for d in r["dead"]] == sorted(glitches)
    dc = [a for a in r["alerts"] if a.condition == "device_clock"]
    assert [(a.action, a.priority, a.category) for a in dc][:1] == [("raised", "low", "technical")]
    assert dc[0].alert_id == f"p:device_clock:{T0 + 40_000}"
    assert high(r["alerts"]) == []


# ------------------------------------------------------------------------- heart rate
def hr_msgs(n: int = N, ts: Callable[[int], int] = lambda k: T0 + 1000 * k,
            seq: Callable[[int], int] = lambda k: k) -> list[InMessage]:
    return [InMessage(b"p", encode_hr("p", "d", seq(k), ts(k), 72.0, [833.0]), 0, k)
            for k in range(n)]


def run_hr(msgs, batch: int = 10, states=None):
    hr = build_hr_pipeline(None, build_policy(None), clock_ms=lambda: T0)
    states = dict(states or {})
    obs, dead, clock, alerts = [], [], [], []
    for i in range(0, len(msgs), batch):
        r = hr.process(msgs[i:i + batch], states)
        states.update(r.states)
        obs += r.observations
        dead += r.dead
        clock += r.clock_events
        alerts += r.alerts
    return obs, dead, clock, alerts, states


@pytest.mark.parametrize("name,ts,seq,kinds", [
    ("+1 h glitch", lambda k: T0 + 1000 * k + (HOUR_MS if k == FAULT else 0), lambda k: k,
     [("glitch", "forward")]),
    ("-2 min correction", lambda k: T0 + 1000 * k - (120_000 if k >= FAULT else 0), lambda k: k,
     [("jump", "backward")]),
    ("reboot", lambda k: T0 + 1000 * k, lambda k: k if k < FAULT else k - FAULT + 1,
     [("restart", "none")]),
    ("fast clock 1 %", lambda k: T0 + int(1010 * k), lambda k: k, []),
    ("slow clock 1 %", lambda k: T0 + int(990 * k), lambda k: k, []),
])
def test_heart_rate_stream_keeps_its_samples_through_clock_faults(name, ts, seq, kinds):
    obs, dead, clock, alerts, _ = run_hr(hr_msgs(ts=ts, seq=seq))
    set_aside = 1 if kinds and kinds[0][0] != "restart" else 0
    assert len(dead) == set_aside, name
    assert [(e.kind, e.direction) for e in clock] == kinds
    assert len(obs) == N - set_aside
    assert high(alerts) == []


def test_heart_rate_duplicates_and_redelivery():
    msgs = hr_msgs()
    dup = msgs[:61] + [msgs[60], msgs[58]] + msgs[61:]
    dup = [InMessage(m.key, m.value, 0, i) for i, m in enumerate(dup)]
    obs, dead, clock, _, states = run_hr(dup)
    assert [d.reason for d in dead] == ["duplicate_seq", "duplicate_seq"] and clock == []
    assert len(obs) == N
    hr = build_hr_pipeline(None, build_policy(None), clock_ms=lambda: T0)
    r = hr.process(dup[100:], states)  # a replay after a crash
    assert r.redelivered == len(dup) - 100 and not r.dead and not r.observations
    blob = states["p"].to_bytes(hr.policy)
    assert HRPatientState.from_bytes(blob, hr.policy).to_bytes(hr.policy) == blob


def test_heart_rate_tachycardia_is_not_sustained_across_a_clock_jump():
    # HR 150 bpm throughout; the clock is set back 2 min at seq 20: the sustain clock
    # restarts in the new time base instead of counting the jump (or going negative)
    msgs = [InMessage(b"p", encode_hr("p", "d", k, T0 + 1000 * k - (120_000 if k >= 20 else 0),
                                      150.0, [400.0]), 0, k) for k in range(60)]
    _, dead, clock, alerts, _ = run_hr(msgs)
    assert len(dead) == 1 and [e.kind for e in clock] == ["jump"]
    [t] = [a for a in alerts if a.condition == "tachycardia" and a.action == "raised"]
    assert t.onset_ts_ms == T0 + 21_000 - 120_000  # where the new time base starts
    assert t.detected_ts_ms - t.onset_ts_ms >= 30_000


# ------------------------------------------------------------------ the rule, directly
def test_position_rule_cases():
    pos = StreamPosition()
    seen = []

    def feed(seq, ts, offset, dur=1000.0, device="d"):
        v = pos.check(ECG_RULE, "p", seq, ts, dur, offset, 0, device)
        seen.append(v.kind)
        if v.kind not in ("redelivered", "duplicate", "held"):
            pos.advance(seq, ts, dur, offset, 0, device, v.kind in ("new_device", "restart", "jump"))
        return v

    for k in range(5):
        feed(k, T0 + 1000 * k, k)
    assert feed(4, T0 + 4000, 5).kind == "duplicate"
    assert feed(3, T0 + 3000, 6).kind == "duplicate"  # an older one, same time
    assert feed(4, T0 + 4000, 4).kind == "redelivered"
    assert feed(5, T0 + 5050, 7).kind == "ok"  # jitter within the stitch tolerance
    assert feed(7, T0 + 7000, 8).kind == "gap"  # seq 6 lost, time in line
    assert feed(8, T0 + 8000 + HOUR_MS, 9).kind == "held"
    v = feed(9, T0 + 9000, 10)
    assert v.kind == "gap" and [e.kind for e in v.events] == ["glitch"]  # seq 8 is missing
    assert feed(1, T0 + 10_000, 11).kind == "restart"  # reboot, time moving on
    assert feed(0, T0 - 60_000, 12).kind == "held"  # restart with the clock set back ...
    v = feed(1, T0 - 59_000, 13)  # ... confirmed by the next
    assert v.kind == "restart" and v.shift_ms == -71_000
    assert feed(2, T0 - 58_000, 14, device="e").kind == "new_device"
    assert StreamPosition.from_header(
        {**pos.to_header(), "device_id": pos.device_id}) == pos
    assert isinstance(v.events[0], DeviceClockEvent) and "seq 1 -> 0" in v.events[0].describe()


def test_heart_rate_rule_tolerates_silence_but_not_an_hour_ahead():
    pos = StreamPosition()
    for k, ts in enumerate([T0, T0 + 1000, T0 + 120_000]):  # two minutes without beats
        v = pos.check(HR_RULE, "p", k, ts, 0.0, k, 0, "d")
        assert v.kind == "ok"
        pos.advance(k, ts, 0.0, k, 0, "d", False)
    assert pos.check(HR_RULE, "p", 3, T0 + 121_000 + HOUR_MS, 0.0, 3, 0, "d").kind == "held"
    assert Counter(e.kind for e in pos.check(HR_RULE, "p", 4, T0 + 122_000, 0.0, 4, 0, "d").events) == {"glitch": 1}
