"""Demo: the whole product on one machine — broker, worker, dispatcher, console, simulator, receiver.

``cardiowatch demo`` starts a real local Kafka broker, the Faust worker with the bundled
model, the dispatcher, the care-team console, a local signed-webhook receiver, and a few
simulated patients of whom some have events (a ventricular run, a pause, sustained
tachycardia). It prints the console's URL and a token to acknowledge with, progress, and
every alert as it reaches the receiver, with its delay from the injected event's onset.
Once every injected event has its alert it photographs the console with headless
Chromium into the demo's output folder (``runs/demo/console.png``, or ``console.png`` in
``--workdir``; ``--screenshot PATH`` writes it elsewhere, e.g. ``docs/console.png``;
skipped, saying so, without chromium) and prints the path. Then it stops
everything it started, or, with ``--keep-running``, leaves the console up with the
patients still streaming until Ctrl-C.

Exit status: 0 when every patient with an injected event produced an alert at the
receiver, 1 otherwise (with ``--keep-running`` too, after Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

import yaml

from services.access import hash_token
from services.broker import LocalBroker, free_port, kafka_jars_cached
from services.receiver import Arrival, WebhookReceiver
from services.screenshot import ScreenshotError, find_browser, screenshot
from services.settings import REPO_ROOT, Topics, without_kafka_security
from services.simulator import Simulation, build_wearables, make_producer
from services.simulator import parse_args as simulator_args
from models.cli_help import HelpFormatter

__all__ = ["main"]


# How soon after an injected event's onset its alert must reach the receiver.
# Sustained-rate alarms wait, by design, for the policy's sustain time (30 s).
DEADLINE_S = {"vrun": 10.0, "pause": 10.0, "tachy": 45.0, "brady": 45.0}
# The alert each injected event must produce (another alert for the patient does not count).
EXPECTED_CONDITION = {"vrun": "ventricular_run", "pause": "pause", "tachy": "tachycardia",
                      "brady": "bradycardia"}


# Where the demo leaves what outlives it (the console screenshot) without --workdir;
# git ignores /runs/.
DEFAULT_OUTPUT_DIR = REPO_ROOT / "runs" / "demo"


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class _ReceiverThread:
    """The webhook receiver on its own asyncio loop in a background thread."""

    def __init__(self, secret: str, on_arrival) -> None:
        self.loop = asyncio.new_event_loop()
        self.receiver = WebhookReceiver(secret, on_arrival=on_arrival)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(30)
        return self.receiver.url

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _routing(url: str, secret: str, token_hash: str) -> dict:
    endpoint = {"url": url, "secret": secret, "timeout_s": 5, "format": "native"}
    return {
        "version": 1, "default_team": "ward", "ops_team": "ward",
        "escalation": {"escalate_after_s": {"high": 60}, "max_level": 1, "poll_s": 1},
        "teams": {"ward": {
            "retry": {"max_attempts": 5, "base_backoff_s": 0.2, "max_backoff_s": 5, "total_budget_s": 30},
            "routes": {"default": {"primary": endpoint, "escalation": [endpoint]}},
            "tokens": [{"user": "demo-nurse", "token_hash": token_hash}],
        }},
        "patients": {},
    }


def _alert_line(body: dict, delay_s: float, injected: str | None) -> str:
    """One alert as the receiver got it (the README's demo output shows these lines)."""
    what = f"{injected} injected" if injected else "no injected event"
    return (f"  ALERT  {body.get('patient_id')}  {body.get('condition'):<20} "
            f"{str(body.get('priority')).upper():<6} {body.get('action'):<9} {delay_s:6.1f} s after onset "
            f"({what})  rule: {body.get('rule')}")


def _scrape(port: int, name: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    total = 0.0
    found = False
    for line in body.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                total += float(value)
                found = True
    return total if found else 0.0 if body else None


def _console_state(url: str) -> dict | None:
    """The console's view (``/api/state``), or None while it does not answer."""
    try:
        with urllib.request.urlopen(url + "api/state", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _photograph(url: str, out: Path) -> bool:
    """Write a screenshot of the console once it shows every alert it holds; True if written."""
    if find_browser() is None:
        _log(f"no chromium/chromedriver: screenshot {out} skipped (apt-get install chromium chromium-driver)")
        return False
    from services.console import READY_JS

    state = _console_state(url) or {"alerts": []}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(url, out, ready_js=READY_JS, ready_args=[len(state["alerts"])], timeout_s=30)
        _log(f"console screenshot written to {out}")
        return True
    except ScreenshotError as e:
        _log(f"console screenshot not taken: {e}")
        return False


def _stop(proc: subprocess.Popen | None, name: str, timeout_s: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _log(f"{name} did not stop in {timeout_s:.0f} s; killing it")
        proc.kill()
        proc.wait(10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cardiowatch demo", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--patients", type=int, default=6, help="simulated patients (>= 4; default 6)")
    p.add_argument("--seconds", type=float, default=70.0, help="signal time to simulate (default 70)")
    p.add_argument("--onset-s", type=float, default=30.0, help="when the injected events start")
    p.add_argument("--grace-s", type=float, default=15.0, help="wait after the simulation for deliveries")
    p.add_argument("--workdir", type=Path, help="keep logs and state here (default: a temporary folder)")
    p.add_argument("--keep-running", action="store_true",
                   help="after the summary, keep the console up with the patients streaming until Ctrl-C")
    p.add_argument("--console-port", type=int, default=0,
                   help="port of the console on 127.0.0.1 (default: a free one)")
    p.add_argument("--screenshot", type=Path, default=None, metavar="PATH",
                   help="where to write a PNG of the console once the alerts are in "
                        "(default: console.png in --workdir, else runs/demo/console.png; "
                        "needs chromium and chromedriver)")
    p.add_argument("--no-screenshot", action="store_true", help="take no screenshot")
    args = p.parse_args(argv)
    # the demo's own output folder, never a tracked file: docs/console.png only when asked
    if args.no_screenshot:
        args.screenshot = None
    elif args.screenshot is None:
        args.screenshot = (args.workdir or DEFAULT_OUTPUT_DIR) / "console.png"
    if not 0 <= args.console_port <= 65535:
        p.error(f"--console-port must be in [0, 65535], got {args.console_port}")
    if args.patients < 4:
        p.error(f"--patients must be >= 4 so that every event kind is shown, got {args.patients}")
    if args.seconds <= args.onset_s + 10:
        p.error(f"--seconds must exceed --onset-s + 10, got {args.seconds} and {args.onset_s}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cardiowatch-demo-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _run(args, work)


def _run(args: argparse.Namespace, work: Path) -> int:
    secret = "whsec_" + b64encode(secrets.token_bytes(24)).decode()
    nurse_token = secrets.token_urlsafe(24)  # printed: the demo's user acknowledges with it
    sim_args = simulator_args(["--patients", str(args.patients), "--preset", "demo",
                               "--onset-s", str(args.onset_s), "--seconds", str(args.seconds)])
    start_ms = int(time.time() * 1000) + 20_000  # placeholder; reset when the stream starts
    _, truth = build_wearables(sim_args, start_ms)
    expected = {pid for pid, t in truth.items() if t["events"]}
    arrivals: list[tuple[Arrival, dict]] = []
    first_alert: dict[str, float] = {}
    sim_start_ms = [0]

    def on_arrival(a: Arrival) -> None:
        b = a.body
        pid = b.get("patient_id")
        evs = truth.get(pid, {}).get("events", [])
        onset_ms = (sim_start_ms[0] + (evs[0]["onset_ts_ms"] - start_ms)) if evs else b.get("onset_ts_ms")
        delay = (a.received_wall_ms - onset_ms) / 1000.0 if onset_ms else float("nan")
        arrivals.append((a, b))
        want = EXPECTED_CONDITION.get(evs[0]["kind"]) if evs else None
        if (pid in expected and b.get("condition") == want and b.get("action") == "raised"
                and pid not in first_alert):
            first_alert[pid] = delay
        print(_alert_line(b, delay, evs[0]["kind"] if evs else None), flush=True)

    broker = worker = dispatcher = console = None
    sim: Simulation | None = None
    streaming: threading.Thread | None = None
    receiver = _ReceiverThread(secret, on_arrival)
    summary: tuple[bool, list[str]] | None = None
    shot = False  # the console screenshot was written to args.screenshot
    try:
        if kafka_jars_cached():
            _log("starting the local Kafka broker...")
        else:
            _log("starting the local Kafka broker (downloading its jars with Maven first)...")
        broker = LocalBroker(partitions=4, data_dir=work / "broker").start()
        _log(f"broker ready at {broker.bootstrap}")
        url = receiver.start()
        _log(f"webhook receiver listening at {url}")
        routing = work / "routing.yaml"
        routing.write_text(yaml.safe_dump(_routing(url, secret, hash_token(nurse_token))))
        wport, dport, aport = free_port(), free_port(), free_port()
        cport = args.console_port or free_port()
        console_url = f"http://127.0.0.1:{cport}/"
        # the demo's own broker is plaintext: the shell's Kafka security settings stay out
        env = dict(without_kafka_security(os.environ), CARDIOWATCH_BOOTSTRAP=broker.bootstrap, CARDIOWATCH_PARTITIONS="4",
                   CARDIOWATCH_METRICS_PORT=str(wport), CARDIOWATCH_DATA_DIR=str(work / "worker"),
                   CARDIOWATCH_APP_ID=f"cardiowatch-demo-{secrets.token_hex(3)}",
                   CARDIOWATCH_ROUTING_FILE=str(routing),
                   CARDIOWATCH_DISPATCHER_METRICS_PORT=str(dport), CARDIOWATCH_ACK_PORT=str(aport),
                   CARDIOWATCH_ACK_API_URL=f"http://127.0.0.1:{aport}", CARDIOWATCH_CONSOLE_PORT=str(cport),
                   CARDIOWATCH_CONSOLE_BIND="127.0.0.1", CARDIOWATCH_CONSOLE_TEAM="ward",
                   CARDIOWATCH_BATCH_WITHIN_S="0.1", PYTHONUNBUFFERED="1")
        py = sys.executable
        wlog = open(work / "worker.log", "w")
        dlog = open(work / "dispatcher.log", "w")
        clog = open(work / "console.log", "w")
        _log("starting the worker (Faust, bundled model), the dispatcher and the console...")
        worker = subprocess.Popen([py, "-m", "services.cli", "worker"], env=env, cwd=REPO_ROOT,
                                  stdout=wlog, stderr=subprocess.STDOUT)
        dispatcher = subprocess.Popen([py, "-m", "services.cli", "dispatch"], env=env, cwd=REPO_ROOT,
                                      stdout=dlog, stderr=subprocess.STDOUT)
        console = subprocess.Popen([py, "-m", "services.cli", "console"], env=env, cwd=REPO_ROOT,
                                   stdout=clog, stderr=subprocess.STDOUT)
        procs = ((worker, "worker", "worker.log"), (dispatcher, "dispatcher", "dispatcher.log"),
                 (console, "console", "console.log"))
        deadline = time.monotonic() + 120
        while _scrape(wport, "cardiowatch_messages_in_total") is None or _console_state(console_url) is None:
            for proc, name, logf in procs:
                if proc.poll() is not None:
                    tail = (work / logf).read_text()[-3000:]
                    raise RuntimeError(f"the {name} exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker or the console did not answer within 120 s; see "
                                   f"{work / 'worker.log'} and {work / 'console.log'}")
            time.sleep(0.5)
        time.sleep(3.0)  # let the consumer group settle before data flows
        _log(f"console: {console_url}  (open it in a browser; acknowledge as demo-nurse with the "
             f"token {nurse_token})")
        _log(f"worker up (metrics http://127.0.0.1:{wport}/metrics); streaming {args.patients} "
             f"patients for {args.seconds:.0f} s in real time; events at t={args.onset_s:.0f}s for "
             + ", ".join(f"{p} ({truth[p]['events'][0]['kind']})" for p in sorted(expected)))
        sim_start_ms[0] = int(time.time() * 1000)
        wearables, _ = build_wearables(sim_args, sim_start_ms[0])
        sim = Simulation(wearables, make_producer(broker.bootstrap), Topics().ecg, Topics().hr,
                         start_ms=sim_start_ms[0])
        # with --keep-running the patients go on streaming after the scripted part
        streaming = threading.Thread(target=sim.run, args=(None if args.keep_running else args.seconds, False),
                                     daemon=True)
        streaming.start()
        last = 0.0
        photographed = args.screenshot is None
        while streaming.is_alive():
            streaming.join(1.0)
            el = time.time() - sim_start_ms[0] / 1000
            if el - last >= 10 or not streaming.is_alive():
                last = el
                beats = _scrape(wport, "cardiowatch_beats_scored_total")
                bad = _scrape(wport, "cardiowatch_invalid_messages_total")
                _log(f"t={el:4.0f}s  chunks sent={sim.sent_ecg}  beats scored={beats:.0f}  "
                     f"invalid={bad:.0f}  alerts received={len(arrivals)}")
            if not photographed and expected <= set(first_alert):
                photographed = True  # while the patients still stream: the grid is live
                time.sleep(2.0)  # the last alert's strip onto the page
                shot = _photograph(console_url, args.screenshot)
            if args.keep_running and el >= args.seconds:
                break
        end = time.monotonic() + args.grace_s
        while time.monotonic() < end and not expected <= set(first_alert):
            time.sleep(0.5)
        time.sleep(2.0)
        if not photographed:
            shot = _photograph(console_url, args.screenshot)
        if args.keep_running:
            summary = _summary(args, truth, expected, first_alert, arrivals, work, shot)
            print("\n".join(summary[1]), flush=True)
            print(f"\nThe console stays up at {console_url} (acknowledge as demo-nurse with the token "
                  f"{nurse_token}); the patients keep streaming. Press Ctrl-C to stop.", flush=True)
            try:
                while all(proc.poll() is None for proc, _, _ in procs):
                    time.sleep(1.0)
                _log("a process of the demo exited; stopping")
            except KeyboardInterrupt:
                pass
    except KeyboardInterrupt:
        _log("interrupted")
        return 130
    finally:
        _log("stopping simulator, console, dispatcher, worker, receiver and broker...")
        if sim is not None:
            sim.stop()
            if streaming is not None:
                streaming.join(10)
        _stop(console, "console")
        _stop(dispatcher, "dispatcher")
        _stop(worker, "worker")
        try:
            receiver.stop()
        except Exception:
            pass
        if broker is not None:
            broker.stop()
    if summary is None:
        summary = _summary(args, truth, expected, first_alert, arrivals, work, shot)
        print()
        print("\n".join(summary[1]))
    return 0 if summary[0] else 1


def _summary(args: argparse.Namespace, truth: dict, expected: set[str], first_alert: dict[str, float],
             arrivals: list[tuple[Arrival, dict]], work: Path, shot: bool = False) -> tuple[bool, list[str]]:
    """(every injected event alerted in time, the summary's lines)."""
    lines = ["Summary", f"  alerts received: {len(arrivals)} (signed, verified by the receiver)"]
    ok = True
    for pid in sorted(expected):
        kind = truth[pid]["events"][0]["kind"]
        if pid in first_alert:
            d, limit = first_alert[pid], DEADLINE_S.get(kind, 10.0)
            good = 0 <= d < limit  # an alert before the onset is not a detection of it
            flag = "OK  " if good else ("EARLY" if d < 0 else "LATE")
            ok &= good
            lines.append(f"  {flag} {pid} ({kind}): {EXPECTED_CONDITION.get(kind, kind)} alert {d:.1f} s after "
                         f"the event's onset (limit {limit:.0f} s)")
        else:
            ok = False
            lines.append(f"  MISS {pid} ({kind}): no {EXPECTED_CONDITION.get(kind, kind)} alert reached the receiver")
    normal = sorted(set(truth) - expected)
    fp = sorted({b.get("patient_id") for _, b in arrivals if b.get("patient_id") in normal
                 and b.get("category") == "physiological"})
    lines.append(f"  patients without events: {len(normal)}; with a physiological alert: {fp or 'none'}")
    if shot:
        lines.append(f"  console screenshot: {args.screenshot}")
    if args.workdir:
        lines.append(f"  logs: {work}")
    return ok, lines


if __name__ == "__main__":
    raise SystemExit(main())
