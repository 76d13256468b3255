"""Fuzz the state decoders: the per-patient ECG and heart-rate stream states (changelog
values) and the alert-policy state inside them.

Property: any bytes end in a state whose fields have their declared types (so the agent
can go on with it) or a :class:`~streaming.errors.StateDecodeError`; never another
exception. A decoded state re-encodes, and decodes again to the same bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_support import fuzz_settings, json_values, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from models.beats import ECGFrontEnd
from streaming.errors import PolicyStateError, StateDecodeError
from streaming.events import HRObservation, ScoredBeat
from streaming.pipeline import ECGPatientState, HRPatientState
from streaming.policy import AlertPolicy, PatientPolicyState
from streaming.position import StreamPosition

TS = 1_767_225_600_000
POLICY = AlertPolicy()
_V1 = json.loads((Path(__file__).parents[1] / "unit" / "streaming" / "data" / "policy_state_v1.json").read_text())
SEED_POLICY_STATE = POLICY.state_from_json(json.dumps(_V1["state"]))  # migrated: open alerts and all
POLICY_DOC: dict[str, Any] = json.loads(POLICY.state_to_json(SEED_POLICY_STATE))


def _front() -> Any:
    fe = ECGFrontEnd(250.0)
    _, state = fe.process(fe.initial_state(), np.sin(np.linspace(0, 40, 500)))
    return state


def _pos() -> StreamPosition:
    return StreamPosition(3, float(TS), 10, 0, "d-1", [[0, TS, 3, TS + 3000]], [4, TS + 4000, TS + 5000])


ECG_STATE = ECGPatientState(patient_id="p-1", device_id="d-1", pos=_pos(), sample_rate_hz=250.0,
                            seg_t0_ms=float(TS), front=_front(), policy=SEED_POLICY_STATE,
                            strip=np.linspace(-1, 1, 16, dtype=np.float32), strip_end_ms=TS + 1.0,
                            gaps=1, beats_scored=12)
HR_STATE = HRPatientState(patient_id="p-1", device_id="d-1", pos=_pos(), rr_ms=[800.0, 810.5], new_rr=2,
                          policy=SEED_POLICY_STATE)
ECG_BYTES = ECG_STATE.to_bytes(POLICY)
HR_BYTES = HR_STATE.to_bytes(POLICY)


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<I", raw)
    return json.loads(raw[4:4 + n]), raw[4 + n:]


def _join(header: Any, rest: bytes) -> bytes:
    h = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<I", len(h)) + h + rest


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """A stored state with its header's fields mutated, its bytes flipped, cut or grown."""
    kind = draw(st.sampled_from(["header", "bytes", "cut", "grow"]))
    if kind == "header":
        header, rest = _split(raw)
        return _join(draw(mutated(header)), rest)
    if kind == "bytes":
        b = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if kind == "cut":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    return raw + draw(st.binary(min_size=1, max_size=40))


def _check_decoded_state(state: Any, kind: type) -> None:
    assert isinstance(state, kind)
    assert isinstance(state.patient_id, str) and isinstance(state.device_id, str)
    p = state.pos
    assert p.last_seq is None or (isinstance(p.last_seq, (int, float)) and not isinstance(p.last_seq, bool))
    assert isinstance(p.last_offset, (int, float)) and all(len(r) == 4 for r in p.runs)
    assert p.held is None or len(p.held) == 3
    assert state.policy is None or isinstance(state.policy, PatientPolicyState)
    again = state.to_bytes(POLICY)
    assert kind.from_bytes(again, POLICY).to_bytes(POLICY) == again


@fuzz_settings(400)
@given(raw=st.one_of(st.binary(max_size=200), damaged(ECG_BYTES)))
@example(raw=_join({**_split(ECG_BYTES)[0], "gaps": "1"}, _split(ECG_BYTES)[1]))   # regression: accepted
@example(raw=_join({**_split(ECG_BYTES)[0], "held": [1]}, _split(ECG_BYTES)[1]))   # regression: IndexError later
@example(raw=_join({**_split(ECG_BYTES)[0], "held": []}, _split(ECG_BYTES)[1]))    # found at 3000 cases
@example(raw=ECG_BYTES[:3])                                                        # regression: struct.error
@example(raw=_join([], b""))                                                       # regression: TypeError
def test_ecg_state_decoder(raw: bytes) -> None:
    try:
        state = ECGPatientState.from_bytes(raw, POLICY)
    except StateDecodeError as e:
        assert str(e)
        return
    _check_decoded_state(state, ECGPatientState)
    assert isinstance(state.gaps, int) and isinstance(state.beats_scored, int)


@fuzz_settings(400)
@given(raw=st.one_of(st.binary(max_size=200), damaged(HR_BYTES)))
@example(raw=_join({**_split(HR_BYTES)[0], "rr_ms": ["800"]}, _split(HR_BYTES)[1]))  # regression: accepted
@example(raw=_join({**_split(HR_BYTES)[0], "rr_ms": 5}, _split(HR_BYTES)[1]))        # regression: TypeError
def test_hr_state_decoder(raw: bytes) -> None:
    try:
        state = HRPatientState.from_bytes(raw, POLICY)
    except StateDecodeError as e:
        assert str(e)
        return
    _check_decoded_state(state, HRPatientState)
    assert all(isinstance(v, (int, float)) for v in state.rr_ms) and isinstance(state.new_rr, int)


@fuzz_settings(400)
@given(doc=st.one_of(json_values, mutated(POLICY_DOC, ("conditions", "open_alerts", "cleared_at_ts_ms"))))
@example(doc={**POLICY_DOC, "conditions": {"tachycardia": {"since_ts_ms": "soon"}}})  # regression: accepted
@example(doc={**POLICY_DOC, "open_alerts": {"x": 5}})                                 # regression: TypeError
@example(doc={**POLICY_DOC, "quality_usable": "yes"})                                 # regression: accepted
@example(doc={**POLICY_DOC, "cleared_at_ts_ms": {"pause": None}})                     # regression: accepted
@example(doc={**POLICY_DOC, "conditions": {"anomalous_beats": {"recent_flags": [[1]]}}})  # found: ValueError in on_beats
def test_policy_state_decoder(doc: Any) -> None:
    raw = json.dumps(doc, allow_nan=True).encode()
    try:
        state = POLICY.state_from_json(raw)
    except PolicyStateError as e:
        assert str(e)
        return
    assert isinstance(state, PatientPolicyState)
    again = POLICY.state_to_json(state)
    assert POLICY.state_to_json(POLICY.state_from_json(again)) == again
    # the agent can go on with it: a beat, a heart rate and a tick, as after a restart
    t, pid = 1_700_000_090_000, state.patient_id
    _, state = POLICY.on_beats(state, [ScoredBeat(f"{pid}:1", pid, "d1", t, 450.0, 0.9, 0.3, True, 0.95, "m/1",
                                                  "V", 0.9, 0.9, 0.9)])
    _, state = POLICY.on_hr(state, HRObservation(pid, "d1", t + 500, 190.0, (450.0,), 0.9))
    POLICY.on_tick(state, t + 60_000, event_ts_ms=t + 1000)


def test_seed_states_decode() -> None:
    """The fuzzers start from real, decodable states (else they would test errors only)."""
    assert ECGPatientState.from_bytes(ECG_BYTES, POLICY).to_bytes(POLICY) == ECG_BYTES
    assert HRPatientState.from_bytes(HR_BYTES, POLICY).to_bytes(POLICY) == HR_BYTES
    assert SEED_POLICY_STATE.open_alerts and POLICY_DOC["conditions"]
