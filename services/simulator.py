"""Simulator: N concurrent wearables replaying WFDB records or synthetic ECG into Kafka.

Each wearable sends one ECG chunk per ``chunk_s`` (default 1 s) and, like a real
device with on-board beat detection, one heart-rate sample per chunk carrying the RR
intervals of the beats that ended in it. Event time (``ts_ms``) is the time of the
chunk's first sample; a chunk is sent once its last sample would have been recorded.
Wearables are spread over 10 send slots per second so the broker sees a steady flow,
not a burst on every second. ``--wire ecg/2`` sends the ECG as binary int16 chunks
(``cardiowatch.ecg/2``, 1 µV per count) instead of JSON (``cardiowatch.ecg/1``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, get_args

import numpy as np

from models.synthetic import Event, SyntheticPatient
from streaming.kafka_security import KafkaSecurity, check_connection
from streaming.schemas import encode_ecg, encode_ecg2, encode_hr

from services.settings import KafkaSettings
from models.cli_help import HelpFormatter

if TYPE_CHECKING:
    from models.records import BeatAnnotations, Record

__all__ = [
    "BeatSource",
    "RecordSource",
    "RRSource",
    "Wearable",
    "parse_events",
    "demo_cohort",
    "Simulation",
    "main",
]

log = logging.getLogger("cardiowatch.simulator")

#: ECG wire formats a wearable can send: JSON floats or binary int16 counts
Wire = Literal["ecg/1", "ecg/2"]
ECG2_SCALE_MV = 0.001  # 1 µV per count: the resolution ecg/1 rounds to
# what an int16 holds at that scale; a device's converter saturates there
_ECG2_RANGE_MV = 32767 * ECG2_SCALE_MV


class BeatSource(Protocol):
    """Where a wearable's samples and its on-board beat detections come from."""

    sample_rate_hz: float

    def next_chunk(self, n_samples: int) -> np.ndarray: ...

    def beats_between(self, t0_s: float, t1_s: float) -> list[tuple[float, str]]: ...


class RecordSource:
    """A WFDB record replayed from its start; ``exhausted`` once it has been sent.

    ``channel`` ``None`` loads ``MLII`` when the record has it, else lead 0.
    """

    def __init__(self, folder: Path, name: str, channel: int | str | None = None,
                 record: Record | None = None) -> None:
        if record is None:
            from models.records import load_record

            record = load_record(folder, name, channel=channel)
        rec = record
        self.name = name
        self.sample_rate_hz = float(rec.sample_rate_hz)
        self.signal_mv = np.asarray(rec.signal_mv, dtype=np.float64)
        self.beat_times_s = np.asarray(rec.beat_samples, dtype=np.float64) / self.sample_rate_hz
        self.beat_classes = np.asarray(rec.aami_classes)
        self.n_emitted = 0

    @classmethod
    def from_record(cls, record: Record) -> RecordSource:
        """A source for an already loaded (e.g. noise-stressed) record."""
        return cls(Path("."), record.name, record=record)

    @property
    def duration_s(self) -> float:
        return len(self.signal_mv) / self.sample_rate_hz

    @property
    def exhausted(self) -> bool:
        return self.n_emitted >= len(self.signal_mv)

    def next_chunk(self, n_samples: int) -> np.ndarray:
        x = self.signal_mv[self.n_emitted:self.n_emitted + n_samples]
        self.n_emitted += len(x)
        return x

    def beats_between(self, t0_s: float, t1_s: float) -> list[tuple[float, str]]:
        m = (self.beat_times_s >= t0_s) & (self.beat_times_s < t1_s)
        return [(float(t), str(c)) for t, c in zip(self.beat_times_s[m], self.beat_classes[m])]


