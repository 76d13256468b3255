"""Benchmark: a soak run: the worker's and the dispatcher's memory over a long run.

``cardiowatch bench soak --minutes M [--patients P]`` starts a local broker (unless
``--bootstrap`` is given), one worker, one dispatcher and a signed-webhook receiver as
their own processes, streams ``P`` simulated 250 Hz patients in real time (the load
generator of ``bench stream``) and, beside them, a churn of alerts through the
dispatcher: every ``1 / --alert-rate`` seconds an alert is raised on the alerts topic,
then acknowledged or resolved on the acks topic and cleared, so the alert book, the
escalation tracker and the alert-state topic see alerts open, finish and, past
``--alert-retention-hours`` (short by default, so it happens inside the run), be
forgotten.

Every ``--sample-s`` seconds it reads ``VmRSS`` of both processes from
``/proc/<pid>/status``; at the end it prints a table, writes ``soak.json`` and
``soak.png`` (RSS against time) into ``--out``, and reports each process's growth after
warm-up: the median RSS of the last 10 % of the samples against the median of the
samples just after the warm-up (the first ``--warmup-frac`` of the run), in %, and the
least-squares slope after warm-up in MiB per hour.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from services.bench_stream import _FastWearable, _scrape, _Template
from services.broker import LocalBroker, free_port
from services.settings import DEFAULT_MODEL_DIR, REPO_ROOT, KafkaSettings, Topics, without_kafka_security
from services.simulator import Simulation, make_producer, patient_ids, slot_offset_ms
from streaming.kafka_security import KafkaSecurity
from models.cli_help import HelpFormatter

__all__ = ["growth_after_warmup", "main", "read_rss_kib", "run_soak"]


def read_rss_kib(pid: int) -> int | None:
    """``VmRSS`` of process ``pid`` in KiB, from ``/proc/<pid>/status``; ``None`` once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def growth_after_warmup(t_s: list[float], rss_mib: list[float], warmup_frac: float = 0.2) -> dict[str, Any]:
    """Growth of one process's RSS after warm-up.

    Parameters
    ----------
    t_s, rss_mib
        Sample times (seconds since the start) and RSS (MiB), in time order.
    warmup_frac
        Share of the run, from its start, treated as warm-up, in (0, 1).

    Returns
    -------
    dict
        ``baseline_mib`` (median of the samples in the 10 % of the run right after the
        warm-up), ``end_mib`` (median of the last 10 %), ``growth_pct`` (end against
        baseline), ``slope_mib_per_h`` (least-squares fit after warm-up) and ``n`` (samples
        after warm-up); the figures are ``None`` with fewer than 3 samples after warm-up.
    """
    if not 0.0 < warmup_frac < 1.0:
        raise ValueError(f"warmup_frac must be in (0, 1), got {warmup_frac}")
    if len(t_s) != len(rss_mib):
        raise ValueError(f"t_s and rss_mib must have equal lengths, got {len(t_s)} and {len(rss_mib)}")
    out: dict[str, Any] = {"baseline_mib": None, "end_mib": None, "growth_pct": None,
                           "slope_mib_per_h": None, "n": 0}
    if not t_s:
        return out
    t, r = np.asarray(t_s, dtype=float), np.asarray(rss_mib, dtype=float)
    span = t[-1] - t[0]
    w = t[0] + warmup_frac * span
    after = t >= w
    out["n"] = int(after.sum())
    if out["n"] < 3:
        return out
    base = r[after & (t <= w + 0.1 * span)]
    end = r[t >= t[-1] - 0.1 * span]
    base_mib = float(np.median(base if base.size else r[after][:1]))
    end_mib = float(np.median(end))
    out.update(baseline_mib=round(base_mib, 1), end_mib=round(end_mib, 1),
               growth_pct=round(100.0 * (end_mib / base_mib - 1.0), 2),
               slope_mib_per_h=round(float(np.polyfit(t[after], r[after], 1)[0]) * 3600.0, 2))
    return out


