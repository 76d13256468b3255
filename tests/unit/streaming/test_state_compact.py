"""The compact per-patient state (ECG version 4, heart-rate version 3): what it stores,
that a round trip through bytes every chunk changes no output of the pipeline (synthetic
and real records), and that states written by the previous release still load and
continue as they would have."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.synthetic import Event, SyntheticPatient
from streaming.errors import StateDecodeError
from streaming.pipeline import (
    ECG_STATE_MAGIC,
    HR_STATE_MAGIC,
    SIGNAL_QUANTUM_MV,
    ECGPatientState,
    HRPatientState,
    InMessage,
)
from streaming.schemas import encode_ecg

from services.pipelines import build_ecg_pipeline, build_hr_pipeline, build_policy, load_ecg_bundle
from services.settings import DEFAULT_HR_MODEL_DIR, DEFAULT_MODEL_DIR
from services.simulator import Wearable

T0 = 1_767_225_600_000
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def bundle():
    return load_ecg_bundle(DEFAULT_MODEL_DIR, "tflite")


def _pipe(bundle, **kw):
    return build_ecg_pipeline(bundle, build_policy(None), clock_ms=lambda: T0 + 10**9, **kw)


def _outputs(r) -> tuple:
    """Everything a batch sends or counts (the dataclasses compare field by field, floats
    exactly)."""
    return (r.scored, r.alerts, [(d.reason, d.detail, d.offset) for d in r.dead], r.quality, r.vf,
            r.gap_notes, r.clock_events, r.valid, r.redelivered)


def replay(pipe, msgs: list[InMessage], batches: list[int], round_trip: bool) -> tuple[list, dict]:
    """Outputs batch by batch; with ``round_trip`` every state goes through bytes after
    every batch, as the worker's table and changelog keep it."""
    states: dict = {}
    out, i, k = [], 0, 0
    while i < len(msgs):
        n = batches[k % len(batches)]
        r = pipe.process(msgs[i:i + n], states)
        out.append(_outputs(r))
        if round_trip:
            states.update({pid: ECGPatientState.from_bytes(st.to_bytes(pipe.policy), pipe.policy)
                           for pid, st in r.states.items()})
        else:
            states.update(r.states)
        i, k = i + n, k + 1
    out.append(_outputs(pipe.flush(states)))
    return out, states


def _synthetic_stream(seconds: int) -> list[InMessage]:
    ws = [Wearable("p-a", "dev-a", SyntheticPatient("p-a", 250, events=[Event("pvc", 14), Event("vrun", 30, 5),
                                                                          Event("pause", 45, 4)], seed=3), T0),
          Wearable("p-b", "dev-b", SyntheticPatient("p-b", 360, events=[Event("lead_off", 20, 4)], seed=4), T0)]
    msgs, offsets = [], {"p-a": 0, "p-b": 0}
    for _ in range(seconds):
        for w in ws:
            e, _ = w.step()
            msgs.append(InMessage(w.patient_id.encode(), e, 0, offsets[w.patient_id]))
            offsets[w.patient_id] += 1
    return msgs


def test_round_trip_every_batch_gives_identical_outputs_synthetic(bundle) -> None:
    msgs = _synthetic_stream(70)
    a, sa = replay(_pipe(bundle), msgs, [1, 3, 2, 7], round_trip=False)
    b, sb = replay(_pipe(bundle), msgs, [1, 3, 2, 7], round_trip=True)
    assert a == b
    scored = [s for batch in a for s in batch[0]]
    alerts = [x for batch in a for x in batch[1]]
    assert len(scored) > 100 and {x.condition for x in alerts if x.action == "raised"} >= {"ventricular_run"}
    for pid in sa:
        assert sa[pid].to_bytes(_pipe(bundle).policy) == sb[pid].to_bytes(_pipe(bundle).policy)


