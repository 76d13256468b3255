"""Benchmark: N simulated 250 Hz patients through the real broker and the Faust worker.

``cardiowatch bench stream --patients N --seconds S --json`` starts a local broker
(unless ``--bootstrap`` is given), one worker process and the simulator in real time,
reads every score back from the ``scores`` topic, and reports:

- sustained throughput: patients, ECG messages/s, samples/s, beats scored/s;
- event-to-score latency p50/p99: from a beat's R peak (event time, i.e. the wall time
  at which the wearable recorded it, since the simulator runs in real time) to the
  score record's broker timestamp. This includes the unavoidable wait for the samples
  after the R peak and for the chunk (1 s) to be sent;
- consumer lag at the start and end of the measured window and its slope;
- the model-only ceiling: beats/s the detector scores in batches with no streaming
  around it, measured in the same run, and the ratio of sustained to ceiling;
- bytes per patient-second on the raw ECG topic (message values as sent).

``--wire ecg/2`` sends the ECG as binary int16 chunks (``cardiowatch.ecg/2``) instead of
JSON (``cardiowatch.ecg/1``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from services.broker import LocalBroker, free_port
from services.settings import DEFAULT_MODEL_DIR, REPO_ROOT, KafkaSettings, Topics, without_kafka_security
from services.simulator import ECG2_SCALE_MV, Simulation, Wearable, Wire, make_producer, patient_ids, slot_offset_ms
from streaming.kafka_security import KafkaSecurity
from streaming.schemas import ECG2_HEADER
from models.cli_help import HelpFormatter

__all__ = ["main", "model_ceiling"]


def model_ceiling(model_dir: Path, runtime: str, seconds: float = 5.0, batch: int = 256) -> float:
    """Beats per second the detector alone scores, on realistic synthetic beats."""
    from models.beats import beat_features, segment_record
    from models.signal import preprocess_record
    from models.ecg.features import make_model_input
    from models.synthetic import synth_ecg

    from services.pipelines import beat_spec, load_ecg_bundle

    b = load_ecg_bundle(model_dir, runtime)
    rec = synth_ecg(120.0, 250, seed=11)
    beats = segment_record(preprocess_record(rec.signal_mv, 250), beat_spec(b))
    wf, rr = beat_features(beats)
    x = make_model_input(wf, rr, b.meta.input.normaliser)
    x = np.resize(x, (batch,) + x.shape[1:]).astype(np.float32)
    b.detector.score(x)  # warm-up (graph tracing)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b.detector.score(x)
        n += batch
    return n / (time.perf_counter() - t0)


class _Template:
    """Pre-encoded chunks of one synthetic patient, so the load generator costs little
    CPU next to the worker it measures (both share this machine's cores)."""

    def __init__(self, seed: int, seconds: int) -> None:
        from models.synthetic import SyntheticPatient

        src = SyntheticPatient(f"template-{seed}", 250, hr_bpm=60 + seed % 30, seed=seed)
        w = Wearable("t", "t", src, 0)
        self.samples: list[str] = []
        self.counts: list[bytes] = []  # the same samples as ecg/2 int16 counts
        self.hr: list[tuple[float, list[float]] | None] = []
        for _ in range(seconds):
            e, h = w.step()
            d = json.loads(e)
            self.samples.append(json.dumps(d["samples"], separators=(",", ":")))
            c = np.rint(np.asarray(d["samples"][0]) / ECG2_SCALE_MV).astype("<i2")
            self.counts.append(b"\x04MLII" + c.tobytes())
            hd = json.loads(h) if h else None
            self.hr.append((hd["hr_bpm"], hd["rr_ms"]) if hd else None)


class _FastWearable:
    """A wearable replaying a template in a loop with its own id, sequence and clock."""

    def __init__(self, patient_id: str, template: _Template, start_ts_ms: int, offset: int,
                 wire: Wire = "ecg/1") -> None:
        self.patient_id = patient_id
        self.t = template
        self.start_ts_ms = start_ts_ms
        self.seq = 0
        self.offset = offset
        self.wire = wire
        self._ids = patient_id.encode() + f"dev-{patient_id}".encode()

    def step(self) -> tuple[bytes, bytes | None]:
        i = (self.seq + self.offset) % len(self.t.samples)
        ts = self.start_ts_ms + self.seq * 1000
        pid = self.patient_id
        if self.wire == "ecg/2":
            head = ECG2_HEADER.pack(b"CWEC", 2, 0, 1, len(pid.encode()), len(self._ids) - len(pid.encode()), 0, 250,
                                    self.seq, ts, 250.0, ECG2_SCALE_MV)
            ecg = head + self._ids + self.t.counts[i]
        else:
            ecg = (f'{{"schema":"cardiowatch.ecg/1","patient_id":"{pid}","device_id":"dev-{pid}",'
                   f'"seq":{self.seq},"ts_ms":{ts},"sample_rate_hz":250,"leads":["MLII"],'
                   f'"units":"mV","samples":{self.t.samples[i]}}}').encode()
        hr = None
        if self.t.hr[i] is not None:
            bpm, rr = self.t.hr[i]
            hr = (f'{{"schema":"cardiowatch.hr/1","patient_id":"{pid}","device_id":"dev-{pid}",'
                  f'"seq":{self.seq},"ts_ms":{ts},"hr_bpm":{bpm},"rr_ms":{json.dumps(rr)}}}').encode()
        self.seq += 1
        return ecg, hr


def _histogram_quantile(port: int, name: str, q: float) -> float | None:
    """Quantile of a Prometheus histogram by linear interpolation inside its bucket."""
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = []
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == name + "_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    lo_le, lo_c = 0.0, 0.0
    for le, c in buckets:
        if c >= target:
            if le == float("inf"):
                return lo_le
            return lo_le + (le - lo_le) * ((target - lo_c) / (c - lo_c) if c > lo_c else 1.0)
        lo_le, lo_c = le, c
    return None


def _stage_means(port: int) -> dict[str, float]:
    """Mean wall time per batch of each worker stage (ms), from its histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(body):
        for smp in fam.samples:
            if smp.name == "cardiowatch_stage_latency_seconds_sum":
                sums[smp.labels["stage"]] = smp.value
            elif smp.name == "cardiowatch_stage_latency_seconds_count":
                counts[smp.labels["stage"]] = smp.value
    return {k: round(1000 * sums[k] / counts[k], 2) for k in sums if counts.get(k)}


def _scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


class _ScoreReader(threading.Thread):
    """Reads the scores topic and records (score broker timestamp - R peak time)."""

    def __init__(self, bootstrap: str, topic: str, security: KafkaSecurity) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest",
                                      enable_auto_commit=False, group_id=None,
                                      consumer_timeout_ms=500, **security.kafka_python_kwargs())
        self.latencies: list[tuple[float, float]] = []  # (receive wall s, latency s)
        self.ids: set[str] = set()
        self.stop_flag = False

    def run(self) -> None:
        while not self.stop_flag:
            for rec in self.consumer:
                d = json.loads(rec.value)
                self.ids.add(d["beat_id"])
                self.latencies.append((time.time(), rec.timestamp / 1000.0 - d["r_ts_ms"] / 1000.0))
                if self.stop_flag:
                    break
        self.consumer.close()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def run_bench(patients: int, seconds: float, warmup_s: float, bootstrap: str | None,
              model_dir: Path, runtime: str, partitions: int, progress: bool, wire: Wire = "ecg/1") -> dict:
    def say(msg: str) -> None:
        if progress:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="cardiowatch-bench-"))
    broker = None
    worker = None
    # A given broker: CARDIOWATCH_KAFKA_* say how to reach it (the worker reads the same).
    # The local one is plaintext, so those settings are dropped for it.
    base_env = dict(os.environ)
    security = KafkaSettings.from_env().security if bootstrap is not None else KafkaSecurity()
    try:
        if bootstrap is None:
            say("starting local broker")
            broker = LocalBroker(partitions=partitions, data_dir=work / "broker").start()
            bootstrap = broker.bootstrap
            base_env = without_kafka_security(base_env)
        say("measuring the model-only ceiling")
        ceiling = model_ceiling(model_dir, runtime)
        say(f"model-only ceiling: {ceiling:.0f} beats/s")
        wport = free_port()
        env = dict(base_env, CARDIOWATCH_BOOTSTRAP=bootstrap, CARDIOWATCH_PARTITIONS=str(partitions),
                   CARDIOWATCH_METRICS_PORT=str(wport), CARDIOWATCH_DATA_DIR=str(work / "worker"),
                   CARDIOWATCH_APP_ID=f"bench-{os.getpid()}-{int(time.time())}",
                   CARDIOWATCH_MODEL_DIR=str(model_dir), CARDIOWATCH_RUNTIME=runtime)
        worker = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--loglevel", "warning"],
                                  env=env, cwd=REPO_ROOT, stdout=open(work / "worker.log", "w"),
                                  stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                _scrape(wport)
                break
            except OSError:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("worker did not start:\n" + (work / "worker.log").read_text()[-3000:])
                time.sleep(0.5)
        time.sleep(3.0)
        reader = _ScoreReader(bootstrap, Topics().scores, security)
        reader.start()
        templates = [_Template(seed, 300) for seed in range(min(patients, 20))]
        start_ms = int(time.time() * 1000)
        # Each patient replays one of 20 five-minute synthetic templates from its own
        # starting point (so the load is not synchronised across patients).
        wearables = [_FastWearable(pid, templates[i % len(templates)], start_ms + slot_offset_ms(i),
                                   (i * 37) % 300, wire)
                     for i, pid in enumerate(patient_ids(patients))]
        sim = Simulation(wearables, make_producer(bootstrap, security), Topics().ecg, Topics().hr,
                         start_ms=start_ms)
        total_s = warmup_s + seconds
        say(f"streaming {patients} patients for {total_s:.0f} s ({warmup_s:.0f} s warm-up)")
        t = threading.Thread(target=sim.run, args=(total_s, False), daemon=True)
        t.start()
        time.sleep(warmup_s)
        m0, w0, sent0, bytes0 = _scrape(wport), time.time(), sim.sent_ecg, sim.sent_ecg_bytes
        lags = []
        while t.is_alive():
            t.join(2.0)
            m = _scrape(wport)
            lags.append((time.time() - w0, m.get("cardiowatch_consumer_lag_messages", 0.0)))
            say(f"t={time.time() - w0:5.1f}s in={m.get('cardiowatch_messages_in_total', 0) - m0.get('cardiowatch_messages_in_total', 0):.0f} "
                f"lag={lags[-1][1]:.0f} beats={m.get('cardiowatch_beats_scored_total', 0):.0f}")
        m1, w1, sent1, bytes1 = _scrape(wport), time.time(), sim.sent_ecg, sim.sent_ecg_bytes
        time.sleep(3.0)
        reader.stop_flag = True
        reader.join(5)
        el = w1 - w0
        msgs_in = m1.get("cardiowatch_messages_in_total", 0) - m0.get("cardiowatch_messages_in_total", 0)
        beats = m1.get("cardiowatch_beats_scored_total", 0) - m0.get("cardiowatch_beats_scored_total", 0)
        lat = np.array([x for w, x in reader.latencies if w0 <= w <= w1 + 3]) if reader.latencies else np.array([])
        slope = float(np.polyfit([a for a, _ in lags], [b for _, b in lags], 1)[0]) if len(lags) >= 3 else float("nan")
        result = {
            "patients": patients,
            "sample_rate_hz": 250,
            "seconds_measured": round(el, 1),
            "ecg_messages_sent_per_s": round((sent1 - sent0) / el, 1),
            # ECG chunks and heart-rate samples together, as the worker consumed them
            "messages_consumed_per_s": round(msgs_in / el, 1),
            "samples_per_s": round((sent1 - sent0) * 250 / el, 1),
            "wire": wire,
            "ecg_topic_bytes_per_patient_s": round((bytes1 - bytes0) / el / patients, 1),
            "beats_scored_per_s": round(beats / el, 1),
            "event_to_score_latency_s": {
                "p50": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
                "p99": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
                "n": int(lat.size),
            },
            # From a chunk's last sample to its outputs being in Kafka (whole run,
            # from the worker's histogram; bucket-interpolated).
            "chunk_to_output_latency_s": {
                "p50": _round(_histogram_quantile(wport, "cardiowatch_chunk_to_output_latency_seconds", 0.5)),
                "p99": _round(_histogram_quantile(wport, "cardiowatch_chunk_to_output_latency_seconds", 0.99)),
            },
            "worker_stage_mean_ms_per_batch": _stage_means(wport),
            "worker_batches": m1.get("cardiowatch_stage_latency_seconds_count", 0.0),
            "consumer_lag_messages": {"start": lags[0][1] if lags else None,
                                      "end": lags[-1][1] if lags else None,
                                      "slope_per_s": round(slope, 2)},
            "model_only_beats_per_s": round(ceiling, 1),
            "streaming_to_model_ratio": round(beats / el / ceiling, 4) if ceiling else None,
            "runtime": runtime,
            "cpu_count": os.cpu_count(),
        }
        result["sustained"] = bool(lags and slope < max(1.0, 0.01 * result["ecg_messages_sent_per_s"])
                                   and (lags[-1][1] < 2 * result["ecg_messages_sent_per_s"]))
        return result
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if broker is not None:
            broker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch bench stream", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--patients", type=int, default=100, help="simulated wearables")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window (after warm-up)")
    p.add_argument("--warmup-s", type=float, default=15.0, help="seconds streamed before measuring")
    p.add_argument("--bootstrap", help="use this broker instead of starting one")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="ECG model bundle")
    p.add_argument("--runtime", default="keras", choices=["keras", "tflite", "tflite-int8"], help="model runtime")
    p.add_argument("--partitions", type=int, default=8, help="partitions of each topic on the benchmark's broker")
    p.add_argument("--wire", choices=["ecg/1", "ecg/2"], default="ecg/1",
                   help="ECG wire format the load generator sends (ecg/1 is JSON)")
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    args = p.parse_args(argv)
    if args.patients < 1:
        p.error(f"--patients must be >= 1, got {args.patients}")
    res = run_bench(args.patients, args.seconds, args.warmup_s, args.bootstrap, args.model,
                    args.runtime, args.partitions, progress=True, wire=args.wire)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
