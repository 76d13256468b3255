"""Device reboots and clock jumps through the worker on the real broker (issue 11).

Four wearables stream ECG and heart rate for 90 s; at second 40 one reboots (its
sequence numbers restart at 1, its clock is fine), one has its clock set back 2 min,
one stamps a single second an hour ahead, and one is healthy. Every beat after each
fault must be scored, each fault may set aside at most one message per stream, and no
HIGH alarm may come of it.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from models.synthetic import SyntheticPatient
from streaming.pipeline import InMessage

from services.pipelines import build_ecg_pipeline, build_hr_pipeline, build_policy, load_ecg_bundle
from services.settings import DEFAULT_MODEL_DIR
from services.simulator import Wearable
from worker_harness import WorkerProcess, produce, read_all, read_until

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000
SECONDS = 90
FAULT_S = 40
HOUR_MS = 3_600_000
BACK_MS = 120_000


def _restamp(raw: bytes, seq: int | None = None, shift_ms: int = 0) -> bytes:
    d = json.loads(raw)
    if seq is not None:
        d["seq"] = seq
    d["ts_ms"] += shift_ms
    return json.dumps(d, separators=(",", ":")).encode()


def faulty_streams() -> list[tuple[str, bytes, bytes | None]]:
    """(patient, ECG chunk, heart-rate sample or None) in send order, faults applied."""
    pids = ["p-reboot", "p-back", "p-glitch", "p-ok"]
    ws = [Wearable(pid, f"dev-{pid}", SyntheticPatient(pid, 250, hr_bpm=64 + 4 * i, seed=i), T0)
          for i, pid in enumerate(pids)]
    hr_at_fault: dict[str, int] = {}
    out = []
    for k in range(SECONDS):
        for w in ws:
            pid = w.patient_id
            if k == FAULT_S:
                hr_at_fault[pid] = w.hr_seq
            e, h = w.step()
            assert e is not None
            if k >= FAULT_S and pid == "p-reboot":
                e = _restamp(e, seq=k - FAULT_S + 1)
                if h is not None:
                    h = _restamp(h, seq=json.loads(h)["seq"] - hr_at_fault[pid] + 1)
            elif k >= FAULT_S and pid == "p-back":
                e = _restamp(e, shift_ms=-BACK_MS)
                h = None if h is None else _restamp(h, shift_ms=-BACK_MS)
            elif k == FAULT_S and pid == "p-glitch":
                e = _restamp(e, shift_ms=HOUR_MS)
                h = None if h is None else _restamp(h, shift_ms=HOUR_MS)
            out.append((pid, e, h))
    return out


def reference(msgs: list[tuple[str, bytes, bytes | None]]) -> tuple[set[str], Counter]:
    """Beat ids, and set-aside messages per (stream, patient), from the same cores in
    this process."""
    pipe = build_ecg_pipeline(load_ecg_bundle(DEFAULT_MODEL_DIR, "tflite"), build_policy(None))
    hr = build_hr_pipeline(None, build_policy(None))
    states: dict = {}
    hr_states: dict = {}
    ids: set[str] = set()
    dead: Counter = Counter()
    for i in range(0, len(msgs), 32):
        part = list(enumerate(msgs[i:i + 32], start=i))
        r = pipe.process([InMessage(pid.encode(), e, 0, k) for k, (pid, e, _) in part], states)
        states.update(r.states)
        ids |= {s.beat_id for s in r.scored}
        h = hr.process([InMessage(pid.encode(), v, 0, k) for k, (pid, _, v) in part if v is not None],
                       hr_states)
        hr_states.update(h.states)
        dead.update((d.stream, (d.key or b"").decode()) for d in r.dead + h.dead)
    return ids, dead


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_reboot_and_clock_jumps_keep_every_beat_and_raise_no_false_alarm(
        kafka_broker, make_topics, tmp_path: Path):
    topics = make_topics(partitions=4)
    msgs = faulty_streams()
    expected_ids, ref_dead = reference(msgs)
    # the reference itself: one chunk set aside for the clock set back and for the
    # glitch, none for the reboot; beats after every fault
    assert ref_dead == Counter({("ecg", "p-back"): 1, ("ecg", "p-glitch"): 1,
                                ("hr", "p-back"): 1, ("hr", "p-glitch"): 1}), ref_dead
    after = {pid: {i for i in expected_ids if i.startswith(pid + ":")
                   and int(i.split(":")[1]) >= T0 + (FAULT_S + 1) * 1000 - (BACK_MS if pid == "p-back" else 0)}
             for pid in ("p-reboot", "p-back", "p-glitch")}
    assert all(len(v) >= 35 for v in after.values()), {k: len(v) for k, v in after.items()}

    w = WorkerProcess(kafka_broker.bootstrap, topics, tmp_path / "w",
                      f"test-clock-{uuid.uuid4().hex[:8]}").start()
    try:
        produce(kafka_broker.bootstrap, [(topics.ecg, pid.encode(), e) for pid, e, _ in msgs]
                + [(topics.hr, pid.encode(), h) for pid, _, h in msgs if h is not None])
        scores = read_until(kafka_broker.bootstrap, topics.scores,
                            lambda r: {d["beat_id"] for _, d in r} >= expected_ids, 300)
        got_ids = {d["beat_id"] for _, d in scores}
        assert got_ids == expected_ids, (
            f"missing {sorted(expected_ids - got_ids)[:5]}, extra {sorted(got_ids - expected_ids)[:5]}")
        # the heart-rate stream's faults are counted once its last sample is through
        metrics = ""
        for _ in range(60):
            metrics = w.metrics()
            if _metric(metrics, "cardiowatch_device_restarts_total", stream="hr") >= 1 and \
                    _metric(metrics, "cardiowatch_device_clock_jumps_total", stream="hr",
                            direction="forward") >= 1:
                break
            time.sleep(1)
        dead = read_all(kafka_broker.bootstrap, topics.deadletter)
        alerts = [d for _, d in read_all(kafka_broker.bootstrap, topics.alerts)]
    finally:
        w.stop()

    set_aside = Counter((d["stream"], json.loads(base64.b64decode(d["raw_b64"]))["patient_id"],
                         d["reason"]) for _, d in dead)
    assert set_aside == Counter({("ecg", "p-back", "out_of_order_ts"): 1,
                                 ("ecg", "p-glitch", "out_of_order_ts"): 1,
                                 ("hr", "p-back", "out_of_order_ts"): 1,
                                 ("hr", "p-glitch", "out_of_order_ts"): 1}), set_aside
    assert [a for a in alerts if a["priority"] == "high"] == []
    assert not [a for a in alerts if a["category"] == "physiological" and a["action"] == "raised"]
    for stream in ("ecg", "hr"):
        assert _metric(metrics, "cardiowatch_device_restarts_total", stream=stream) == 1
        assert _metric(metrics, "cardiowatch_device_clock_jumps_total", stream=stream,
                       direction="backward") == 1  # p-back's correction
        assert _metric(metrics, "cardiowatch_device_clock_jumps_total", stream=stream,
                       direction="forward") == 1  # p-glitch's hour-ahead message
    assert "device clock (ecg stream): patient p-reboot device dev-p-reboot" in w.log_tail(200_000)