def test_round_trip_every_chunk_gives_identical_outputs_on_a_real_record(bundle, shared_data_dir) -> None:
    """MIT-BIH 208 (frequent PVCs, couplets): four minutes, one chunk per batch, a state
    round trip after every chunk against none."""
    from models.records import load_record

    rec = load_record(shared_data_dir / "mitdb-ds1", "208")
    fs, n = rec.sample_rate_hz, int(rec.sample_rate_hz)
    msgs = [InMessage(b"p-208", encode_ecg("p-208", "dev", k, T0 + 1000 * k, fs, rec.signal_mv[k * n:(k + 1) * n][None, :]),
                      0, k) for k in range(240)]
    a, _ = replay(_pipe(bundle), msgs, [1], round_trip=False)
    b, _ = replay(_pipe(bundle), msgs, [1], round_trip=True)
    assert a == b
    scored = [s for batch in a for s in batch[0]]
    assert len(scored) > 300 and sum(s.beat_class == "V" for s in scored) > 20


def test_the_state_stores_the_signal_once_as_int16_counts(bundle) -> None:
    pipe = _pipe(bundle)
    msgs = _synthetic_stream(30)
    _, states = replay(pipe, msgs, [4], round_trip=True)
    st = states["p-a"]
    raw = st.to_bytes(pipe.policy)
    assert raw[:4] == ECG_STATE_MAGIC and raw[4] == 4
    buf = st.front.seg.buf
    # on the 1 µV grid, the strip is the buffer's tail (6 s at the model rate)
    assert np.array_equal((np.rint(buf.astype(np.float64) / SIGNAL_QUANTUM_MV) * SIGNAL_QUANTUM_MV).astype(np.float32), buf)
    assert len(st.strip) == 750 and np.array_equal(st.strip, buf[-750:])
    old = len(ECGPatientState.from_bytes((DATA / "ecg_state_v3.bin").read_bytes(), pipe.policy).strip) * 4
    # the buffer costs about one byte a sample, the strip nothing: under a quarter of v3
    assert len(raw) < 2_200 < 4 * buf.shape[0] + old
    # without the grid the same state still stores losslessly, as float32
    float_pipe = _pipe(bundle, signal_quantum_mv=None)
    _, fstates = replay(float_pipe, msgs, [4], round_trip=True)
    fraw = fstates["p-a"].to_bytes(pipe.policy)
    assert len(fraw) > len(raw) + 2000
    assert ECGPatientState.from_bytes(fraw, pipe.policy).to_bytes(pipe.policy) == fraw


def _old_fixture_stream() -> tuple[list[bytes], list[bytes]]:
    """The messages the old-release fixtures were made from and the 30 s that follow.

    ``data/ecg_state_v3.bin`` and ``data/hr_state_v2.bin``: the first 30 ECG and 29
    heart-rate messages of this stream, one message per batch at offsets 0.., through the
    pipelines of commit 88635a3 (TFLite runtime, default policy), then ``to_bytes``."""
    w = Wearable("p-old", "dev-old", SyntheticPatient("p-old", 250, events=[Event("pvc", 12), Event("pvc", 19)], seed=21),
                 T0)
    ecg, hr = [], []
    for _ in range(60):
        e, h = w.step()
        ecg.append(e)
        if h is not None:
            hr.append(h)
    return ecg, hr


