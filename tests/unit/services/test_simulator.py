"""The simulated wearable's two streams each number their own messages."""

from __future__ import annotations

import json

import pytest

from models.synthetic import Event, SyntheticPatient

from services.simulator import Wearable

T0 = 1_767_225_600_000


def test_ecg_and_heart_rate_sequences_are_each_gapless_even_through_a_pause():
    w = Wearable("p-1", "dev-1", SyntheticPatient("p-1", 250, events=[Event("pause", 20, 6)]), T0)
    ecg_seq, hr_seq = [], []
    for _ in range(40):
        e, h = w.step()
        ecg_seq.append(json.loads(e)["seq"])
        if h is not None:
            hr_seq.append(json.loads(h)["seq"])
    assert ecg_seq == list(range(40))
    # no heart rate without beats: fewer samples, but numbered without holes
    assert len(hr_seq) < 38 and hr_seq == list(range(len(hr_seq)))


def _record(tmp_path):
    from models.synthetic import synth_ecg, write_wfdb

    rec = synth_ecg(60, 250, seed=4, events=[Event("pvc", 20), Event("tachy", 30, 20, {"hr_bpm": 140})])
    write_wfdb(rec, tmp_path, "s1")
    return tmp_path


def test_rr_only_source_sends_the_same_heart_rate_messages_as_the_signal_record(tmp_path):
    from models.records import load_record

    from services.simulator import RecordSource, RRSource

    folder = _record(tmp_path)
    ann = load_record(folder, "s1").annotations()
    with_signal = Wearable("p-1", "dev-1", RecordSource(folder, "s1"), T0)
    rr_only = Wearable("p-1", "dev-1", RRSource.from_annotations(ann), T0)
    a, b = [], []
    while True:
        e, h = with_signal.step()
        if e is None:
            break
        a.append(h)
    while True:
        advanced, h = rr_only.step_rr()
        if not advanced:
            break
        b.append(h)
    assert len(a) == len(b) == 60
    assert a == b  # byte for byte: the same on-board beat detector
    msgs = [json.loads(h) for h in b if h is not None]
    assert msgs[0]["schema"] == "cardiowatch.hr/1"
    assert max(m["hr_bpm"] for m in msgs) > 125  # the tachycardia episode
    assert sum(len(m["rr_ms"]) for m in msgs) == ann.beat_samples.size - 1
    assert rr_only.seq == 0  # no ECG chunk was sent


def test_a_wearable_refuses_the_wrong_step_for_its_source(tmp_path):
    from models.records import load_record

    from services.simulator import RecordSource, RRSource

    folder = _record(tmp_path)
    rr = Wearable("p-1", "dev-1", RRSource.from_annotations(load_record(folder, "s1").annotations()), T0)
    with pytest.raises(TypeError, match="step_rr"):
        rr.step()
    sig = Wearable("p-1", "dev-1", RecordSource(folder, "s1"), T0)
    with pytest.raises(TypeError, match="RRSource"):
        sig.step_rr()


def test_replay_of_an_rr_only_source_runs_the_heart_rate_core_alone(tmp_path):
    from models.records import load_record

    from services.pipelines import build_hr_pipeline, build_policy
    from services.replay import replay
    from services.simulator import RRSource

    folder = _record(tmp_path)
    src = RRSource.from_annotations(load_record(folder, "s1").annotations())
    hr = build_hr_pipeline(None, build_policy(None))
    res = replay(src, "rec-s1", None, hr)
    assert res.chunks == 60 and not res.scored and not res.dead
    assert len(res.hr) >= 55 and max(o.hr_bpm for o in res.hr) > 125
    with pytest.raises(ValueError, match="ecg must be None"):
        replay(RRSource.from_annotations(load_record(folder, "s1").annotations()), "x", object(), hr)  # type: ignore[arg-type]


def _noisy_annotations():
    """An annotation-only day as nsr2db has them: 75 bpm sinus, and a noisy stretch where
    the annotators left the beats out, marked ``~``, with holes of 3 s between the beats
    they kept, so that a strap reporting those intervals would give ~20 bpm."""
    import numpy as np

    from models.records import BeatAnnotations

    fs = 128.0
    t = list(np.arange(1.0, 60.0, 0.8))  # 60 s of sinus
    noise = []
    for _ in range(10):  # 10 holes of 3 s, each with a beat kept between them
        noise.append(t[-1] + 1.5)
        t.append(t[-1] + 3.0)
        t.append(t[-1] + 0.8)
    t += list(np.arange(t[-1] + 0.8, t[-1] + 60.0, 0.8))  # sinus again
    samples = np.round(np.asarray(t) * fs).astype(np.int64)
    return BeatAnnotations("nz1", fs, samples, np.full(len(t), "N"), np.full(len(t), "N"), (), (),
                           int(samples[-1]) + 1, np.round(np.asarray(noise) * fs).astype(np.int64))


