"""The shipped VF detector on a real ventricular fibrillation onset (cudb cu01), through the replayed stream."""

from __future__ import annotations

import pytest

from models.records import load_record
from services.pipelines import build_ecg_pipeline, build_policy, load_ecg_bundle
from services.replay import BASE_TS_MS, replay
from services.settings import DEFAULT_MODEL_DIR
from services.simulator import RecordSource


@pytest.mark.data
def test_shipped_detector_alarms_within_10_s_of_vf_onset_on_cu01(shared_data_dir) -> None:
    # Note: cu01 is one of the detector's two VF training patients, so this checks that the
    # shipped bundle and the stream deliver the alarm, not how it does on new patients
    # (README: leave-patient-out figures).
    rec = load_record(shared_data_dir / "cudb", "cu01")
    onset_s = next(s for s, sym in rec.vf_annotations if sym == "[") / rec.sample_rate_hz
    pipe = build_ecg_pipeline(load_ecg_bundle(DEFAULT_MODEL_DIR, "tflite"), build_policy(None),
                              clock_ms=lambda: BASE_TS_MS)
    out = replay(RecordSource.from_record(rec), "cu01", pipe, None)
    vf = [a for a in out.alerts if a.condition == "ventricular_fibrillation"]
    assert vf and vf[0].action == "raised" and vf[0].priority == "high"
    delay_s = (vf[0].detected_ts_ms - BASE_TS_MS) / 1000 - onset_s
    assert 0 < delay_s <= 10.0, delay_s
    assert vf[0].onset_ts_ms <= BASE_TS_MS + (onset_s + 1.0) * 1000  # the alert says when VF began
    # nothing before the onset, and one episode: VF lasts to the end of the record
    assert [a.action for a in vf] == ["raised"]