def test_a_state_the_previous_release_wrote_loads_and_continues_as_it_would_have(bundle) -> None:
    """``ecg_state_v3.bin`` / ``hr_state_v2.bin`` were written by the release before the
    compact state (commit 88635a3) after 30 s of this stream. Loaded, and loaded then
    written again compactly and reloaded, they continue with identical outputs."""
    pipe = _pipe(bundle)
    policy = pipe.policy
    old = ECGPatientState.from_bytes((DATA / "ecg_state_v3.bin").read_bytes(), policy)
    assert old.beats_scored == 34 and old.pos.last_seq == 29 and len(old.strip) == 750
    again = ECGPatientState.from_bytes(old.to_bytes(policy), policy)
    ecg, hr = _old_fixture_stream()
    rest = [InMessage(b"p-old", e, 0, 30 + i) for i, e in enumerate(ecg[30:])]
    outs = []
    for start in (old, again):
        states, got = {"p-old": start}, []
        for i in range(0, len(rest), 3):
            r = pipe.process(rest[i:i + 3], states)
            states.update(r.states)
            got.append(_outputs(r))
        outs.append(got)
    assert outs[0] == outs[1]
    scored = [s for batch in outs[0] for s in batch[0]]
    assert len(scored) > 25 and not any(batch[2] for batch in outs[0])  # no dead letters, no gap
    assert not any(batch[5] for batch in outs[0])

    hr_pipe = build_hr_pipeline(DEFAULT_HR_MODEL_DIR, policy, "tflite", clock_ms=lambda: T0 + 10**9)
    hold = HRPatientState.from_bytes((DATA / "hr_state_v2.bin").read_bytes(), policy)
    hagain = HRPatientState.from_bytes(hold.to_bytes(policy), policy)
    assert hagain.rr_ms == hold.rr_ms and len(hold.rr_ms) > 20
    hmsgs = [InMessage(b"p-old", h, 0, 29 + i) for i, h in enumerate(hr[29:])]
    r1 = hr_pipe.process(hmsgs, {"p-old": hold})
    r2 = hr_pipe.process(hmsgs, {"p-old": hagain})
    assert (r1.observations, r1.alerts, r1.valid) == (r2.observations, r2.alerts, r2.valid) and r1.valid > 20


def test_rr_history_is_stored_as_integers_when_exact_and_float64_otherwise() -> None:
    from streaming.policy import AlertPolicy

    policy = AlertPolicy()
    for rr, most in (([830.4, 845.0, 1200.1] * 40, 650),        # 0.1 ms: int16 steps
                     ([150.0, 5000.3, 150.0] * 40, 900),        # steps beyond int16: int32 values
                     ([830.0, 2000.0], 400), ([830.123456789, 1 / 3], 500), ([], 400)):
        st = HRPatientState("p", "d", rr_ms=list(rr), new_rr=3, policy=policy.initial_state("p"))
        raw = st.to_bytes(policy)
        assert raw[:4] == HR_STATE_MAGIC and len(raw) < most, (rr[:2], len(raw))
        back = HRPatientState.from_bytes(raw, policy)
        assert back.rr_ms == list(rr) and all(type(v) is float for v in back.rr_ms)


def test_states_of_the_wrong_table_or_version_are_refused_by_name() -> None:
    from streaming.policy import AlertPolicy

    policy = AlertPolicy()
    hr = HRPatientState("p", "d", policy=policy.initial_state("p")).to_bytes(policy)
    ecg = ECGPatientState("p", policy=policy.initial_state("p")).to_bytes(policy)
    with pytest.raises(StateDecodeError, match="CWSH.*other stream"):
        ECGPatientState.from_bytes(hr, policy)
    with pytest.raises(StateDecodeError, match="CWSE.*other stream"):
        HRPatientState.from_bytes(ecg, policy)
    with pytest.raises(StateDecodeError, match="version must be 4, got 9"):
        ECGPatientState.from_bytes(ecg[:4] + b"\x09" + ecg[5:], policy)
    with pytest.raises(StateDecodeError, match="parts add up"):
        ECGPatientState.from_bytes(ecg + b"\x00", policy)
    with pytest.raises(StateDecodeError, match="deflated part"):
        ECGPatientState.from_bytes(ecg[:12], policy)
    with pytest.raises(StateDecodeError, match=r"deflated part \(\d+ bytes\) is corrupt"):
        ECGPatientState.from_bytes(ecg[:9] + b"garbage" + ecg[16:], policy)
    assert ECGPatientState.from_bytes(ecg, policy).to_bytes(policy) == ecg


def test_a_strip_that_is_not_the_buffers_tail_is_stored_on_its_own(bundle) -> None:
    pipe = _pipe(bundle)
    _, states = replay(pipe, _synthetic_stream(10), [5], round_trip=False)
    st = replace(states["p-a"], strip=np.linspace(-1, 1, 40, dtype=np.float32))
    back = ECGPatientState.from_bytes(st.to_bytes(pipe.policy), pipe.policy)
    assert np.array_equal(back.strip, st.strip) and back.front == st.front