class RRSource:
    """An annotation-only record (beat times, no samples): what a watch or chest strap that
    reports only heart rate and RR intervals sends. A :class:`Wearable` steps it with
    :meth:`Wearable.step_rr`; ``duration_s`` ends it.

    Where the annotators marked noise (:data:`models.records.NOISE_SYMBOLS`; nsr2db and
    chf2db leave the beats inside it out), the interval across the mark is a hole, not an
    RR: like a real strap, the wearable reports poor quality there (``quality`` 0, no RR)
    and never the interval across it.

    Parameters
    ----------
    folder, name
        Where ``{name}.{annotation}`` is.
    annotation
        Annotation extension (``"ecg"`` for nsr2db / chf2db, ``"atr"`` for ltafdb).
    fs
        The annotations' rate when the record gives none (ltafdb: 128).
    """

    def __init__(self, folder: Path, name: str, annotation: str = "atr", fs: float | None = None,
                 annotations: BeatAnnotations | None = None) -> None:
        if annotations is None:
            from models.records import load_annotations

            annotations = load_annotations(folder, name, annotation, fs)
        self.name = name
        self.sample_rate_hz = float(annotations.sample_rate_hz)  # the annotations' clock
        self.beat_times_s = annotations.beat_times_s
        self.beat_classes = np.asarray(annotations.aami_classes)
        self.duration_s = float(annotations.duration_s)
        noisy = annotations.noisy_intervals()  # interval k: beat k -> beat k + 1
        self._after_noise = np.concatenate([[False], noisy])  # beat k + 1 ends a hole
        k = np.flatnonzero(noisy)
        # the holes, as [previous beat, next beat] time spans (sorted, disjoint)
        self.noise_spans_s = np.stack([self.beat_times_s[k], self.beat_times_s[k + 1]], axis=1) \
            if k.size else np.zeros((0, 2))

    @classmethod
    def from_annotations(cls, annotations: BeatAnnotations) -> RRSource:
        return cls(Path("."), annotations.name, annotations=annotations)

    def ends_hole(self, t0_s: float, t1_s: float) -> np.ndarray:
        """bool per beat of :meth:`beats_between` (same order): the interval before it is a hole."""
        lo, hi = np.searchsorted(self.beat_times_s, [t0_s, t1_s], side="left")
        return self._after_noise[lo:hi]

    def in_noise(self, t0_s: float, t1_s: float) -> bool:
        """Whether ``[t0_s, t1_s)`` overlaps a hole."""
        spans = self.noise_spans_s
        i = int(np.searchsorted(spans[:, 1], t0_s, side="right")) if len(spans) else 0
        return i < len(spans) and spans[i, 0] < t1_s

    def beats_between(self, t0_s: float, t1_s: float) -> list[tuple[float, str]]:
        # day-long records: a binary search, not a mask over 100,000 beats per second
        lo, hi = np.searchsorted(self.beat_times_s, [t0_s, t1_s], side="left")
        return [(float(t), str(c)) for t, c in zip(self.beat_times_s[lo:hi], self.beat_classes[lo:hi])]


