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
- the core-only ceiling: ECG chunks/s the stream core alone processes in this process
  (``bench core``'s loop), and the ratio of chunks the worker consumed to it;
- CPU cores kept busy by the worker, the broker and the load generator (this process),
  the worker's peak RSS, and bytes per patient-second appended to each topic's log
  segments (raw ECG and heart rate, scores, alerts, the state changelogs; local broker);
- bytes per patient-second on the raw ECG topic (message values as sent).

``--sweep 100,200,400,...`` runs once per patient count (each on a fresh local broker)
until a count is not sustained, prints a table, and writes ``sweep.json`` and
``sweep.png`` (latency and lag slope against patients). Every run's scratch folder is
removed when it ends (``--keep`` leaves them). Without arguments it prints its usage.

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
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services import bench_core
from services.bench_proc import cpu_seconds, peak_rss_mib, scratch_dir, topic_bytes
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


def _samples(port: int) -> list:
    """Every sample on the worker's ``/metrics`` page, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return [s for fam in text_string_to_metric_families(body) for s in fam.samples]


def _histogram_quantile(port: int, name: str, q: float) -> float | None:
    """Quantile of a Prometheus histogram by linear interpolation inside its bucket."""
    buckets = [(float(s.labels["le"]), s.value) for s in _samples(port) if s.name == name + "_bucket"]
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
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for smp in _samples(port):
        if smp.name == "cardiowatch_stage_latency_seconds_sum":
            sums[smp.labels["stage"]] = smp.value
        elif smp.name == "cardiowatch_stage_latency_seconds_count":
            counts[smp.labels["stage"]] = smp.value
    return {k: round(1000 * sums[k] / counts[k], 2) for k in sums if counts.get(k)}


def _scrape(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in _samples(port):
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


def _ecg_chunks_in(port: int) -> float:
    """ECG chunks the worker has consumed (``cardiowatch_messages_in_total{stream="ecg"}``)."""
    return sum(s.value for s in _samples(port)
               if s.name == "cardiowatch_messages_in_total" and s.labels.get("stream") == "ecg")


def _cpu_now(pids: dict[str, int | None]) -> dict[str, float | None]:
    return {name: (cpu_seconds(pid) if pid is not None else None) for name, pid in pids.items()}


def run_bench(patients: int, seconds: float, warmup_s: float, bootstrap: str | None,
              model_dir: Path, runtime: str, partitions: int, progress: bool, wire: Wire = "ecg/1",
              keep: bool = False) -> dict:
    """One run at ``patients``; its scratch folder (broker data, worker log) is removed
    afterwards unless ``keep`` (then ``result["kept"]`` names it)."""
    with scratch_dir("cardiowatch-bench-", keep) as work:
        res = _run_in(work, patients, seconds, warmup_s, bootstrap, model_dir, runtime, partitions, progress, wire)
        if keep:
            res["kept"] = str(work)
        return res


def _run_in(work: Path, patients: int, seconds: float, warmup_s: float, bootstrap: str | None,
            model_dir: Path, runtime: str, partitions: int, progress: bool, wire: Wire) -> dict:
    def say(msg: str) -> None:
        if progress:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

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
        core_patients = max(50, min(patients, 300))
        core = bench_core.run(core_patients, seconds=5, warmup_s=12, model=model_dir, runtime=runtime)
        say(f"core-only ceiling: {core['chunks_per_s']:.0f} chunks/s ({core_patients} patients, one process)")
        wport = free_port()
        app_id = f"bench-{os.getpid()}-{int(time.time())}"
        env = dict(base_env, CARDIOWATCH_BOOTSTRAP=bootstrap, CARDIOWATCH_PARTITIONS=str(partitions),
                   CARDIOWATCH_METRICS_PORT=str(wport), CARDIOWATCH_DATA_DIR=str(work / "worker"),
                   CARDIOWATCH_APP_ID=app_id,
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
        pids = {"worker": worker.pid, "broker": broker.pid if broker is not None else None,
                "load_generator": os.getpid()}
        log_dir = broker.data_dir / "kraft" if broker is not None and broker.data_dir is not None else None
        m0, w0, sent0, bytes0 = _scrape(wport), time.time(), sim.sent_ecg, sim.sent_ecg_bytes
        cpu0, chunks0 = _cpu_now(pids), _ecg_chunks_in(wport)
        topics0 = topic_bytes(log_dir) if log_dir is not None else {}
        lags = []
        while t.is_alive():
            t.join(2.0)
            m = _scrape(wport)
            lags.append((time.time() - w0, m.get("cardiowatch_consumer_lag_messages", 0.0)))
            say(f"t={time.time() - w0:5.1f}s in={m.get('cardiowatch_messages_in_total', 0) - m0.get('cardiowatch_messages_in_total', 0):.0f} "
                f"lag={lags[-1][1]:.0f} beats={m.get('cardiowatch_beats_scored_total', 0):.0f}")
        m1, w1, sent1, bytes1 = _scrape(wport), time.time(), sim.sent_ecg, sim.sent_ecg_bytes
        cpu1, chunks1 = _cpu_now(pids), _ecg_chunks_in(wport)
        topics1 = topic_bytes(log_dir) if log_dir is not None else {}
        peak_rss = peak_rss_mib(worker.pid)
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
            "core_only_chunks_per_s": core["chunks_per_s"],
            "ecg_chunks_consumed_per_s": round((chunks1 - chunks0) / el, 1),
            "streaming_to_core_ratio": (round((chunks1 - chunks0) / el / core["chunks_per_s"], 4)
                                        if core["chunks_per_s"] else None),
            # CPU cores each process kept busy over the measured window (1.0 = one core);
            # the load generator is this process (simulator and score reader threads)
            "cpu_cores": {k: (round((cpu1[k] - cpu0[k]) / el, 3) if cpu0[k] is not None and cpu1[k] is not None
                              else None) for k in pids},
            # bytes appended to each topic's log segments per patient-second (local broker only)
            # (the worker's changelog topics are named for its app id: shown as <app>-...)
            "topic_bytes_per_patient_s": {t.replace(app_id, "<app>"):
                                          round((topics1.get(t, 0) - topics0.get(t, 0)) / el / patients, 1)
                                          for t in sorted(topics1) if topics1.get(t, 0) > topics0.get(t, 0)},
            "worker_peak_rss_mib": round(peak_rss, 1) if peak_rss is not None else None,
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


def parse_counts(text: str) -> list[int]:
    """``--sweep`` patient counts: comma-separated integers >= 1, strictly increasing."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sweep takes comma-separated patient counts such as 100,200,400, got {text!r}") from None
    if not counts or any(c < 1 for c in counts) or any(b <= a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"--sweep counts must be >= 1 and increasing, got {text!r}")
    return counts


