"""Fuzz the state decoders: the per-patient ECG and heart-rate stream states (changelog
values) and the alert-policy state inside them.

Property: any bytes end in a state whose fields have their declared types (so the agent
can go on with it) or a :class:`~streaming.errors.StateDecodeError`; never another
exception. A decoded state re-encodes, and decodes again to the same bytes. Both layouts
are fuzzed: the compact one every state is written in now (ECG version 4, heart-rate
version 3) and the older JSON-header one (ECG version 3, heart-rate version 2, as the
release before wrote them: ``tests/unit/streaming/data``) that still loads."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_support import fuzz_settings, json_values, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from models.beats import ECGFrontEnd
from streaming.errors import PolicyStateError, StateDecodeError
from streaming.events import HRObservation, ScoredBeat
from streaming.pipeline import ECG_STATE_MAGIC, HR_STATE_MAGIC, ECGPatientState, HRPatientState
from streaming.policy import AlertPolicy, PatientPolicyState
from streaming.position import StreamPosition

TS = 1_767_225_600_000
POLICY = AlertPolicy()
DATA = Path(__file__).parents[1] / "unit" / "streaming" / "data"
_V1 = json.loads((DATA / "policy_state_v1.json").read_text())
SEED_POLICY_STATE = POLICY.state_from_json(json.dumps(_V1["state"]))  # migrated: open alerts and all
POLICY_DOC: dict[str, Any] = json.loads(POLICY.state_to_json(SEED_POLICY_STATE))


def _front() -> Any:
    fe = ECGFrontEnd(250.0, quantum_mv=0.001)  # as the stream core runs it: int16 counts
    _, state = fe.process(fe.initial_state(), np.sin(np.linspace(0, 40, 500)))
    return state


def _pos() -> StreamPosition:
    return StreamPosition(3, float(TS), 10, 0, "d-1", [[0, TS, 3, TS + 3000]], [4, TS + 4000, TS + 5000])


FRONT = _front()
# the strip is the buffer's tail, as in the pipeline (stored once); a strip of its own too
ECG_STATE = ECGPatientState(patient_id="p-1", device_id="d-1", pos=_pos(), sample_rate_hz=250.0,
                            seg_t0_ms=float(TS), front=FRONT, policy=SEED_POLICY_STATE,
                            strip=FRONT.seg.buf[-200:].copy(), strip_end_ms=TS + 1.0, gaps=1, beats_scored=12)
ECG_STATE_OWN_STRIP = ECGPatientState(patient_id="p-1", device_id="d-1", pos=_pos(), sample_rate_hz=250.0,
                                      seg_t0_ms=float(TS), front=FRONT, policy=SEED_POLICY_STATE,
                                      strip=np.linspace(-1, 1, 16, dtype=np.float32), strip_end_ms=TS + 1.0,
                                      gaps=1, beats_scored=12)
HR_STATE = HRPatientState(patient_id="p-1", device_id="d-1", pos=_pos(), rr_ms=[800.0, 810.5], new_rr=2,
                          policy=SEED_POLICY_STATE)
ECG_BYTES = ECG_STATE.to_bytes(POLICY)
ECG_OWN_STRIP_BYTES = ECG_STATE_OWN_STRIP.to_bytes(POLICY)
HR_BYTES = HR_STATE.to_bytes(POLICY)
ECG_V3_BYTES = (DATA / "ecg_state_v3.bin").read_bytes()
HR_V2_BYTES = (DATA / "hr_state_v2.bin").read_bytes()


def _split(raw: bytes) -> tuple[dict[str, Any], Any]:
    """(header, the rest) of a stored state of either layout."""
    if raw[:4] in (ECG_STATE_MAGIC, HR_STATE_MAGIC):
        (n,) = struct.unpack_from("<I", raw, 5)
        body = zlib.decompress(raw[9:9 + n])
        (m,) = struct.unpack_from("<I", body)
        return json.loads(body[4:4 + m]), (raw[:5], body[4 + m:], raw[9 + n:])
    (n,) = struct.unpack_from("<I", raw)
    return json.loads(raw[4:4 + n]), raw[4 + n:]


def _join(header: Any, rest: Any) -> bytes:
    h = json.dumps(header, allow_nan=True).encode()
    if isinstance(rest, tuple):  # compact: the header goes back into the deflated part
        prefix, text, binary = rest
        z = zlib.compress(struct.pack("<I", len(h)) + h + text)
        return prefix + struct.pack("<I", len(z)) + z + binary
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
@given(raw=st.one_of(st.binary(max_size=200), damaged(ECG_BYTES), damaged(ECG_OWN_STRIP_BYTES), damaged(ECG_V3_BYTES)))
@example(raw=_join({**_split(ECG_BYTES)[0], "gaps": "1"}, _split(ECG_BYTES)[1]))   # regression: accepted
@example(raw=_join({**_split(ECG_BYTES)[0], "held": [1]}, _split(ECG_BYTES)[1]))   # regression: IndexError later
@example(raw=_join({**_split(ECG_BYTES)[0], "held": []}, _split(ECG_BYTES)[1]))    # found at 3000 cases
@example(raw=ECG_BYTES[:3])                                                        # regression: struct.error
@example(raw=_join([], b""))                                                       # regression: TypeError
@example(raw=_join({**_split(ECG_V3_BYTES)[0], "gaps": "1"}, _split(ECG_V3_BYTES)[1]))  # the older layout too
@example(raw=_join({**_split(ECG_BYTES)[0], "strip_n": 10**6}, _split(ECG_BYTES)[1]))   # a strip longer than the buffer
@example(raw=_join({**_split(ECG_BYTES)[0], "_bin": [["front", -1]]}, _split(ECG_BYTES)[1]))
@example(raw=HR_BYTES)                                                             # the other table's state
@example(raw=ECG_BYTES[:4] + b"\x09" + ECG_BYTES[5:])                              # another version
@example(raw=_join({**_split(ECG_BYTES)[0], "gaps": 0.0}, _split(ECG_BYTES)[1]))      # found: a float counter kept
@example(raw=_join({**_split(ECG_BYTES)[0], "gaps": 2.0**63}, _split(ECG_BYTES)[1]))  # found: written back unreadable
def test_ecg_state_decoder(raw: bytes) -> None:
    try:
        state = ECGPatientState.from_bytes(raw, POLICY)
    except StateDecodeError as e:
        assert str(e)
        return
    _check_decoded_state(state, ECGPatientState)
    assert isinstance(state.gaps, int) and isinstance(state.beats_scored, int)


@fuzz_settings(400)
@given(raw=st.one_of(st.binary(max_size=200), damaged(HR_BYTES), damaged(HR_V2_BYTES)))
@example(raw=_join({**_split(HR_BYTES)[0], "rr_ms": ["800"]}, _split(HR_BYTES)[1]))  # regression: accepted
@example(raw=_join({**_split(HR_BYTES)[0], "rr_ms": 5}, _split(HR_BYTES)[1]))        # regression: TypeError
@example(raw=_join({**_split(HR_V2_BYTES)[0], "rr_ms": 5}, _split(HR_V2_BYTES)[1]))  # the older layout
@example(raw=_join({**_split(HR_BYTES)[0], "rr_decimals": 7}, _split(HR_BYTES)[1]))
@example(raw=ECG_BYTES)                                                            # the other table's state
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
    for raw in (ECG_BYTES, ECG_OWN_STRIP_BYTES):
        assert ECGPatientState.from_bytes(raw, POLICY).to_bytes(POLICY) == raw
    assert HRPatientState.from_bytes(HR_BYTES, POLICY).to_bytes(POLICY) == HR_BYTES
    assert ECGPatientState.from_bytes(ECG_V3_BYTES, POLICY).front is not None
    assert HRPatientState.from_bytes(HR_V2_BYTES, POLICY).rr_ms
    assert len(ECG_BYTES) < len(ECG_OWN_STRIP_BYTES)  # the tail strip is not stored twice
    assert SEED_POLICY_STATE.open_alerts and POLICY_DOC["conditions"]