def test_rr_only_source_reports_poor_quality_in_annotated_noise_never_an_rr_across_it():
    import numpy as np

    from services.simulator import RRSource

    ann = _noisy_annotations()
    src = RRSource.from_annotations(ann)
    assert src.noise_spans_s.shape == (10, 2)
    w = Wearable("p-1", "dev-1", src, T0)
    msgs = []
    while True:
        advanced, h = w.step_rr()
        if not advanced:
            break
        if h is not None:
            msgs.append(json.loads(h))
    rr = [v for m in msgs for v in m["rr_ms"]]
    assert max(rr) < 1000  # no interval across a hole
    assert len(rr) == ann.beat_samples.size - 1 - int(ann.noisy_intervals().sum())
    poor = [m for m in msgs if m.get("quality") == 0.0]
    assert poor and all(m["rr_ms"] == [] for m in poor)
    hole_s = [(m["ts_ms"] - T0) / 1000 for m in poor]
    assert all(any(a - 1 <= s <= b for a, b in src.noise_spans_s) for s in hole_s)
    assert min(m["hr_bpm"] for m in msgs) > 70  # the rate estimate never saw a hole
    assert [m["seq"] for m in msgs] == list(range(len(msgs)))


def test_the_policy_stays_quiet_through_annotated_noise():
    from services.pipelines import build_hr_pipeline, build_policy
    from services.replay import replay
    from services.simulator import RRSource

    hr = build_hr_pipeline(None, build_policy(None))
    res = replay(RRSource.from_annotations(_noisy_annotations()), "rec-nz1", None, hr)
    assert res.alerts == []
    poor = [o for o in res.hr if o.quality == 0.0]
    assert len(poor) >= 10 and not res.dead
    # before the fix the strap reported the 3 s holes as RR: HR ~20 bpm, a HIGH bradycardia
    low = [o for o in res.hr if o.hr_bpm < 30]
    assert low == []


def test_a_wearable_on_ecg2_sends_binary_chunks_of_the_same_signal():
    import numpy as np

    from services.simulator import parse_args
    from streaming.schemas import ECG2_MAGIC, decode_ecg

    def source():
        return SyntheticPatient("p-1", 250, events=[Event("pvc", 3)], seed=2)

    a, b = Wearable("p-1", "dev-1", source(), T0), Wearable("p-1", "dev-1", source(), T0, wire="ecg/2")
    for _ in range(6):
        (ea, ha), (eb, hb) = a.step(), b.step()
        assert eb[:4] == ECG2_MAGIC and len(eb) * 2 < len(ea) and ha == hb
        ca, cb = decode_ecg(ea, b"p-1"), decode_ecg(eb, b"p-1")
        assert (ca.seq, ca.ts_ms, ca.sample_rate_hz, ca.leads) == (cb.seq, cb.ts_ms, cb.sample_rate_hz, cb.leads)
        np.testing.assert_allclose(ca.samples_mv, cb.samples_mv, rtol=0, atol=1e-12)
    assert parse_args(["--wire", "ecg/2"]).wire == "ecg/2" and parse_args([]).wire == "ecg/1"
    with pytest.raises(SystemExit):
        parse_args(["--wire", "ecg/3"])


def test_the_bench_load_generator_sends_either_wire_format():
    import numpy as np

    from services.bench_stream import _FastWearable, _Template
    from streaming.schemas import decode_ecg

    t = _Template(3, 4)
    a, b = _FastWearable("p-0001", t, T0, 1), _FastWearable("p-0001", t, T0, 1, "ecg/2")
    for _ in range(5):
        ca, cb = decode_ecg(a.step()[0], b"p-0001"), decode_ecg(b.step()[0], b"p-0001")
        assert (ca.seq, ca.ts_ms, ca.device_id, ca.leads) == (cb.seq, cb.ts_ms, cb.device_id, cb.leads)
        np.testing.assert_allclose(ca.samples_mv, cb.samples_mv, rtol=0, atol=1e-12)
