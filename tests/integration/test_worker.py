"""The Faust worker end to end on the real broker: scoring, dead letters, crash recovery.

Each test runs ``cardiowatch worker`` as a separate process on fresh topics and
compares what lands in Kafka with a reference run of the same messages through the
same stream core in this process (the pipeline is deterministic, so beat ids match).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from models.synthetic import Event, SyntheticPatient
from streaming.errors import REASONS
from streaming.pipeline import InMessage
from streaming.schemas import encode_ecg, encode_hr

from services.pipelines import build_ecg_pipeline, build_policy, load_ecg_bundle
from services.settings import DEFAULT_MODEL_DIR
from services.simulator import Wearable
from worker_harness import WorkerProcess, produce, read_to_end, read_until, wait_for_no_lag

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000


def stream_for(patients: dict[str, list[Event]], seconds: int, seed_base: int = 0, wire: str = "ecg/1"):
    """ECG and HR messages of simulated wearables, in send order: (pid, ecg, hr|None)."""
    ws = [Wearable(pid, f"dev-{pid}", SyntheticPatient(pid, 250, hr_bpm=62 + 5 * i, events=evs), T0,
                   wire=wire)  # type: ignore[arg-type]
          for i, (pid, evs) in enumerate(patients.items())]
    out = []
    for _ in range(seconds):
        for w in ws:
            e, h = w.step()
            out.append((w.patient_id, e, h))
    return out


def reference(messages: list[tuple[str, bytes]], runtime: str = "keras"):
    """Beat ids, raised alerts and the scored beats by id, from the same core in this process."""
    pipe = build_ecg_pipeline(load_ecg_bundle(DEFAULT_MODEL_DIR, runtime), build_policy(None))
    states: dict = {}
    ids, alerts, beats = set(), [], {}
    offsets: Counter = Counter()
    for i in range(0, len(messages), 64):
        batch = []
        for pid, raw in messages[i:i + 64]:
            batch.append(InMessage(pid.encode(), raw, 0, offsets[pid]))
            offsets[pid] += 1
        r = pipe.process(batch, states)
        states.update(r.states)
        ids |= {s.beat_id for s in r.scored}
        beats.update({s.beat_id: s for s in r.scored})
        alerts += [a for a in r.alerts if a.action == "raised"]
    return ids, alerts, beats


@pytest.fixture
def worker_factory(kafka_broker, tmp_path: Path):
    started: list[WorkerProcess] = []

    def make(topics, app_id: str | None = None, workdir: Path | None = None,
             extra_env: dict[str, str] | None = None) -> WorkerProcess:
        w = WorkerProcess(kafka_broker.bootstrap, topics, workdir or tmp_path / "w",
                          app_id or f"test-worker-{uuid.uuid4().hex[:8]}", extra_env=extra_env)
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.stop()


def _bad_messages(n: int, valid: list[tuple[str, bytes]], rng: random.Random) -> list[tuple[bytes | None, bytes | None, str]]:
    """n malformed ECG messages of many kinds, each with the reason it must get."""
    kinds = []
    for i in range(n):
        pid = f"p-bad-{i % 7}"
        good = json.loads(valid[i % len(valid)][1])
        k = i % 10
        if k == 0:
            kinds.append((pid.encode(), b"{\"schema\": \"cardiowatch.ecg/1\", ", "malformed_json"))
        elif k == 1:
            kinds.append((pid.encode(), b"", "empty_payload"))
        elif k == 2:
            d = dict(good, patient_id=pid, samples=[[0.1, float("nan"), 0.2]])
            kinds.append((pid.encode(), json.dumps(d).encode(), "non_finite_sample"))
        elif k == 3:
            d = dict(good, patient_id=pid)
            del d["device_id"]
            kinds.append((pid.encode(), json.dumps(d).encode(), "missing_field"))
        elif k == 4:
            d = dict(good, patient_id=pid, sample_rate_hz=7)
            kinds.append((pid.encode(), json.dumps(d).encode(), "bad_sample_rate"))
        elif k == 5:
            d = dict(good, patient_id=pid, seq="twelve")
            kinds.append((pid.encode(), json.dumps(d).encode(), "wrong_type"))
        elif k == 6:
            kinds.append((pid.encode(), b"x" * (600 * 1024), "oversized_payload"))
        elif k == 7:
            d = dict(good, patient_id=pid)
            kinds.append((b"someone-else", json.dumps(d).encode(), "key_mismatch"))
        elif k == 8:
            d = dict(good, patient_id=pid, schema="cardiowatch.ecg/0")
            kinds.append((pid.encode(), json.dumps(d).encode(), "unsupported_schema"))
        else:
            d = dict(good, patient_id=pid, samples=[[0.1] * 10, [0.2] * 10], leads=["I"])
            kinds.append((pid.encode(), json.dumps(d).encode(), "bad_samples_length"))
    rng.shuffle(kinds)
    return kinds


def test_malformed_messages_reach_dead_letter_and_valid_chunks_are_all_scored(
        kafka_broker, make_topics, worker_factory):
    topics = make_topics(partitions=4)
    rng = random.Random(7)
    msgs = stream_for({"p-0001": [], "p-0002": [Event("pvc", 20), Event("pvc", 41)], "p-0003": []}, 90)
    valid = [(pid, e) for pid, e, _ in msgs]
    bad = _bad_messages(1000, valid, rng)
    # Duplicates of valid chunks (same seq again) are bad too, and must not disturb state.
    dups = [(pid.encode(), e, "duplicate_seq") for pid, e in valid[30:60:3]]
    expected_ids, _, _ = reference(valid)
    assert len(expected_ids) > 250

    records, bi = [], 0
    for j, (pid, e) in enumerate(valid):
        records.append((topics.ecg, pid.encode(), e))
        if 30 <= j < 60 and j % 3 == 0:
            records.append((topics.ecg, pid.encode(), e))  # the duplicate, right after
        for _ in range(4 if bi < len(bad) else 0):
            if bi < len(bad):
                k, v, _r = bad[bi]
                records.append((topics.ecg, k, v))
                bi += 1
    records += [(topics.ecg, k, v) for k, v, _ in bad[bi:]]
    worker_factory(topics)
    produce(kafka_broker.bootstrap, records)

    n_dead = len(bad) + len(dups)
    dead = read_until(kafka_broker.bootstrap, topics.deadletter, lambda r: len(r) >= n_dead, 240)
    scores = read_until(kafka_broker.bootstrap, topics.scores,
                        lambda r: {d["beat_id"] for _, d in r} >= expected_ids, 240)
    got = Counter(d["reason"] for _, d in dead)
    want = Counter(r for _, _, r in bad) + Counter(r for _, _, r in dups)
    assert got == want, f"dead-letter reasons {got} != {want}"
    assert all(d["reason"] in REASONS and d["detail"] for _, d in dead)
    # raw bytes are kept (records too big for Kafka keep their head and a sha256)
    import base64
    import hashlib

    def fingerprint(raw: bytes) -> tuple[int, str]:
        return len(raw), hashlib.sha256(raw).hexdigest()

    sent = Counter(fingerprint(v or b"") for _, v, _ in bad + dups)
    kept = Counter()
    for _, d in dead:
        raw = base64.b64decode(d["raw_b64"]) if d["raw_b64"] is not None else b""
        if d.get("raw_truncated"):
            assert len(raw) < d["raw_size"]
            kept[(d["raw_size"], d["raw_sha256"])] += 1
        else:
            kept[fingerprint(raw)] += 1
    assert kept == sent
    got_ids = {d["beat_id"] for _, d in scores}
    assert got_ids == expected_ids, f"missing {len(expected_ids - got_ids)}, extra {len(got_ids - expected_ids)}"


def test_binary_ecg2_chunks_are_scored_as_the_same_signal_in_ecg1(kafka_broker, make_topics, worker_factory):
    """Wearables sending ``cardiowatch.ecg/2`` (int16, 1 µV per count): the worker scores
    the same beats, with the same flags and scores, as the core scores the same signal
    sent as ``cardiowatch.ecg/1``; a broken binary chunk goes to the dead-letter topic
    with its reason and the stream goes on."""
    from streaming.schemas import ECG2_HEADER

    topics = make_topics(partitions=4)
    patients = {"p-0001": [Event("pvc", 15), Event("pvc", 27)], "p-0002": []}
    binary = stream_for(patients, 40, wire="ecg/2")
    as_json = stream_for(patients, 40)
    assert all(e[:4] == b"CWEC" for _, e, _ in binary)
    expected_ids, _, expected = reference([(pid, e) for pid, e, _ in as_json], runtime="tflite")
    assert len(expected_ids) > 60
    bad_pid, good, _ = binary[5]
    bad = good[:36] + ECG2_HEADER.pack(*ECG2_HEADER.unpack_from(good)[:-1], 0.0)[36:] + good[44:]  # scale 0
    records = [(topics.ecg, pid.encode(), e) for pid, e, _ in binary]
    records.insert(20, (topics.ecg, bad_pid.encode(), bad))
    worker_factory(topics, extra_env={"CARDIOWATCH_RUNTIME": "tflite"})
    produce(kafka_broker.bootstrap, records)
    scores = read_until(kafka_broker.bootstrap, topics.scores,
                        lambda r: {d["beat_id"] for _, d in r} >= expected_ids, 180)
    dead = read_until(kafka_broker.bootstrap, topics.deadletter, lambda r: len(r) >= 1, 60)
    got = {d["beat_id"]: d for _, d in scores}
    assert set(got) == expected_ids
    for bid, want in expected.items():
        assert (got[bid]["flagged"], got[bid]["beat_class"]) == (want.flagged, want.beat_class), bid
        assert got[bid]["score"] == pytest.approx(want.score, rel=1e-6), bid
    assert [(d["reason"], d["source_offset"] >= 0) for _, d in dead] == [("bad_scale", True)]
    assert "got 0.0" in dead[0][1]["detail"]


SLOW_CHANGELOG = Path(__file__).parent / "slow_changelog"
DROP_RECORD = Path(__file__).parent / "drop_record"


@pytest.mark.parametrize("drop_at", [25, 0])
def test_a_record_the_consumer_loses_is_read_back_from_the_log(kafka_broker, make_topics,
                                                               worker_factory, tmp_path, drop_at):
    """Faust loses one ECG record between fetch and agent (drop_record/sitecustomize.py);
    the worker notices the hole in the offsets, reads the record back from the log and
    scores every beat, with no sequence gap. ``drop_at=0``: the partition's very first
    record, before any patient state exists (the position comes from the consumer
    group's start)."""
    from streaming.app import partition_of

    topics = make_topics(partitions=4)
    patients = {"p-0001": [Event("pvc", 20, 1)], "p-0002": [], "p-0003": []}
    msgs = stream_for(patients, 60)
    valid = [(pid, e) for pid, e, _ in msgs]
    expected_ids, _, _ = reference(valid)
    part = partition_of(b"p-0001", 4)
    assert sum(1 for pid, _ in valid if partition_of(pid.encode(), 4) == part) > drop_at + 5
    env = {"CARDIOWATCH_BATCH_MAX": "16", "CARDIOWATCH_TEST_DROP": f"{part}:{drop_at}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(DROP_RECORD), os.environ.get("PYTHONPATH")]))}
    w = worker_factory(topics, workdir=tmp_path / "drop", extra_env=env)
    produce(kafka_broker.bootstrap, [(topics.ecg, pid.encode(), e) for pid, e in valid])
    scores = read_until(kafka_broker.bootstrap, topics.scores,
                        lambda r: {d["beat_id"] for _, d in r} >= expected_ids, 180)
    got_ids = {d["beat_id"] for _, d in scores}
    assert got_ids == expected_ids, f"missing {sorted(expected_ids - got_ids)[:5]}\n{w.log_tail()}"
    assert _metric_value(w, "cardiowatch_records_read_back_total", {"stream": "ecg"}) >= 1
    assert _metric_value(w, "cardiowatch_sequence_gaps_total", {"stream": "ecg"}) == 0
    assert f"offsets {drop_at}..{drop_at} of {topics.ecg}[{part}]" in w.log_tail(200_000)


@pytest.mark.parametrize("changelog", ["prompt", "slow"])
def test_worker_killed_mid_stream_loses_no_beat_and_no_alert(kafka_broker, make_topics, worker_factory,
                                                             tmp_path, changelog):
    """SIGKILL mid-stream, restart: same beats, same alerts, no sequence gap. ``slow``:
    Faust's changelog sends lag (see slow_changelog/sitecustomize.py), so offsets
    committed ahead of the state would show up as a sequence gap and a lost pause.

    Both variants failed at times before the worker read back the records Faust drops
    at a restart (streaming/continuity.py): a beat or two missing, or a gap, right at
    the restart."""
    topics = make_topics(partitions=4)
    # Small batches: the whole stream is in Kafka before the worker starts, and with the
    # default 512 one batch would carry most of it, leaving little to resume.
    env = {"CARDIOWATCH_BATCH_MAX": "16"}
    if changelog == "slow":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SLOW_CHANGELOG), os.environ.get("PYTHONPATH")]))
    patients = {
        "p-0001": [Event("vrun", 40, 5)],
        "p-0002": [Event("pause", 60, 5)],
        "p-0003": [],
        "p-0004": [Event("vrun", 100, 4)],
    }
    msgs = stream_for(patients, 150)
    valid = [(pid, e) for pid, e, _ in msgs]
    expected_ids, expected_alerts, _ = reference(valid)
    assert {a.patient_id for a in expected_alerts if a.category == "physiological"} >= {"p-0001", "p-0002", "p-0004"}

    app_id = f"test-crash-{uuid.uuid4().hex[:8]}"
    w = worker_factory(topics, app_id=app_id, workdir=tmp_path / "crash", extra_env=env)
    produce(kafka_broker.bootstrap, [(topics.ecg, pid.encode(), e) for pid, e in valid]
            + [(topics.hr, pid.encode(), h) for pid, _, h in msgs if h is not None])
    # Kill it once it is well into the stream but not done.
    first = read_until(kafka_broker.bootstrap, topics.scores, lambda r: len(r) >= len(expected_ids) // 3, 240)
    assert len(first) >= len(expected_ids) // 3, w.log_tail()
    if changelog == "slow":
        time.sleep(2.0)  # past Faust's next commit (every 1 s) with state sends still queued
    w.kill()
    committed = _committed_offsets(kafka_broker.bootstrap, app_id)
    w2 = worker_factory(topics, app_id=app_id, workdir=tmp_path / "crash", extra_env=env)
    scores = read_until(kafka_broker.bootstrap, topics.scores,
                        lambda r: {d["beat_id"] for _, d in r} >= expected_ids, 300)
    got_ids = {d["beat_id"] for _, d in scores}
    assert got_ids == expected_ids, (f"missing {sorted(expected_ids - got_ids)[:5]}, "
                                     f"extra {sorted(got_ids - expected_ids)[:5]}\n{w2.log_tail()}")
    # every input record processed and committed: no gap or alert can still be on its way
    wait_for_no_lag(kafka_broker.bootstrap, app_id, [topics.ecg, topics.hr], 120)
    # The input has no sequence gap, so a gap after the restart means the worker lost
    # its place: a state older than the committed offsets, or records Faust dropped
    # while it resumed (see streaming/continuity.py).
    gaps = sum(_metric_value(w2, "cardiowatch_sequence_gaps_total", {"stream": s}) for s in ("ecg", "hr"))
    if gaps:
        log = (tmp_path / "crash" / "worker.log").read_text(errors="replace").splitlines()
        notes = "\n".join(line for line in log if "gap:" in line)
        pytest.fail(f"{gaps:.0f} sequence gaps after the restart; offsets committed at the kill: "
                    f"{committed}\n{notes}\n{w2.log_tail()}")
    raised = [d for _, d in read_to_end(kafka_broker.bootstrap, topics.alerts) if d["action"] == "raised"]
    _assert_alerts_kept(expected_alerts, raised, "across the crash")


def _committed_offsets(bootstrap: str, group: str) -> dict[str, int]:
    """The group's committed offsets as ``{"topic-suffix:partition": offset}``."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        got = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {f"{tp.topic.rsplit('.', 2)[-2]}:{tp.partition}": m.offset for tp, m in sorted(got.items())}


def _assert_alerts_kept(expected_alerts, raised: list[dict], why: str) -> None:
    for a in expected_alerts:
        if a.category != "physiological":
            continue
        near = [r for r in raised if r["patient_id"] == a.patient_id and r["condition"] == a.condition
                and abs(r["onset_ts_ms"] - a.onset_ts_ms) <= 3000]
        assert near, f"alert {a.alert_id} lost {why}; got {[r['alert_id'] for r in raised]}"


def _metric_value(w: WorkerProcess, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(w.metrics()):
        for smp in fam.samples:
            if smp.name == name and smp.labels == labels:
                return smp.value
    return 0.0


def test_second_worker_takes_over_partitions_with_their_state(kafka_broker, make_topics, worker_factory,
                                                              tmp_path):
    """Scale-out: a second worker joins the group mid-stream, takes some partitions and
    restores their patients' state from the changelog; the result is what one worker
    alone computes (same beats, same RR context and personal thresholds, same alerts)."""
    from streaming.app import partition_of

    topics = make_topics(partitions=4)
    patients = {"p-0001": [Event("vrun", 100, 5)], "p-0002": [Event("pause", 110, 5)],
                "p-0003": [], "p-0004": [Event("vrun", 120, 4)], "p-0005": [], "p-0006": []}
    assert len({partition_of(p.encode(), 4) for p in patients}) >= 3
    msgs = stream_for(patients, 150)
    valid = [(pid, e) for pid, e, _ in msgs]
    expected_ids, expected_alerts, expected_beats = reference(valid)
    assert {a.patient_id for a in expected_alerts if a.category == "physiological"} >= {"p-0001", "p-0002", "p-0004"}

    def records(part):
        return ([(topics.ecg, pid.encode(), e) for pid, e, _ in part]
                + [(topics.hr, pid.encode(), h) for pid, _, h in part if h is not None])

    app_id = f"test-scale-{uuid.uuid4().hex[:8]}"
    env = {"CARDIOWATCH_BATCH_MAX": "64"}
    a = worker_factory(topics, app_id=app_id, workdir=tmp_path / "a", extra_env=env)
    half = len(msgs) // 2  # 75 s of every patient: calibrated, before any event
    produce(kafka_broker.bootstrap, records(msgs[:half]))
    first_ids = {s.beat_id for s in expected_beats.values() if s.r_ts_ms < T0 + 70_000}
    read_until(kafka_broker.bootstrap, topics.scores, lambda r: {d["beat_id"] for _, d in r} >= first_ids, 240)

    b = worker_factory(topics, app_id=app_id, workdir=tmp_path / "b", extra_env=env)
    ecg_parts = {"topic": topics.ecg}
    deadline = time.monotonic() + 90
    while _metric_value(b, "cardiowatch_assigned_partitions", ecg_parts) < 1 \
            or _metric_value(a, "cardiowatch_assigned_partitions", ecg_parts) > 3:
        assert time.monotonic() < deadline, f"no rebalance onto the second worker\n{b.log_tail()}"
        time.sleep(1)
    produce(kafka_broker.bootstrap, records(msgs[half:]))
    scores = read_until(kafka_broker.bootstrap, topics.scores,
                        lambda r: {d["beat_id"] for _, d in r} >= expected_ids, 300)
    got = {d["beat_id"]: d for _, d in scores}
    assert set(got) == expected_ids
    assert _metric_value(b, "cardiowatch_messages_in_total", {"stream": "ecg"}) > 0, "second worker idle"
    # Continuity: a patient restarted from scratch would have a first beat without RR
    # and the uncalibrated threshold again.
    no_rr = {i for i, d in got.items() if d["rr_ms"] is None}
    assert no_rr == {i for i, s in expected_beats.items() if s.rr_ms is None}
    off = [i for i, d in got.items()
           if abs(d["threshold"] - expected_beats[i].threshold) > 1e-3 * expected_beats[i].threshold]
    assert not off, f"{len(off)} beats scored against another threshold, e.g. {off[:3]}"
    wait_for_no_lag(kafka_broker.bootstrap, app_id, [topics.ecg, topics.hr], 120)
    raised = [d for _, d in read_to_end(kafka_broker.bootstrap, topics.alerts) if d["action"] == "raised"]
    _assert_alerts_kept(expected_alerts, raised, "across the rebalance")
    for w in (a, b):
        for stream in ("ecg", "hr"):
            assert _metric_value(w, "cardiowatch_sequence_gaps_total", {"stream": stream}) == 0, stream


def test_ventricular_run_alerts_near_onset_and_normal_patient_has_none(kafka_broker, make_topics, worker_factory):
    """Synthetic stand-in for the DS1 / qtdb test (which needs ../shared/data)."""
    topics = make_topics(partitions=4)
    msgs = stream_for({"p-0001": [Event("vrun", 60, 6)], "p-0002": []}, 15 * 60)
    w = worker_factory(topics)
    produce(kafka_broker.bootstrap, [(topics.ecg, pid.encode(), e) for pid, e, _ in msgs]
            + [(topics.hr, pid.encode(), h) for pid, _, h in msgs if h is not None])
    expected_scores = sum(1 for _ in msgs) // 2 * 0.9  # ~1 beat/s/patient
    read_until(kafka_broker.bootstrap, topics.scores, lambda r: len(r) >= expected_scores, 300)
    # the whole stream processed before asserting the normal patient got no alert
    wait_for_no_lag(kafka_broker.bootstrap, w.app_id, [topics.ecg, topics.hr], 300)
    alerts = [d for _, d in read_to_end(kafka_broker.bootstrap, topics.alerts)]
    phys = [a for a in alerts if a["category"] == "physiological" and a["action"] == "raised"]
    p1 = [a for a in phys if a["patient_id"] == "p-0001"]
    assert any(a["condition"] == "ventricular_run" and a["priority"] == "high"
               and abs(a["onset_ts_ms"] - (T0 + 60_000)) <= 5_000 for a in p1), p1
    assert not [a for a in phys if a["patient_id"] == "p-0002"], "false alert on the normal patient"


def _records_with(folder: Path, names: list[str]) -> list[str]:
    from models.records import list_records

    have = set(list_records(folder))
    return [n for n in names if n in have]


@pytest.mark.data
def test_ds1_ventricular_ectopy_record_alerts_near_annotations(kafka_broker, make_topics, worker_factory,
                                                               shared_data_dir):
    from models.records import load_record

    folder = shared_data_dir / "mitdb-ds1"
    names = _records_with(folder, ["119", "106", "208", "203"])
    assert names, f"no DS1 record with ventricular ectopy in {folder}"
    rec = load_record(folder, names[0])
    topics = make_topics(partitions=4)
    from services.simulator import RecordSource

    w = Wearable("rec", "dev", RecordSource(folder, names[0]), T0)
    msgs = []
    for _ in range(300):  # the first 5 minutes
        e, h = w.step()
        msgs.append((topics.ecg, b"rec", e))
        if h:
            msgs.append((topics.hr, b"rec", h))
    wp = worker_factory(topics)
    produce(kafka_broker.bootstrap, msgs)
    read_until(kafka_broker.bootstrap, topics.scores, lambda r: len(r) >= 250, 300)
    wait_for_no_lag(kafka_broker.bootstrap, wp.app_id, [topics.ecg, topics.hr], 300)
    alerts = [d for _, d in read_to_end(kafka_broker.bootstrap, topics.alerts)
              if d["category"] == "physiological" and d["action"] == "raised"]
    v_t = np.asarray(rec.beat_samples)[np.asarray(rec.aami_classes) == "V"] / rec.sample_rate_hz
    v_t = v_t[v_t < 300]
    assert len(v_t), "record has no V beats in its first 5 minutes"
    assert alerts, "no alert for a record with ventricular ectopy"
    for a in alerts:
        t = (a["onset_ts_ms"] - T0) / 1000
        assert np.min(np.abs(v_t - t)) <= 10.0, f"alert at {t:.1f}s is not near any V beat"


@pytest.mark.data
def test_qtdb_normal_record_full_15_minutes_raises_no_alert(kafka_broker, make_topics, worker_factory,
                                                            shared_data_dir):
    from services.simulator import RecordSource

    folder = shared_data_dir / "qtdb"
    names = _records_with(folder, ["sel16265", "sel16272", "sel16273", "sel16420", "sel16483"])
    assert names, f"no normal-rhythm qtdb record in {folder}"
    topics = make_topics(partitions=4)
    w = Wearable("rec", "dev", RecordSource(folder, names[0]), T0)
    msgs = []
    while True:
        e, h = w.step()
        if e is None:
            break
        msgs.append((topics.ecg, b"rec", e))
        if h:
            msgs.append((topics.hr, b"rec", h))
    assert len([m for m in msgs if m[0] == topics.ecg]) >= 890  # the full ~15 minutes
    wp = worker_factory(topics)
    produce(kafka_broker.bootstrap, msgs)
    read_until(kafka_broker.bootstrap, topics.scores, lambda r: len(r) >= 800, 300)
    # all 15 minutes processed, not merely the first 800 beats, before asserting no alert
    wait_for_no_lag(kafka_broker.bootstrap, wp.app_id, [topics.ecg, topics.hr], 300)
    phys = [d for _, d in read_to_end(kafka_broker.bootstrap, topics.alerts)
            if d["category"] == "physiological" and d["action"] == "raised"]
    assert phys == [], phys