@dataclass
class Wearable:
    """One simulated device: turns a source into ECG chunks and heart-rate samples."""

    patient_id: str
    device_id: str
    source: BeatSource | RRSource
    start_ts_ms: int
    chunk_s: float = 1.0
    wire: Wire = "ecg/1"
    seq: int = 0  # ECG chunks sent
    hr_seq: int = 0  # heart-rate samples sent: a stream of its own, none without beats
    _t_s: float = 0.0
    _rr_hist: list[float] = field(default_factory=list)
    _last_beat_s: float | None = None
    _last_hr_bpm: float | None = None

    def step(self) -> tuple[bytes | None, bytes | None]:
        """Advance by one chunk; return (ECG message, heart-rate message or None)."""
        if isinstance(self.source, RRSource):
            raise TypeError(f"source {self.source.name!r} is RR-only (no samples): use step_rr")
        fs = self.source.sample_rate_hz
        n = int(round(self.chunk_s * fs))
        x = self.source.next_chunk(n)
        if len(x) == 0:
            return None, None
        t0 = self._t_s
        ts_ms = self.start_ts_ms + int(round(t0 * 1000))
        if self.wire == "ecg/2":
            x2 = np.clip(x, -_ECG2_RANGE_MV, _ECG2_RANGE_MV)[None, :]
            ecg = encode_ecg2(self.patient_id, self.device_id, self.seq, ts_ms, fs, x2, scale_mv=ECG2_SCALE_MV)
        else:
            ecg = encode_ecg(self.patient_id, self.device_id, self.seq, ts_ms, fs, x[None, :])
        t1 = t0 + len(x) / fs
        hr = self._heart_rate(t0, t1, ts_ms)
        self.seq += 1
        self._t_s = t1
        return ecg, hr

    def step_rr(self) -> tuple[bool, bytes | None]:
        """Advance an RR-only source (:class:`RRSource`, no samples) by one chunk of time.

        Returns
        -------
        (advanced, heart-rate message or None)
            ``advanced`` is False once the source's ``duration_s`` has been sent.
        """
        if not isinstance(self.source, RRSource):
            raise TypeError(f"step_rr needs an RRSource, got {type(self.source).__name__}: use step")
        duration_s = self.source.duration_s
        t0 = self._t_s
        if t0 >= duration_s:
            return False, None
        t1 = min(t0 + self.chunk_s, duration_s)
        hr = self._heart_rate(t0, t1, self.start_ts_ms + int(round(t0 * 1000)))
        self._t_s = t1
        return True, hr

    def _heart_rate(self, t0: float, t1: float, ts_ms: int) -> bytes | None:
        """The on-board beat detector: the heart-rate message for the beats in [t0, t1).

        From an :class:`RRSource`, an interval across annotated noise is no RR (the rate
        estimate restarts after it), and a second that overlaps such a hole without a
        clean RR is reported with ``quality`` 0 and the last rate.
        """
        rr_ms = []
        beats = self.source.beats_between(t0, t1)
        src = self.source
        holes = src.ends_hole(t0, t1) if isinstance(src, RRSource) else np.zeros(len(beats), bool)
        for (t, _label), hole in zip(beats, holes):
            if hole:
                self._rr_hist = []
            elif self._last_beat_s is not None:
                rr_ms.append((t - self._last_beat_s) * 1000.0)
            self._last_beat_s = t
        self._rr_hist = (self._rr_hist + rr_ms)[-8:]
        hr = None
        recent = self._last_beat_s is not None and t1 - self._last_beat_s < 3.0
        noisy = isinstance(src, RRSource) and src.in_noise(t0, t1)
        if noisy and not rr_ms:
            if self._last_hr_bpm is not None:
                hr = encode_hr(self.patient_id, self.device_id, self.hr_seq, ts_ms, self._last_hr_bpm, [],
                               quality=0.0)
                self.hr_seq += 1
        elif self._rr_hist and recent:
            hr_bpm = 60000.0 / float(np.median(self._rr_hist[-5:]))
            if 15.0 <= hr_bpm <= 350.0:
                hr = encode_hr(self.patient_id, self.device_id, self.hr_seq, ts_ms, hr_bpm,
                               [v for v in rr_ms if 150.0 <= v <= 20000.0])
                self.hr_seq += 1
                self._last_hr_bpm = hr_bpm
        return hr