class _AlertChurn(threading.Thread):
    """Alerts that open and finish through the dispatcher, as the worker and the ack API
    would write them: raised, then (a few seconds later) acknowledged and cleared, or
    resolved; every one finishes, so none should stay in memory past the retention."""

    def __init__(self, bootstrap: str, topics: Topics, security: KafkaSecurity, rate_per_s: float,
                 patients: list[str]) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **security.kafka_python_kwargs())
        self.topics, self.rate, self.patients = topics, rate_per_s, patients
        self.stop_flag = threading.Event()
        self.raised = self.finished = 0
        self.error: BaseException | None = None

    def _send_alert(self, alert: dict[str, Any], action: str, revision: int) -> None:
        from streaming.events import AlertEvent

        ev = AlertEvent(**{**alert, "action": action, "revision": revision,
                           "produced_wall_ms": int(time.time() * 1000)})
        self.producer.send(self.topics.alerts, ev.to_json(), key=ev.patient_id.encode())

    def _send_ack(self, alert_id: str, action: str) -> None:
        from services.ack_api import AckRecord

        rec = AckRecord(alert_id, action, "soak.nurse", int(time.time() * 1000), None, "soak")  # type: ignore[arg-type]
        self.producer.send(self.topics.acks, rec.to_json(), key=alert_id.encode())

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # the soak checks it and fails, naming it
            self.error = e
            raise

    def _run(self) -> None:
        pending: list[tuple[float, dict[str, Any], int]] = []  # (finish at, alert, kind)
        i, nxt = 0, time.monotonic()
        while not self.stop_flag.is_set():
            now = time.monotonic()
            if now >= nxt:
                pid = self.patients[i % len(self.patients)]
                onset = int(time.time() * 1000)
                alert: dict[str, Any] = dict(alert_id=f"{pid}:soak_pause:{onset}", revision=0, action="raised",
                             patient_id=pid, device_id=f"dev-{pid}", condition="pause",
                             category="physiological", priority=("high", "medium", "low")[i % 3],
                             onset_ts_ms=onset, detected_ts_ms=onset, rule="soak: RR > 3 s",
                             details={"soak": i})
                self._send_alert(alert, "raised", 0)
                pending.append((now + 3.0 + (i % 5), alert, i % 3))
                self.raised += 1
                i += 1
                nxt += 1.0 / self.rate
            for item in [p for p in pending if p[0] <= now]:
                pending.remove(item)
                _, alert, kind = item
                if kind == 0:  # resolved by a person
                    self._send_ack(alert["alert_id"], "resolve")
                elif kind == 1:  # acknowledged, then the condition ends: closed
                    self._send_ack(alert["alert_id"], "ack")
                    self._send_alert(alert, "cleared", 1)
                else:  # the condition ends first (latched), then acknowledged: closed
                    self._send_alert(alert, "cleared", 1)
                    self._send_ack(alert["alert_id"], "ack")
                self.finished += 1
            self.stop_flag.wait(min(0.05, max(0.0, nxt - time.monotonic())))
        self.producer.flush(10)
        self.producer.close(10)


