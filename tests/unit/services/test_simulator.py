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