def parse_events(spec: str) -> dict[str, list[Event]]:
    """Parse ``"p-0002=vrun@40:5,pvc@20;p-0003=pause@50:5"`` into events per patient.

    Each item is ``kind@start_s[:duration_s]``.
    """
    out: dict[str, list[Event]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        if "=" not in part:
            raise ValueError(f"event spec {part!r} must be PATIENT=kind@start[:duration],...")
        pid, items = part.split("=", 1)
        evs = []
        for item in filter(None, (i.strip() for i in items.split(","))):
            try:
                kind, rest = item.split("@", 1)
                start, _, dur = rest.partition(":")
                evs.append(Event(kind.strip(), float(start), float(dur) if dur else 0.0))  # type: ignore[arg-type]
            except ValueError as exc:
                raise ValueError(f"bad event {item!r} for {pid!r}: {exc}") from None
        out[pid.strip()] = evs
    return out


SLOTS = 10  # send slots per chunk period; wearable i sends in slot i % SLOTS


def slot_offset_ms(i: int, chunk_s: float = 1.0) -> int:
    """Clock offset of wearable ``i``: its chunks end (and are sent) in its own slot, so
    the broker sees a steady flow and event time still equals send time."""
    return int(round((i % SLOTS) * chunk_s * 1000 / SLOTS))


def patient_ids(n: int) -> list[str]:
    return [f"p-{i:04d}" for i in range(1, n + 1)]


def demo_cohort(n: int, onset_s: float = 25.0) -> dict[str, list[Event]]:
    """Events for the demo: the second patient gets a ventricular run, the third a pause,
    the fourth sustained tachycardia; everyone else stays in normal sinus rhythm."""
    ids = patient_ids(n)
    plan = [
        [Event("vrun", onset_s, 6.0)],
        [Event("pause", onset_s + 5.0, 5.0)],
        [Event("tachy", onset_s - 10.0, 60.0, {"hr_bpm": 150})],
    ]
    return {pid: evs for pid, evs in zip(ids[1:], plan)}


class Simulation:
    """Drives many wearables in real time (or faster) and sends to Kafka."""

    def __init__(self, wearables: Sequence[Wearable], producer, ecg_topic: str, hr_topic: str,
                 speed: float = 1.0, chunk_s: float = 1.0, start_ms: int | None = None) -> None:
        self.wearables = list(wearables)
        self.producer = producer
        self.ecg_topic, self.hr_topic = ecg_topic, hr_topic
        self.speed = speed
        self.chunk_s = chunk_s
        # In real time, wearable i's chunk k is sent when its last sample is recorded:
        # start_ms + slot offset + (k + 1) chunks, on the wall clock.
        self.start_ms = start_ms
        self.sent_ecg = self.sent_hr = 0
        self.sent_ecg_bytes = 0  # ECG message values, for bytes per patient-second
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self, seconds: float | None, progress: bool = True) -> None:
        slots = SLOTS
        groups = [self.wearables[i::slots] for i in range(slots)]
        wall0 = time.monotonic()
        if self.start_ms is not None and self.speed == 1:
            wall0 += self.start_ms / 1000.0 - time.time()
        steps = None if seconds is None else int(round(seconds / self.chunk_s))
        k = 0
        last_report = wall0
        while not self._stop and (steps is None or k < steps):
            alive = False
            for s, group in enumerate(groups):
                if self.speed > 0:
                    due = wall0 + (k + 1 + s / slots) * self.chunk_s / self.speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                for w in group:
                    ecg, hr = w.step()
                    if ecg is None:
                        continue
                    alive = True
                    key = w.patient_id.encode()
                    self.producer.send(self.ecg_topic, key=key, value=ecg)
                    self.sent_ecg += 1
                    self.sent_ecg_bytes += len(ecg)
                    if hr is not None:
                        self.producer.send(self.hr_topic, key=key, value=hr)
                        self.sent_hr += 1
                if self._stop:
                    break
            k += 1
            if not alive:
                break
            now = time.monotonic()
            if progress and now - last_report >= 5.0:
                last_report = now
                total = f"/{steps}" if steps else ""
                print(f"[simulate] t={k * self.chunk_s:.0f}s{total and ' of ' + str(steps * self.chunk_s) + 's'} "
                      f"patients={len(self.wearables)} ecg_sent={self.sent_ecg} hr_sent={self.sent_hr}",
                      file=sys.stderr, flush=True)
        self.producer.flush()


def make_producer(bootstrap: str, security: KafkaSecurity | None = None):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=5,
                         compression_type=None, max_request_size=1_048_576,
                         **(security or KafkaSecurity()).kafka_python_kwargs())


def build_wearables(args: argparse.Namespace, start_ts_ms: int) -> tuple[list[Wearable], dict]:
    truth: dict[str, dict] = {}
    wearables: list[Wearable] = []
    if args.records:
        from models.records import list_records

        names = args.record_names.split(",") if args.record_names else list_records(args.records)
        for i, name in enumerate(names[: args.patients] if args.patients else names):
            pid = f"rec-{name}"
            src = RecordSource(args.records, name)
            t0 = start_ts_ms + slot_offset_ms(i, args.chunk_s)
            wearables.append(Wearable(pid, f"dev-{name}", src, t0, args.chunk_s, args.wire))
            truth[pid] = {"record": name, "start_ts_ms": t0}
        return wearables, truth
    events = demo_cohort(args.patients, args.onset_s) if args.preset == "demo" else {}
    if args.events:
        events.update(parse_events(args.events))
    for i, pid in enumerate(patient_ids(args.patients)):
        evs = events.get(pid, [])
        src = SyntheticPatient(pid, sample_rate_hz=args.sample_rate, hr_bpm=65 + (i * 7) % 20,
                               events=evs)
        t0 = start_ts_ms + slot_offset_ms(i, args.chunk_s)
        wearables.append(Wearable(pid, f"dev-{i + 1:04d}", src, t0, args.chunk_s, args.wire))
        truth[pid] = {"start_ts_ms": t0,
                      "events": [{"kind": e.kind, "onset_ts_ms": t0 + int(e.start_s * 1000),
                                  "duration_s": e.duration_s} for e in evs]}
    return wearables, truth


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cardiowatch simulate", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--patients", type=int, default=10, help="number of wearables")
    p.add_argument("--synthetic", action="store_true", help="synthetic ECG (what runs without --records)")
    p.add_argument("--records", type=Path, help="replay the WFDB records in this folder, one per wearable")
    p.add_argument("--record-names", help="comma-separated records to replay (default: all in --records)")
    p.add_argument("--seconds", type=float, help="stop after this much signal time (default: forever)")
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time, 10 = ten times faster, 0 = flat out")
    p.add_argument("--chunk-s", type=float, default=1.0, help="seconds of ECG per message (and per heart-rate sample)")
    p.add_argument("--sample-rate", type=float, default=250.0, help="synthetic ECG sample rate in Hz (records keep theirs)")
    p.add_argument("--wire", choices=get_args(Wire), default="ecg/1",
                   help="ECG wire format: ecg/1 (JSON) or ecg/2 (binary int16, 1 uV per count)")
    p.add_argument("--preset", choices=["none", "demo"], default="none",
                   help="'demo': p-0002 gets a ventricular run, p-0003 a pause, p-0004 tachycardia")
    p.add_argument("--onset-s", type=float, default=25.0, help="seconds into the stream when the --preset demo events start")
    p.add_argument("--events", default="", metavar="SPEC",
                   help="events to inject, PATIENT=kind@start_s[:duration_s],...;... e.g. "
                        "'p-0002=vrun@40:5,pvc@20;p-0003=pause@50:5' (default: none)")
    p.add_argument("--start-ms", type=int, help="event time of the first sample (default: now)")
    p.add_argument("--truth", type=Path, help="write each patient's injected events (JSON) here")
    p.add_argument("--bootstrap", help="Kafka bootstrap (default: CARDIOWATCH_BOOTSTRAP)")
    p.add_argument("--write-records", type=Path, metavar="DIR",
                   help="write the synthetic patients as WFDB records (with reference beat "
                        "annotations) into DIR instead of streaming; --seconds sets their "
                        "length (default 600); patients without --events get PVCs and, "
                        "every other one, a ventricular run")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.patients < 0:
        p.error(f"--patients must be >= 0, got {args.patients}")
    if args.speed < 0:
        p.error(f"--speed must be >= 0, got {args.speed}")
    return args