def _wait_http(port: int, proc: subprocess.Popen[bytes], log: Path, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _scrape(port)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n" + log.read_text(errors="replace")[-3000:]) from None
            time.sleep(0.5)


def _plot(samples: list[dict[str, Any]], warmup_s: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    t = [s["t_s"] / 60.0 for s in samples]
    for name in ("worker", "dispatcher"):
        ax.plot(t, [s[f"{name}_rss_mib"] for s in samples], marker=".", label=name)
    ax.axvline(warmup_s / 60.0, color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("minutes since start")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stop(proc: subprocess.Popen[bytes] | None, timeout_s: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_soak(minutes: float, patients: int, *, out_dir: Path, sample_s: float = 10.0,
             warmup_frac: float = 0.2, alert_rate: float = 2.0, alert_retention_hours: float = 0.05,
             bootstrap: str | None = None, model_dir: Path = DEFAULT_MODEL_DIR, runtime: str = "keras",
             partitions: int = 8, progress: bool = True, keep: bool = False) -> dict[str, Any]:
    """Run the soak and return its result (also written to ``out_dir/soak.json``)."""
    def say(msg: str) -> None:
        if progress:
            print(f"[soak] {msg}", file=sys.stderr, flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cardiowatch-soak-"))
    broker = worker = dispatcher = receiver = None
    churn: _AlertChurn | None = None
    sim: Simulation | None = None
    base_env = dict(os.environ)
    security = KafkaSettings.from_env().security if bootstrap is not None else KafkaSecurity()
    try:
        if bootstrap is None:
            say("starting local broker")
            broker = LocalBroker(partitions=partitions, data_dir=work / "broker").start()
            bootstrap = broker.bootstrap
            base_env = without_kafka_security(base_env)
        stamp = f"soak-{os.getpid()}-{int(time.time())}"
        d = Topics()
        # fresh topics for this run's alerts, acks and state: nothing of earlier runs is rebuilt
        topics = Topics(**{**{f: getattr(d, f) for f in d.__dataclass_fields__},
                           "alerts": f"{stamp}.{d.alerts}", "acks": f"{stamp}.{d.acks}",
                           "alerts_deadletter": f"{stamp}.{d.alerts_deadletter}",
                           "alert_state": f"{stamp}.{d.alert_state}", "scores": f"{stamp}.{d.scores}",
                           "deadletter": f"{stamp}.{d.deadletter}"})
        from services.broker import create_topics
        create_topics(bootstrap, [topics.alerts, topics.acks, topics.alerts_deadletter, topics.alert_state,
                                  topics.scores, topics.deadletter], partitions, security=security,
                      compact=[topics.alert_state])
        topic_env = {"CARDIOWATCH_TOPIC_ALERTS": topics.alerts, "CARDIOWATCH_TOPIC_ACKS": topics.acks,
                     "CARDIOWATCH_TOPIC_ALERTS_DEADLETTER": topics.alerts_deadletter,
                     "CARDIOWATCH_TOPIC_ALERT_STATE": topics.alert_state,
                     "CARDIOWATCH_TOPIC_SCORES": topics.scores, "CARDIOWATCH_TOPIC_DEADLETTER": topics.deadletter}
        secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        rport = free_port()
        receiver = subprocess.Popen([sys.executable, "-m", "services.cli", "receiver", "--port", str(rport),
                                     "--secret", secret], env=base_env, cwd=REPO_ROOT,
                                    stdout=subprocess.DEVNULL, stderr=open(work / "receiver.log", "w"))
        routing = work / "routing.yaml"
        routing.write_text(yaml.safe_dump({"default_team": "soak", "teams": {"soak": {"routes": {"default": {
            "primary": {"url": f"http://127.0.0.1:{rport}/webhook", "secret": secret, "timeout_s": 5}}}}},
            "escalation": {"escalate_after_s": {"high": 60}, "max_level": 1}}))
        wport, dport = free_port(), free_port()
        wenv = dict(base_env, **topic_env, CARDIOWATCH_BOOTSTRAP=bootstrap, CARDIOWATCH_PARTITIONS=str(partitions),
                    CARDIOWATCH_METRICS_PORT=str(wport), CARDIOWATCH_DATA_DIR=str(work / "worker"),
                    CARDIOWATCH_APP_ID=stamp, CARDIOWATCH_MODEL_DIR=str(model_dir), CARDIOWATCH_RUNTIME=runtime)
        say("starting worker")
        worker = subprocess.Popen([sys.executable, "-m", "services.cli", "worker", "--loglevel", "warning"],
                                  env=wenv, cwd=REPO_ROOT, stdout=open(work / "worker.log", "w"),
                                  stderr=subprocess.STDOUT)
        denv = dict(base_env, **topic_env, CARDIOWATCH_BOOTSTRAP=bootstrap, CARDIOWATCH_PARTITIONS=str(partitions),
                    CARDIOWATCH_ROUTING_FILE=str(routing), CARDIOWATCH_DISPATCHER_METRICS_PORT=str(dport),
                    CARDIOWATCH_ACK_PORT=str(free_port()), CARDIOWATCH_DISPATCHER_GROUP=f"{stamp}-dispatcher",
                    CARDIOWATCH_ALERT_RETENTION_HOURS=str(alert_retention_hours))
        say("starting dispatcher")
        dispatcher = subprocess.Popen([sys.executable, "-m", "services.cli", "dispatch", "--log-level", "WARNING"],
                                      env=denv, cwd=REPO_ROOT, stdout=open(work / "dispatcher.log", "w"),
                                      stderr=subprocess.STDOUT)
        _wait_http(wport, worker, work / "worker.log", "worker")
        _wait_http(dport, dispatcher, work / "dispatcher.log", "dispatcher")
        templates = [_Template(seed, 300) for seed in range(min(patients, 20))]
        start_ms = int(time.time() * 1000)
        wearables = [_FastWearable(pid, templates[i % len(templates)], start_ms + slot_offset_ms(i), (i * 37) % 300)
                     for i, pid in enumerate(patient_ids(patients))]
        # _FastWearable is a Wearable by duck typing (bench stream's load generator)
        sim = Simulation(wearables, make_producer(bootstrap, security), topics.ecg, topics.hr,  # type: ignore[arg-type]
                         start_ms=start_ms)
        total_s = minutes * 60.0
        say(f"streaming {patients} patients and {alert_rate:g} alerts/s for {minutes:g} min; "
            f"RSS every {sample_s:g} s")
        t_sim = threading.Thread(target=sim.run, args=(total_s, False), daemon=True)
        t_sim.start()
        churn = _AlertChurn(bootstrap, topics, security, alert_rate, patient_ids(patients))
        churn.start()
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        while True:
            el = time.monotonic() - t0
            if churn.error is not None:
                raise RuntimeError(f"the alert churn failed: {churn.error!r}")
            w_kib, d_kib = read_rss_kib(worker.pid), read_rss_kib(dispatcher.pid)
            if w_kib is None or d_kib is None:
                raise RuntimeError(f"{'worker' if w_kib is None else 'dispatcher'} exited during the soak:\n"
                                   + (work / ("worker.log" if w_kib is None else "dispatcher.log"))
                                   .read_text(errors="replace")[-3000:])
            s: dict[str, Any] = {"t_s": round(el, 1), "worker_rss_mib": round(w_kib / 1024, 1),
                                 "dispatcher_rss_mib": round(d_kib / 1024, 1)}
            try:
                wm, dm = _scrape(wport), _scrape(dport)
                s.update(worker_lag=wm.get("cardiowatch_consumer_lag_messages"),
                         beats_scored=wm.get("cardiowatch_beats_scored_total"),
                         deliveries=dm.get("cardiowatch_deliveries_total"),
                         open_alerts=dm.get("cardiowatch_open_alerts"),
                         alerts_held=dm.get("cardiowatch_dispatch_alerts_held"))
            except OSError:
                pass
            s.update(alerts_raised=churn.raised, alerts_finished=churn.finished)
            samples.append(s)
            say(f"t={el / 60:5.1f} min worker {s['worker_rss_mib']:7.1f} MiB  dispatcher "
                f"{s['dispatcher_rss_mib']:6.1f} MiB  lag {s.get('worker_lag')}  open alerts {s.get('open_alerts')}  "
                f"held (book + tracker) {s.get('alerts_held')}")
            if el >= total_s:
                break
            time.sleep(max(0.0, min(sample_s, total_s - el) - (time.monotonic() - t0 - el)))
        warmup_s = warmup_frac * samples[-1]["t_s"]
        t = [s["t_s"] for s in samples]
        result: dict[str, Any] = {
            "benchmark": "soak", "minutes": minutes, "patients": patients, "sample_s": sample_s,
            "warmup_frac": warmup_frac, "alert_rate_per_s": alert_rate,
            "alert_retention_hours": alert_retention_hours, "runtime": runtime, "cpu_count": os.cpu_count(),
            "growth": {name: growth_after_warmup(t, [s[f"{name}_rss_mib"] for s in samples], warmup_frac)
                       for name in ("worker", "dispatcher")},
            "alerts_raised": churn.raised, "alerts_finished": churn.finished,
            "samples": samples,
        }
        (out_dir / "soak.json").write_text(json.dumps(result, indent=1))
        _plot(samples, warmup_s, out_dir / "soak.png",
              f"cardiowatch soak: {patients} patients, {alert_rate:g} alerts/s, {minutes:g} min")
        result["files"] = [str(out_dir / "soak.json"), str(out_dir / "soak.png")]
        return result
    finally:
        if sim is not None:
            sim.stop()
        if churn is not None:
            churn.stop_flag.set()
            churn.join(15)
        for p in (dispatcher, worker, receiver):
            _stop(p)
        if broker is not None:
            broker.stop()
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def format_table(result: dict[str, Any]) -> str:
    """The samples and the growth figures as text."""
    lines = [f"{'t (min)':>8}  {'worker MiB':>10}  {'dispatcher MiB':>14}  {'open alerts':>11}  "
             f"{'alerts held':>11}  {'lag':>6}"]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}"

    for s in result["samples"]:
        lines.append(f"{s['t_s'] / 60:8.1f}  {s['worker_rss_mib']:10.1f}  {s['dispatcher_rss_mib']:14.1f}  "
                     f"{num(s.get('open_alerts')):>11}  {num(s.get('alerts_held')):>11}  "
                     f"{num(s.get('worker_lag')):>6}")
    lines.append("")
    for name, g in result["growth"].items():
        lines.append(f"{name}: after warm-up (first {100 * result['warmup_frac']:.0f} %) {g['baseline_mib']} MiB "
                     f"-> {g['end_mib']} MiB at the end: growth {g['growth_pct']} %, slope "
                     f"{g['slope_mib_per_h']} MiB/h ({g['n']} samples)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch bench soak", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="length of the run")
    p.add_argument("--patients", type=int, default=200, help="simulated 250 Hz wearables")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--warmup-frac", type=float, default=0.2, help="share of the run treated as warm-up")
    p.add_argument("--alert-rate", type=float, default=2.0, help="churned alerts raised per second")
    p.add_argument("--alert-retention-hours", type=float, default=0.05,
                   help="the dispatcher's CARDIOWATCH_ALERT_RETENTION_HOURS in the run (short, so "
                        "finished alerts are forgotten inside it)")
    p.add_argument("--out", type=Path, default=None, help="folder for soak.json and soak.png (default runs/soak-<time>)")
    p.add_argument("--bootstrap", help="use this broker instead of starting one")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="ECG model bundle")
    p.add_argument("--runtime", default="keras", choices=["keras", "tflite", "tflite-int8"], help="model runtime")
    p.add_argument("--partitions", type=int, default=8, help="partitions of each topic on the soak's broker")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) instead of deleting it")
    p.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    args = p.parse_args(argv)
    if not args.minutes > 0:
        p.error(f"--minutes must be > 0, got {args.minutes}")
    if args.patients < 1:
        p.error(f"--patients must be >= 1, got {args.patients}")
    if not 1.0 <= args.sample_s <= 600.0:
        p.error(f"--sample-s must be in [1, 600], got {args.sample_s}")
    if not 0.0 < args.warmup_frac < 1.0:
        p.error(f"--warmup-frac must be in (0, 1), got {args.warmup_frac}")
    if not 0.0 < args.alert_rate <= 100.0:
        p.error(f"--alert-rate must be in (0, 100], got {args.alert_rate}")
    out = args.out or REPO_ROOT / "runs" / time.strftime("soak-%Y%m%d-%H%M%S")
    res = run_soak(args.minutes, args.patients, out_dir=out, sample_s=args.sample_s, warmup_frac=args.warmup_frac,
                   alert_rate=args.alert_rate, alert_retention_hours=args.alert_retention_hours,
                   bootstrap=args.bootstrap, model_dir=args.model, runtime=args.runtime,
                   partitions=args.partitions, progress=not args.json, keep=args.keep)
    if args.json:
        print(json.dumps(res))
    else:
        print(format_table(res))
        print("\n" + "\n".join(f"wrote {f}" for f in res["files"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
