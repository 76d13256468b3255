"""The ECG and heart-rate stream cores, called directly (no Kafka, no Faust).

They run the shipped model bundle through the TFLite runtime (no TensorFlow start-up).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.synthetic import Event, SyntheticPatient
from streaming.pipeline import ECGPatientState, HRPatientState, InMessage
from streaming.schemas import encode_ecg, encode_hr

from services.pipelines import build_ecg_pipeline, build_hr_pipeline, build_policy, load_ecg_bundle
from services.settings import DEFAULT_HR_MODEL_DIR, DEFAULT_MODEL_DIR
from services.simulator import Wearable

T0 = 1_767_225_600_000


@pytest.fixture(scope="module")
def bundle():
    return load_ecg_bundle(DEFAULT_MODEL_DIR, "tflite")


@pytest.fixture
def pipe(bundle):
    return build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)


def chunks(pid: str, seconds: int, events=(), seed: int | None = None):
    w = Wearable(pid, f"dev-{pid}", SyntheticPatient(pid, 250, events=events, seed=seed), T0)
    out = []
    for _ in range(seconds):
        e, h = w.step()
        out.append((e, h))
    return out


def run(pipe, msgs, batch: int, states=None):
    states = dict(states or {})
    scored, alerts, dead = [], [], []
    for i in range(0, len(msgs), batch):
        r = pipe.process(msgs[i:i + batch], states)
        states.update(r.states)
        scored += r.scored
        alerts += r.alerts
        dead += r.dead
    return scored, alerts, dead, states


def as_msgs(pid: str, raw: list[bytes], start_offset: int = 0):
    return [InMessage(pid.encode(), v, 0, start_offset + i) for i, v in enumerate(raw)]


def test_batching_does_not_change_beats_scores_or_alerts(pipe, bundle):
    a = [e for e, _ in chunks("p-a", 90, [Event("vrun", 50, 5)])]
    b = [e for e, _ in chunks("p-b", 90)]
    msgs = [m for pair in zip(as_msgs("p-a", a), as_msgs("p-b", b)) for m in pair]
    s1, al1, _, _ = run(pipe, msgs, batch=1)
    pipe2 = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
    s2, al2, _, _ = run(pipe2, msgs, batch=64)
    assert [s.beat_id for s in s1] == [s.beat_id for s in s2]
    np.testing.assert_allclose([s.score for s in s1], [s.score for s in s2], rtol=1e-5)
    assert [a.event_id for a in al1] == [a.event_id for a in al2]
    assert any(a.condition == "ventricular_run" and a.patient_id == "p-a" for a in al1)


def test_state_round_trip_through_bytes_gives_identical_continuation(pipe):
    raw = [e for e, _ in chunks("p-1", 80)]
    msgs = as_msgs("p-1", raw)
    _, _, _, st = run(pipe, msgs[:40], batch=8)
    blob = st["p-1"].to_bytes(pipe.policy)
    restored = ECGPatientState.from_bytes(blob, pipe.policy)
    assert restored.to_bytes(pipe.policy) == blob
    s_a, _, _, _ = run(pipe, msgs[40:], batch=8, states=st)
    s_b, _, _, _ = run(pipe, msgs[40:], batch=8, states={"p-1": restored})
    assert [(s.beat_id, s.score) for s in s_a] == [(s.beat_id, s.score) for s in s_b]
    assert len(blob) < 32_000


def test_redelivered_offsets_are_skipped_not_dead_lettered(pipe):
    msgs = as_msgs("p-1", [e for e, _ in chunks("p-1", 20)])
    _, _, _, st = run(pipe, msgs, batch=5)
    r = pipe.process(msgs[10:], st)  # the same records again, as after a crash
    assert r.redelivered == 10 and not r.dead and not r.scored


def test_duplicate_and_out_of_order_chunks_go_to_dead_letter_with_reason(pipe):
    raw = [e for e, _ in chunks("p-1", 12)]
    msgs = as_msgs("p-1", raw[:6])
    dup = InMessage(b"p-1", raw[5], 0, 6)  # seq 5 again at a new offset
    old = json.loads(raw[6])
    old["ts_ms"] -= 5000  # seq moves on but time goes back
    back = InMessage(b"p-1", json.dumps(old).encode(), 0, 7)
    _, _, dead, st = run(pipe, msgs + [dup, back], batch=3)
    assert [(d.reason, d.offset) for d in dead] == [("duplicate_seq", 6), ("out_of_order_ts", 7)]
    assert "seq 5" in dead[0].detail and dead[0].raw == raw[5]
    assert st["p-1"].pos.last_seq == 5


def test_gap_starts_a_new_segment_and_is_counted(pipe):
    raw = [e for e, _ in chunks("p-1", 40)]
    kept = raw[:15] + raw[20:]  # five chunks lost in transit
    msgs = as_msgs("p-1", kept)
    scored, _, dead, st = run(pipe, msgs, batch=4)
    assert not dead
    assert st["p-1"].gaps == 1
    gap_ms = (T0 + 15_000, T0 + 20_000)
    # no beat is invented inside the gap, and beats resume after it
    assert not [s for s in scored if gap_ms[0] + 500 < s.r_ts_ms < gap_ms[1]]
    assert [s for s in scored if s.r_ts_ms > gap_ms[1] + 5000]


def test_a_bug_in_one_message_does_not_stop_the_batch(pipe, monkeypatch):
    raw = [e for e, _ in chunks("p-1", 6)] + [e for e, _ in chunks("p-2", 6)]
    msgs = as_msgs("p-1", raw[:6]) + as_msgs("p-2", raw[6:])
    real = pipe.front_end(250.0).process
    calls = {"n": 0}

    def flaky(state, x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(state, x)

    monkeypatch.setattr(pipe.front_end(250.0), "process", flaky)
    r = pipe.process(msgs, {})
    assert [(d.reason, d.offset) for d in r.dead] == [("processing_error", 2)]
    assert "RuntimeError: boom" in r.dead[0].detail
    assert r.valid == 11


def test_pause_raises_high_alert_within_seconds(pipe):
    msgs = as_msgs("p-1", [e for e, _ in chunks("p-1", 60, [Event("pause", 30, 6)])])
    _, alerts, _, _ = run(pipe, msgs, batch=1)
    pauses = [a for a in alerts if a.condition == "pause" and a.action == "raised"]
    assert len(pauses) == 1 and pauses[0].priority == "high"
    assert pauses[0].strip and len(pauses[0].strip["samples_mv"]) > 100
    assert T0 + 30_000 <= pauses[0].detected_ts_ms <= T0 + 36_000


def test_normal_patient_pages_nobody(pipe):
    msgs = as_msgs("p-0005", [e for e, _ in chunks("p-0005", 300)])
    _, alerts, _, _ = run(pipe, msgs, batch=16)
    assert [a for a in alerts if a.category == "physiological"] == []


def test_hr_pipeline_scores_windows_and_raises_tachycardia():
    hr = build_hr_pipeline(DEFAULT_HR_MODEL_DIR, build_policy(None), runtime="tflite",
                           clock_ms=lambda: T0)
    pairs = chunks("p-1", 150, [Event("tachy", 30, 100, {"hr_bpm": 150})])
    msgs = [InMessage(b"p-1", h, 0, i) for i, (_, h) in enumerate(pairs) if h is not None]
    states: dict = {}
    alerts, scored = [], 0
    for i in range(0, len(msgs), 10):
        r = hr.process(msgs[i:i + 10], states)
        states.update(r.states)
        alerts += r.alerts
        scored += r.windows_scored
    assert scored > 5
    tachy = [a for a in alerts if a.condition == "tachycardia" and a.action == "raised"]
    assert tachy and tachy[0].priority == "medium"
    blob = states["p-1"].to_bytes(hr.policy)
    assert HRPatientState.from_bytes(blob, hr.policy).to_bytes(hr.policy) == blob


def test_hr_bad_messages_are_dead_lettered():
    hr = build_hr_pipeline(None, build_policy(None), clock_ms=lambda: T0)
    good = encode_hr("p-1", "d", 0, T0, 70, [850])
    bad = encode_hr("p-1", "d", 1, T0 + 1000, 70, [850]).replace(b'"hr_bpm":70.0', b'"hr_bpm":900')
    r = hr.process([InMessage(b"p-1", good, 0, 0), InMessage(b"p-1", bad, 0, 1),
                    InMessage(b"p-1", b"\xff\xfe", 0, 2)], {})
    assert [d.reason for d in r.dead] == ["bad_hr", "malformed_json"]
    assert r.valid == 1


def test_hr_gap_and_new_device_are_noted():
    hr = build_hr_pipeline(None, build_policy(None), clock_ms=lambda: T0)
    msgs = [InMessage(b"p-1", encode_hr("p-1", "d", 0, T0, 70, [850]), 2, 10),
            InMessage(b"p-1", encode_hr("p-1", "d", 4, T0 + 4000, 70, [850]), 2, 11),
            InMessage(b"p-1", encode_hr("p-1", "e", 0, T0 + 5000, 70, [850]), 2, 12)]
    r = hr.process(msgs, {})
    assert [(g.reason, g.device_id, g.last_seq, g.seq, g.last_offset, g.offset) for g in r.gap_notes] == [
        ("seq", "d", 0, 4, 10, 11), ("device", "d", 4, 0, 11, 12)]
    assert r.gaps == 2 and r.valid == 3


def test_gap_note_says_where_the_stream_broke(pipe):
    raw = [e for e, _ in chunks("p-1", 12)]
    msgs = as_msgs("p-1", raw[:5]) + [InMessage(b"p-1", raw[8], 0, 5)]  # seq 5..7 never sent
    r1 = pipe.process(msgs[:5], {})
    r2 = pipe.process(msgs[5:], r1.states)
    assert r1.gap_notes == []
    [g] = r2.gap_notes
    assert (g.reason, g.last_seq, g.seq, g.last_offset, g.offset) == ("seq", 4, 8, 4, 5)
    assert "seq 4 -> 8" in g.describe() and "offset 4 -> 5" in g.describe()


def test_ecg_schema_violation_is_dead_lettered(pipe):
    bad = encode_ecg("p-1", "d", 0, T0, 250, np.zeros((1, 250))).replace(b'"sample_rate_hz":250', b'"sample_rate_hz":9')
    r = pipe.process([InMessage(b"p-1", bad, 3, 17)], {})
    assert [(d.reason, d.partition, d.offset) for d in r.dead] == [("bad_sample_rate", 3, 17)]
    doc = json.loads(r.dead[0].to_json())
    assert doc["schema"] == "cardiowatch.deadletter/1" and doc["reason"] == "bad_sample_rate"


# -- stream-position and timing edge cases (found in review) -------------------------
def test_replaced_device_restarting_its_sequence_is_a_new_stream_not_duplicates(pipe):
    first = [e for e, _ in chunks("p-1", 30)]
    w = Wearable("p-1", "dev-NEW", SyntheticPatient("p-1x", 250), T0 + 31_000)
    second = [w.step()[0] for _ in range(30)]  # seq starts at 0 again
    msgs = as_msgs("p-1", first) + as_msgs("p-1", second, start_offset=30)
    scored, _, dead, st = run(pipe, msgs, batch=7)
    assert dead == []
    assert st["p-1"].device_id == "dev-NEW" and st["p-1"].gaps == 1
    assert [s for s in scored if s.r_ts_ms > T0 + 40_000]


def test_offsets_only_skip_within_the_same_partition(pipe):
    raw = [e for e, _ in chunks("p-1", 20)]
    _, _, _, st = run(pipe, [InMessage(b"p-1", v, 3, 100 + i) for i, v in enumerate(raw[:10])], batch=5)
    # after a repartition the patient's next chunks arrive on partition 0 at low offsets
    r = pipe.process([InMessage(b"p-1", v, 0, i) for i, v in enumerate(raw[10:])], st)
    assert r.redelivered == 0 and r.valid == 10 and not r.dead


def test_message_without_key_is_dead_lettered(pipe):
    raw = chunks("p-1", 1)[0][0]
    r = pipe.process([InMessage(None, raw, 0, 0)], {})
    assert [d.reason for d in r.dead] == ["missing_key"]


def test_gap_in_a_batch_neither_moves_nor_drops_the_beats_before_it(pipe, bundle):
    raw = [e for e, _ in chunks("p-1", 45)]
    kept = raw[:20] + raw[25:]
    ids = []
    for batch in (1, 39):
        p = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
        scored, _, _, _ = run(p, as_msgs("p-1", kept), batch=batch)
        ids.append([s.beat_id for s in scored])
    assert ids[0] == ids[1]
    before_gap = [int(i.split(":")[1]) for i in ids[0] if int(i.split(":")[1]) < T0 + 20_000]
    assert max(before_gap) > T0 + 18_500  # the last beats before the hole were emitted


def test_transmission_gap_is_not_a_pause(pipe):
    raw = [e for e, _ in chunks("p-1", 60)]
    kept = raw[:30] + raw[35:]  # 5 s of messages lost
    _, alerts, _, _ = run(pipe, as_msgs("p-1", kept), batch=4)
    assert [a for a in alerts if a.condition == "pause"] == []


@pytest.mark.parametrize("batch", [1, 10, 30])
def test_pause_alarm_timing_does_not_depend_on_batch_size(bundle, batch):
    p = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
    raw = [e for e, _ in chunks("p-1", 60, [Event("pause", 30, 6)])]
    _, alerts, _, _ = run(p, as_msgs("p-1", raw), batch=batch)
    pauses = [a for a in alerts if a.condition == "pause" and a.action == "raised"]
    assert len(pauses) == 1
    assert T0 + 34_000 <= pauses[0].detected_ts_ms <= T0 + 35_000


def test_sinus_pause_shorter_than_the_limit_raises_nothing(pipe):
    raw = [e for e, _ in chunks("p-1", 60, [Event("pause", 30, 2.6)])]
    _, alerts, _, _ = run(pipe, as_msgs("p-1", raw), batch=3)
    assert [a for a in alerts if a.condition == "pause"] == []


def test_oversized_dead_letter_keeps_head_and_digest():
    import hashlib

    from streaming.pipeline import DEADLETTER_RAW_MAX, DeadLetter

    raw = b"x" * (DEADLETTER_RAW_MAX + 300_000)
    doc = json.loads(DeadLetter("ecg", "oversized_payload", "too big", b"p", raw, 0, 1).to_json())
    assert doc["raw_truncated"] is True and doc["raw_size"] == len(raw)
    assert doc["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert len(json.dumps(doc)) < 1_000_000  # fits Kafka's default record size


def test_heart_rate_only_patient_gets_no_data_after_silence():
    hr = build_hr_pipeline(None, build_policy(None), clock_ms=lambda: T0)
    msgs = [InMessage(b"w-1", encode_hr("w-1", "watch", i, T0 + 1000 * i, 70, [850]), 0, i)
            for i in range(5)]
    st = hr.process(msgs, {}).states["w-1"]
    wall = 1_800_000_000_000
    alerts = []
    for k in range(8):  # ticks every 5 s of wall time, no new messages
        ev, st = hr.tick(st, wall + 5000 * k)
        alerts += ev
    nd = [a for a in alerts if a.condition == "no_data"]
    assert len(nd) == 1 and nd[0].category == "technical"
    assert HRPatientState.from_bytes(st.to_bytes(hr.policy), hr.policy).to_bytes(hr.policy) == st.to_bytes(hr.policy)


# ---------------------------------------------------------------- VF windows
FLUTTER_AT_S = 40


def _sinus_then_flutter(seconds: int = 80, flutter_hz: float = 4.5, amp_mv: float = 0.8):
    """A synthetic patient in sinus rhythm, then from FLUTTER_AT_S a 4.5 Hz flutter-like
    oscillation (no beats)."""
    from models.records import Record
    from models.synthetic import synth_ecg
    from services.simulator import RecordSource

    rec = synth_ecg(seconds, sample_rate_hz=250, seed=4)
    x = rec.signal_mv.copy()
    t = np.arange(x.size) / 250.0
    on = t >= FLUTTER_AT_S
    x[on] = amp_mv * np.sin(2 * np.pi * flutter_hz * (t[on] - FLUTTER_AT_S))
    keep = rec.beat_samples < FLUTTER_AT_S * 250
    r = Record("flutter", x, 250.0, "synthetic", rec.beat_samples[keep], np.asarray(rec.beat_labels)[keep],
               np.array(["N" if s == "N" else "V" for s in np.asarray(rec.beat_labels)[keep]]), ())
    return RecordSource.from_record(r)


def _wire(pid: str, source, seconds: int):
    w = Wearable(pid, f"dev-{pid}", source, T0)
    return as_msgs(pid, [w.step()[0] for _ in range(seconds)])


def _run_vf(p, msgs, batch):
    states, obs, alerts = {}, [], []
    for i in range(0, len(msgs), batch):
        r = p.process(msgs[i:i + batch], states)
        states.update(r.states)
        obs += r.vf
        alerts += r.alerts
    return obs, alerts


@pytest.mark.parametrize("batch", [1, 7, 30])
def test_vf_windows_are_scored_on_the_stream_grid_and_alarm_within_10_s(bundle, batch):
    msgs = _wire("p-vf", _sinus_then_flutter(), 80)
    p = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
    assert p.vf_detector is not None, "the shipped ECG bundle ships a VF detector"
    obs, alerts = _run_vf(p, msgs, batch)
    # one 4 s window per second of stream time, ending on the second, from 4 s on
    assert [o.ts_ms - T0 for o in obs] == [1000 * s for s in range(4, 81)]
    assert all(o.duration_ms == 4000 and o.threshold == p.vf_detector.threshold for o in obs)
    assert all(o.quality == 0.0 for o in obs if o.ts_ms - 4000 < T0 + 3000)  # filter warm-up
    sinus = [o for o in obs if o.ts_ms <= T0 + FLUTTER_AT_S * 1000]
    assert sum(o.probability > o.threshold for o in sinus) == 0
    vf = [a for a in alerts if a.condition == "ventricular_fibrillation"]
    assert [(a.action, a.priority) for a in vf] == [("raised", "high")]
    assert 0 < vf[0].detected_ts_ms - (T0 + FLUTTER_AT_S * 1000) <= 10_000
    assert vf[0].strip is not None  # the ECG strip rides on the alert like any other
    # the scores do not depend on how chunks were batched (up to float rounding in the
    # batched matrix product)
    ref, _ = _run_vf(build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9), msgs, 80)
    np.testing.assert_allclose([o.probability for o in obs], [o.probability for o in ref], rtol=1e-9, atol=1e-15)


def test_vf_detector_is_called_once_per_batch(bundle):
    p = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
    real, calls = p.vf_detector, []

    class Counting:
        settings = real.settings

        threshold = real.threshold

        def score_features(self, features):  # the window features are computed once per batch
            calls.append(len(features))
            return real.score_features(features)

    p.vf_detector = Counting()
    a = _wire("p-a", _sinus_then_flutter(), 20)
    b = _wire("p-b", _sinus_then_flutter(), 20)
    r = p.process([m for pair in zip(a, b) for m in pair], {})
    assert calls == [2 * 17] and len(r.vf) == 34  # both patients' windows, 4..20 s, one call


def test_a_bundle_without_a_vf_detector_runs_without_it(bundle):
    from streaming.pipeline import ECGPipeline

    p0 = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
    p = ECGPipeline(p0.scorer, p0.model_version, p0.policy, p0.spec, p0.clock_ms)
    obs, alerts = _run_vf(p, _wire("p-vf", _sinus_then_flutter(), 60), 10)
    assert obs == [] and not [a for a in alerts if a.condition == "ventricular_fibrillation"]


# -- artefact detector ---------------------------------------------------------------------
def _constant_detector(threshold: float, consecutive: int = 1):
    """A window model that scores every window 0.5: above ``threshold`` 0.4 it calls every
    window noisy, at 0.6 none."""
    from models.ecg.vf import FEATURE_NAMES, VFDetector, VFSettings

    k = len(FEATURE_NAMES)
    return VFDetector(np.zeros(k), 0.0, np.zeros(k), np.ones(k),
                      VFSettings(threshold=threshold, min_ptp_mv=0.0, consecutive=consecutive))


def _with_artefact(bundle, threshold, consecutive: int = 1):
    from streaming.pipeline import ECGPipeline

    p0 = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
    return ECGPipeline(p0.scorer, p0.model_version, p0.policy, p0.spec, p0.clock_ms, vf_detector=p0.vf_detector,
                       artefact_detector=_constant_detector(threshold, consecutive))


def test_chunks_the_artefact_detector_calls_noisy_suppress_ecg_alarms_and_raise_a_technical_alert(bundle):
    msgs = as_msgs("p-n", [e for e, _ in chunks("p-n", 90, [Event("vrun", 50, 6)], seed=3)])
    quiet, q_alerts, _, _ = run(_with_artefact(bundle, 0.6), msgs, batch=10)
    assert any(a.condition == "ventricular_run" for a in q_alerts), "the run alarms when no window is noisy"
    p = _with_artefact(bundle, 0.4)
    states, qual, alerts = {}, [], []
    for i in range(0, len(msgs), 10):
        r = p.process(msgs[i:i + 10], states)
        states.update(r.states)
        qual += r.quality
        alerts += r.alerts
    # every chunk from the first full window (4 s) on is reported noisy
    assert all(q.noisy for q in qual[4:]) and not any(q.noisy for q in qual[:3])
    assert not [a for a in alerts if a.category == "physiological"]
    assert any(a.condition == "signal_noisy" for a in alerts)


@pytest.mark.parametrize("batch", [1, 3, 10])
def test_a_chunk_is_noisy_from_the_consecutive_th_window_in_a_row_whatever_the_batching(bundle, batch):
    msgs = as_msgs("p-n", [e for e, _ in chunks("p-n", 12, seed=3)])
    p = _with_artefact(bundle, 0.4, consecutive=3)
    states, qual = {}, []
    for i in range(0, len(msgs), batch):
        r = p.process(msgs[i:i + batch], states)
        states.update(r.states)
        qual += r.quality
    # windows end at 4, 5, 6 ... s: the third in a row ends in the 6th chunk
    assert [q.noisy for q in qual] == [False] * 5 + [True] * 7
    blob = states["p-n"].to_bytes(p.policy)
    assert ECGPatientState.from_bytes(blob, p.policy).art_run == states["p-n"].art_run == 9


def test_the_artefact_and_vf_detectors_share_one_window_grid(bundle):
    from models.ecg.vf import VFSettings
    from streaming.pipeline import ECGPipeline

    p0 = build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9)
    other = _constant_detector(0.5)
    other = type(other)(other.coef, other.intercept, other.mean, other.scale,
                        VFSettings(hop_s=2.0, threshold=0.5))
    with pytest.raises(ValueError, match="one window grid"):
        ECGPipeline(p0.scorer, p0.model_version, p0.policy, p0.spec, p0.clock_ms, vf_detector=p0.vf_detector,
                    artefact_detector=other)


# -- atrial fibrillation on the heart-rate stream ---------------------------------------
@pytest.fixture(scope="module")
def af_detector():
    """A small AF detector trained here on synthetic RR (the pipeline's contract, not
    the shipped model's accuracy)."""
    from models.episodes import TruthEpisodes
    from models.hr.af import AFDetector
    from models.hr.af_train import af_rows, fit_af
    from models.hr.data import RRSeries

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        rr = np.concatenate([0.8 + 0.01 * rng.standard_normal(400), rng.uniform(0.4, 1.0, 400)])
        af = np.arange(rr.size) >= 400
        s = RRSeries(f"x/{i}", np.cumsum(rr), rr, np.where(af, "AFIB", "N"), np.full(rr.size, "N"),
                     np.zeros(rr.size, bool), float(rr.sum()), TruthEpisodes())
        rows.append(af_rows(s, step=2))
    return AFDetector(fit_af(rows, n_trees=20, sinus_step=1, params={"min_data_in_leaf": 20}).ensemble, 0.5)


def _hr_msgs(pid: str, rr_s, start_seq: int = 0, quality: float | None = None):
    """One heart-rate message per second carrying the RR intervals that ended in it."""
    t = np.cumsum(rr_s)
    out = []
    for sec in range(int(t[-1])):
        rr = [round(float(r) * 1000, 1) for r, e in zip(rr_s, t) if sec <= e < sec + 1]
        if rr:
            out.append(encode_hr(pid, f"d-{pid}", start_seq + len(out), T0 + sec * 1000, 60000 / np.mean(rr), rr,
                                 quality))
    return out


def test_hr_pipeline_scores_af_in_one_batched_call_and_opens_then_clears(af_detector):
    from streaming.pipeline import HRPipeline

    rng = np.random.default_rng(1)
    policy = build_policy(None)
    hr = HRPipeline(None, policy, step=8, clock_ms=lambda: T0, af=af_detector)
    af_rr = np.concatenate([0.8 + 0.01 * rng.standard_normal(100), rng.uniform(0.4, 1.0, 300),
                            0.8 + 0.01 * rng.standard_normal(400)])
    sinus_rr = 0.85 + 0.01 * rng.standard_normal(600)
    a, b = _hr_msgs("p-af", af_rr), _hr_msgs("p-ok", sinus_rr)
    msgs = [InMessage(pid.encode(), m, 0, i) for i, (pid, m) in
            enumerate(x for pair in zip([("p-af", m) for m in a], [("p-ok", m) for m in b]) for x in pair)]
    states: dict = {}
    obs, alerts, due = [], [], 0
    for i in range(0, len(msgs), 50):
        r = hr.process(msgs[i:i + 50], states)
        states.update(r.states)
        obs += r.observations
        alerts += r.alerts
        due += r.af_windows_scored
    scored = [o for o in obs if o.af_probability is not None]
    assert due == len(scored) > 0 and all(o.af_threshold == 0.5 for o in scored)
    # no probability before a full window of 64 RR intervals
    first = next(o for o in obs if o.patient_id == "p-ok" and o.af_probability is not None)
    assert first.ts_ms - T0 >= 63 * 0.8 * 1000
    af = [(a.action, (a.detected_ts_ms - T0) / 1000) for a in alerts if a.patient_id == "p-af"]
    assert [x for x, _ in af] == ["raised", "cleared"]
    af_start, af_end = float(np.sum(af_rr[:100])), float(np.sum(af_rr[:400]))
    # opens within a minute of AF's start; clears clear_s (180 s) after the 64-beat window
    # has left the AF, i.e. within ~4 min of its end
    assert af_start < af[0][1] < af_start + 60 and af_end + 180 < af[1][1] < af_end + 260
    assert not [x for x in alerts if x.patient_id == "p-ok"]
    st = states["p-af"]
    assert len(st.rr_ms) == hr.history == 128  # the history kept in the changelog is bounded
    assert HRPatientState.from_bytes(st.to_bytes(policy), policy).rr_ms == st.rr_ms


def test_hr_pipeline_af_does_not_depend_on_batching_and_skips_unusable_readings(af_detector):
    from streaming.pipeline import HRPipeline

    rng = np.random.default_rng(2)
    rr = rng.uniform(0.4, 1.0, 200)
    raw = _hr_msgs("p-1", rr)
    msgs = [InMessage(b"p-1", m, 0, i) for i, m in enumerate(raw)]

    def probs(batch: int) -> list:
        hr = HRPipeline(None, build_policy(None), step=8, clock_ms=lambda: T0, af=af_detector)
        states: dict = {}
        out = []
        for i in range(0, len(msgs), batch):
            r = hr.process(msgs[i:i + batch], states)
            states.update(r.states)
            out += [o.af_probability for o in r.observations]
        return out

    one, many = probs(1), probs(37)
    # same windows scored, same probabilities up to float rounding of the batched sum
    assert [p is None for p in one] == [p is None for p in many]
    np.testing.assert_allclose([p for p in one if p is not None], [p for p in many if p is not None], rtol=1e-12)
    # a strap reporting poor quality: its RR intervals never enter the history
    hr = HRPipeline(None, build_policy(None), step=8, clock_ms=lambda: T0, af=af_detector)
    poor = _hr_msgs("p-2", rr, quality=0.0)
    r = hr.process([InMessage(b"p-2", m, 0, i) for i, m in enumerate(poor)], {})
    assert r.states["p-2"].rr_ms == [] and r.af_windows_scored == 0 and r.alerts == []