def evaluation_events(i: int, seconds: float) -> list[Event]:
    """A test mix for written records: isolated PVCs every ~20-40 s for every patient,
    and a 5 s ventricular run at 60% of the record for every other one."""
    import random

    rng = random.Random(1000 + i)
    evs, t = [], 15.0
    while t < seconds - 10:
        evs.append(Event("pvc", round(t, 2)))
        t += rng.uniform(20.0, 40.0)
    if i % 2 == 0:
        evs.append(Event("vrun", round(0.6 * seconds, 1), 5.0))
    return evs


def write_records(args: argparse.Namespace) -> int:
    from models.synthetic import synth_ecg, write_wfdb

    seconds = args.seconds or 600.0
    given = parse_events(args.events) if args.events else {}
    for i, pid in enumerate(patient_ids(args.patients)):
        evs = given.get(pid, evaluation_events(i, seconds))
        rec = synth_ecg(seconds, args.sample_rate, hr_bpm=60 + (i * 7) % 30, events=evs,
                        seed=zlib.crc32(pid.encode()))
        path = write_wfdb(rec, args.write_records, pid.replace("-", ""))
        print(f"[simulate] wrote {path} ({seconds:.0f} s, {len(rec.beat_samples)} beats, "
              f"{int(np.sum(rec.beat_labels == 'V'))} V)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_records:
        return write_records(args)
    kafka = KafkaSettings.from_env()
    bootstrap = args.bootstrap or kafka.bootstrap
    start_ms = args.start_ms if args.start_ms is not None else int(time.time() * 1000)
    wearables, truth = build_wearables(args, start_ms)
    if args.truth:
        args.truth.write_text(json.dumps(truth, indent=1))
    # a bad certificate or password: one error naming it (KafkaConnectError), no retries
    asyncio.run(check_connection(bootstrap, kafka.security, kafka.connect_timeout_s))
    sim = Simulation(wearables, make_producer(bootstrap, kafka.security), kafka.topics.ecg, kafka.topics.hr,
                     speed=args.speed, chunk_s=args.chunk_s, start_ms=start_ms)
    signal.signal(signal.SIGTERM, sim.stop)
    signal.signal(signal.SIGINT, sim.stop)
    print(f"[simulate] {len(wearables)} wearables -> {bootstrap} "
          f"({'real time' if args.speed == 1 else 'speed ' + str(args.speed or 'max')})", file=sys.stderr)
    sim.run(args.seconds)
    print(f"[simulate] done: {sim.sent_ecg} ECG chunks, {sim.sent_hr} heart-rate samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