def sweep(counts: list[int], run: Callable[[int], dict], say: Callable[[str], None] = lambda _m: None,
          keep_going: bool = False) -> dict:
    """Run ``run(n)`` for each patient count, in order, until one is not sustained (or all
    of them, ``keep_going``); the largest sustained count is the sweep's answer."""
    runs: list[dict] = []
    for n in counts:
        say(f"sweep: {n} patients")
        r = run(n)
        runs.append(r)
        if not r.get("sustained") and not keep_going:
            say(f"sweep: {n} patients not sustained; stopping")
            break
    ok = [r["patients"] for r in runs if r.get("sustained")]
    return {"counts": counts, "largest_sustained_patients": max(ok) if ok else None, "runs": runs}


def format_sweep(result: dict) -> str:
    """The sweep as a table a platform team can read (one row per patient count)."""
    head = ("patients", "sustained", "lag slope/s", "R->score p50 s", "p99 s", "beats/s", "worker cores",
            "broker cores", "loadgen cores", "worker peak MiB", "stream/model", "stream/core")
    rows = []
    for r in result["runs"]:
        lat, cpu = r.get("event_to_score_latency_s", {}), r.get("cpu_cores", {})
        rows.append((str(r["patients"]), "yes" if r.get("sustained") else "no",
                     f"{r['consumer_lag_messages']['slope_per_s']:+.1f}",
                     *(f"{lat.get(q):.2f}" if lat.get(q) is not None else "-" for q in ("p50", "p99")),
                     f"{r['beats_scored_per_s']:.0f}",
                     *(f"{cpu.get(k):.2f}" if cpu.get(k) is not None else "-"
                       for k in ("worker", "broker", "load_generator")),
                     f"{r['worker_peak_rss_mib']:.0f}" if r.get("worker_peak_rss_mib") is not None else "-",
                     f"{r['streaming_to_model_ratio']:.3f}" if r.get("streaming_to_model_ratio") is not None else "-",
                     f"{r['streaming_to_core_ratio']:.3f}" if r.get("streaming_to_core_ratio") is not None else "-"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    best = result["largest_sustained_patients"]
    lines.append(f"largest sustained: {best if best is not None else 'none of ' + ','.join(map(str, result['counts']))}"
                 " patients at 250 Hz, one worker process")
    if result["runs"]:
        last = result["runs"][-1]
        lines.append("bytes per patient-second by topic (last run): " + ", ".join(
            f"{t} {b:.0f}" for t, b in last.get("topic_bytes_per_patient_s", {}).items()))
        lines.append("stage mean ms per batch (last run): " + ", ".join(
            f"{k} {v:.1f}" for k, v in last.get("worker_stage_mean_ms_per_batch", {}).items()))
    return "\n".join(lines)


def plot_sweep(path: Path, result: dict) -> None:
    """Latency and consumer-lag slope against patients (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    n = [r["patients"] for r in runs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for q, style in (("p50", "o-"), ("p99", "s--")):
        a1.plot(n, [r["event_to_score_latency_s"].get(q) or float("nan") for r in runs], style, label=f"R peak to score {q}")
    a1.set_xlabel("patients (250 Hz)")
    a1.set_ylabel("seconds")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.plot(n, [r["consumer_lag_messages"]["slope_per_s"] for r in runs], "o-")
    for r in runs:
        a2.annotate("sustained" if r.get("sustained") else "not sustained",
                    (r["patients"], r["consumer_lag_messages"]["slope_per_s"]), fontsize=8)
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_xlabel("patients (250 Hz)")
    a2.set_ylabel("consumer lag slope (messages/s)")
    a2.grid(alpha=0.3)
    fig.suptitle(f"cardiowatch bench stream --sweep: largest sustained {result['largest_sustained_patients']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="cardiowatch bench stream", description=__doc__,
                                formatter_class=HelpFormatter)
    load = p.add_mutually_exclusive_group()
    load.add_argument("--patients", type=int, help="simulated wearables (one run)")
    load.add_argument("--sweep", metavar="N1,N2,...", help="one run per patient count, in order, until one is not "
                      "sustained; prints a table and writes sweep.json and sweep.png into --out")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window (after warm-up)")
    p.add_argument("--warmup-s", type=float, default=15.0, help="seconds streamed before measuring")
    p.add_argument("--bootstrap", help="use this broker instead of starting one")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="ECG model bundle")
    p.add_argument("--runtime", default="keras", choices=["keras", "tflite", "tflite-int8"], help="model runtime")
    p.add_argument("--partitions", type=int, default=8, help="partitions of each topic on the benchmark's broker")
    p.add_argument("--wire", choices=["ecg/1", "ecg/2"], default="ecg/1",
                   help="ECG wire format the load generator sends (ecg/1 is JSON)")
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    p.add_argument("--keep-going", action="store_true", help="--sweep: run every count, also past the first "
                   "that is not sustained")
    p.add_argument("--out", type=Path, help="--sweep: folder for sweep.json and sweep.png (default runs/sweep-<time>)")
    p.add_argument("--keep", action="store_true", help="keep each run's temporary folder (broker data, worker log)")
    if not argv:  # a run takes minutes and starts a broker: say how, rather than start one
        p.print_usage()
        print("cardiowatch bench stream: give --patients N (one run) or --sweep N1,N2,... (--help for all options)",
              file=sys.stderr)
        return 2
    args = p.parse_args(argv)

    def one(n: int) -> dict:
        return run_bench(n, args.seconds, args.warmup_s, args.bootstrap, args.model, args.runtime,
                         args.partitions, progress=True, wire=args.wire, keep=args.keep)

    if args.sweep is None:
        if args.patients is None or args.patients < 1:
            p.error(f"--patients must be >= 1, got {args.patients}")
        print(json.dumps(one(args.patients), indent=None if args.json else 2))
        return 0
    try:
        counts = parse_counts(args.sweep)
    except ValueError as exc:
        p.error(str(exc))
    out = args.out or REPO_ROOT / "runs" / time.strftime("sweep-%Y%m%d-%H%M%S")
    result = sweep(counts, one, lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True), args.keep_going)
    result["settings"] = {"seconds": args.seconds, "warmup_s": args.warmup_s, "runtime": args.runtime,
                          "partitions": args.partitions, "wire": args.wire, "cpu_count": os.cpu_count()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2))
    plot_sweep(out / "sweep.png", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_sweep(result))
        print(f"wrote {out / 'sweep.json'} and {out / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
