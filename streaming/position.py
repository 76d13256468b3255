"""Stream checks: where a device's stream is, and what a message's sequence and time say.

Pure Python, shared by the ECG and heart-rate cores (:mod:`streaming.pipeline`). The
rule, for a message of a patient whose stream so far ended at ``(last_seq, last_end)``:

1. **Redelivery**: same partition, offset already applied -> skipped (a replay after a
   crash; offsets only compare within one partition).
2. **Another device id** -> a new stream (a replaced or re-paired wearable).
3. **Known message**: its ``seq`` lies in one of the stream's recent *runs* (stretches
   where sequence and time moved on together) and its ``ts_ms`` is the time that run
   gives that ``seq`` -> a true duplicate (``duplicate_seq``), set aside.
4. **Sequence moves on** (``seq > last_seq``): the time it should carry is
   ``last_end`` plus the messages in between. Within :attr:`StreamRule.behind_ms` /
   :attr:`StreamRule.ahead_ms` of that it is the same time base (consecutive, or a
   gap: a new signal segment, as before). Farther off is a **clock jump**: the message
   is set aside (``out_of_order_ts``) and remembered; the *next* message decides.
5. **Sequence does not move on** (``seq <= last_seq``, not a known message): a
   **restart** (reboot). With time moving on it is a new stream epoch at once (a segment
   break, like a gap); with time going back it is held for the next message, as in 4.

The next message after one held aside:

- continues it (sequence and time in line with it): the jump (or restart with the clock
  set back) is real; the time base re-anchors at the new time, shifted by
  :attr:`Verdict.shift_ms`, and the held message stays set aside;
- continues the stream before it: the held message was a **glitch**; it stays set aside
  and the stream goes on in its old time base (its sequence slot is a gap);
- neither: it is judged afresh against the stream (and may be held in turn).

So one bad message sets aside at most itself, and a real jump costs the one message that
announced it. Nothing is ever stamped with a time that a later message contradicted:
beat and alert ids are keyed by event time, so an hour-ahead chunk let through would
publish ids that the real beats of an hour later would collide with.

Per-patient state is a few numbers and at most :data:`MAX_RUNS` runs of four; it packs
into the stream states' JSON headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from streaming.events import DeviceClockEvent

__all__ = [
    "StreamRule",
    "ECG_RULE",
    "HR_RULE",
    "STITCH_TOLERANCE_MS",
    "MAX_RUNS",
    "Verdict",
    "StreamPosition",
]

# A chunk whose first sample is within this much of where the previous chunk ended
# continues the same segment (device clocks jitter); farther apart is a gap and the
# signal is not stitched across it.
STITCH_TOLERANCE_MS = 100.0
# Runs of (seq, ts) kept for telling a duplicate from a restart (4 numbers each).
MAX_RUNS = 8
# A message matches a run's time for its seq within this (jitter, interpolation).
RUN_MATCH_MS = 500.0


@dataclass(frozen=True, slots=True)
class StreamRule:
    """How far a message's time may be from where its sequence number puts it.

    Parameters
    ----------
    behind_ms, ahead_ms
        Deviation (earlier / later) beyond which the message is a clock jump, not a gap.
    lost_message_ms
        Most time one lost message can account for beyond its own duration: 0 for ECG
        chunks (each carries its duration), about a second for heart-rate samples.
    stitch_ms
        A message in sequence whose start is farther than this from the previous one's
        end starts a new segment (the signal is not stitched across); None: time never
        breaks a segment (heart-rate samples are points, not spans).
    """

    behind_ms: float
    ahead_ms: float
    lost_message_ms: float
    stitch_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("behind_ms", "ahead_ms", "lost_message_ms", "stitch_ms"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 86_400_000:
                raise ValueError(f"{name} must be in [0, 86400000] ms, got {v}")


#: ECG chunks: samples are continuous, so more than 2 s off the expected time is the clock.
ECG_RULE = StreamRule(behind_ms=2_000.0, ahead_ms=2_000.0, lost_message_ms=0.0,
                      stitch_ms=STITCH_TOLERANCE_MS)
#: Heart-rate samples come only with beats: a strap without beats (lead off, asystole)
#: sends nothing while its sequence waits, so only more than 5 min ahead is the clock.
HR_RULE = StreamRule(behind_ms=2_000.0, ahead_ms=300_000.0, lost_message_ms=1_000.0)

VerdictKind = Literal["redelivered", "new_device", "duplicate", "held", "ok", "gap", "restart",
                      "jump"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a message is to its stream.

    ``kind``: ``redelivered`` (skip), ``duplicate`` / ``held`` (set aside, ``detail``
    says why), ``ok`` (continues), ``gap`` (same time base, new segment), ``new_device``,
    ``restart`` (new epoch) or ``jump`` (re-anchored: every event time of the patient's
    state moves by ``shift_ms``). ``events`` are the clock events this message showed.
    """

    kind: VerdictKind
    shift_ms: int = 0
    detail: str = ""
    events: tuple[DeviceClockEvent, ...] = ()


@dataclass(slots=True)
class StreamPosition:
    """Where a device stream is (changelogged with the patient's stream state).

    ``last_ts_ms`` is the end of the last applied message (an ECG chunk's last sample +
    one sample period; a heart-rate sample's own time). ``runs`` holds
    ``[seq0, ts0, seq1, ts1]`` (message start times) of the latest stretches; ``held``
    the ``[seq, ts_ms, end_ts_ms]`` of a message set aside for a clock jump.
    """

    last_seq: int | None = None
    last_ts_ms: float | None = None
    last_offset: int = -1
    last_partition: int = -1
    device_id: str = ""
    runs: list[list[float]] = field(default_factory=list)
    held: list[float] | None = None

    def copy(self) -> StreamPosition:
        return StreamPosition(self.last_seq, self.last_ts_ms, self.last_offset,
                              self.last_partition, self.device_id,
                              [list(r) for r in self.runs],
                              None if self.held is None else list(self.held))

    # -- (de)serialisation in a stream state's header ------------------------------------
    def to_header(self) -> dict[str, Any]:
        return {"last_seq": self.last_seq, "last_ts_ms": self.last_ts_ms,
                "last_offset": self.last_offset, "last_partition": self.last_partition,
                "runs": self.runs, "held": self.held}

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> StreamPosition:
        """From a header written by :meth:`to_header`, or by a release before runs and
        held messages (they start empty: duplicates older than the next message are then
        judged by time alone)."""
        held = h.get("held")
        return cls(h["last_seq"], h["last_ts_ms"], h["last_offset"], h.get("last_partition", -1),
                   h["device_id"], [list(r) for r in h.get("runs", [])],
                   None if held is None else list(held))

    # -- the rule ----------------------------------------------------------------------
    def check(self, rule: StreamRule, patient_id: str, seq: int, ts_ms: int,
              duration_ms: float, offset: int, partition: int, device_id: str) -> Verdict:
        """Judge one message (see the module docstring). A ``held`` verdict records the
        message (and its offset) here; every other verdict leaves the position to
        :meth:`advance` (accepted) or as it is (skipped, set aside)."""
        if partition == self.last_partition and offset <= self.last_offset:
            return Verdict("redelivered")
        if self.device_id and device_id != self.device_id:
            return Verdict("new_device")
        if self.last_seq is None or self.last_ts_ms is None:
            return Verdict("ok")
        last_seq, last_end = self.last_seq, self.last_ts_ms
        events: list[DeviceClockEvent] = []
        held, self.held = self.held, None
        if held is not None:
            h_seq, h_ts, h_end = int(held[0]), held[1], held[2]
            if seq > h_seq and _off(rule, ts_ms, h_end, seq - h_seq - 1, duration_ms) == 0:
                # the message held aside was right: its time base is the device's now;
                # the shift maps where the held message belonged onto where it was stamped
                restarted = h_seq <= last_seq
                shift = int(round(h_ts - (last_end if restarted else _expected(
                    rule, last_end, h_seq - last_seq - 1, h_end - h_ts, h_ts))))
                ev = DeviceClockEvent(
                    patient_id, device_id, int(h_ts), "restart" if restarted else "jump",
                    "forward" if shift > 0 else "backward", shift, last_seq, int(last_end),
                    h_seq, int(h_ts))
                return Verdict("restart" if restarted else "jump", shift, events=(ev,))
            # it contradicted both before and after: a one-off, left set aside
            events.append(DeviceClockEvent(
                patient_id, device_id, int(last_end), "glitch",
                "forward" if h_ts > last_end else "backward", 0, last_seq, int(last_end),
                h_seq, int(h_ts)))
        if self._known(seq, ts_ms, duration_ms):
            return Verdict("duplicate", detail=f"seq {seq} at ts_ms {ts_ms} already seen "
                                               f"(last seq {last_seq})", events=tuple(events))
        if seq > last_seq:
            off = _off(rule, ts_ms, last_end, seq - last_seq - 1, duration_ms)
            if off == 0:
                gap = seq != last_seq + 1 or (rule.stitch_ms is not None
                                              and abs(ts_ms - last_end) > rule.stitch_ms)
                return Verdict("gap" if gap else "ok", events=tuple(events))
            why = (f"ts_ms {ts_ms} is {abs(off) / 1000:.1f} s "
                   f"{'before' if off < 0 else 'after'} where seq {seq} belongs "
                   f"(after seq {last_seq}, which ended at {last_end:.0f})")
        elif ts_ms >= last_end - rule.behind_ms:
            ev = DeviceClockEvent(patient_id, device_id, ts_ms, "restart", "none", 0, last_seq,
                                  int(last_end), seq, ts_ms)
            return Verdict("restart", events=(*events, ev))
        else:
            why = (f"seq {seq} restarts the sequence (last seq {last_seq}) with ts_ms {ts_ms} "
                   f"before the previous message's end {last_end:.0f}")
        self.held = [seq, ts_ms, ts_ms + duration_ms]
        self.last_offset, self.last_partition = offset, partition
        return Verdict("held", detail=f"{why}; set aside unless the next message confirms "
                                      "the new time", events=tuple(events))

    def advance(self, seq: int, ts_ms: int, duration_ms: float, offset: int, partition: int,
                device_id: str, new_run: bool) -> None:
        """Record an accepted message; ``new_run`` after a new device, restart or jump."""
        if self.device_id != device_id:
            self.runs.clear()  # another device's sequence numbers say nothing about this one
        if new_run or not self.runs:
            self.runs.append([seq, ts_ms, seq, ts_ms])
        elif self.runs and _extends(self.runs[-1], seq, ts_ms, duration_ms):
            self.runs[-1][2:] = [seq, ts_ms]
        else:
            self.runs.append([seq, ts_ms, seq, ts_ms])
        del self.runs[:-MAX_RUNS]
        self.last_seq, self.last_ts_ms = seq, ts_ms + duration_ms
        self.last_offset, self.last_partition = offset, partition
        self.device_id = device_id
        self.held = None

    def _known(self, seq: int, ts_ms: int, duration_ms: float) -> bool:
        if (seq == self.last_seq and self.last_ts_ms is not None
                and abs(ts_ms + duration_ms - self.last_ts_ms) <= RUN_MATCH_MS):
            return True  # the last message again (also for a state from before runs)
        for s0, t0, s1, t1 in self.runs:
            if s0 <= seq <= s1:
                t = t0 if s1 == s0 else t0 + (t1 - t0) * (seq - s0) / (s1 - s0)
                if abs(ts_ms - t) <= RUN_MATCH_MS:
                    return True
        return False


def _expected(rule: StreamRule, last_end: float, lost: int, duration_ms: float,
              ts_ms: float) -> float:
    """The time in the window of :func:`_off` closest to ``ts_ms``."""
    lo = last_end + lost * duration_ms
    hi = last_end + lost * (duration_ms + rule.lost_message_ms)
    return min(max(ts_ms, lo), hi)


def _off(rule: StreamRule, ts_ms: float, last_end: float, lost: int, duration_ms: float) -> float:
    """How far ``ts_ms`` is outside the times a message after ``lost`` lost ones may
    carry (0 inside; negative: too early)."""
    exp = _expected(rule, last_end, lost, duration_ms, ts_ms)
    d = ts_ms - exp
    if -rule.behind_ms <= d <= rule.ahead_ms:
        return 0.0
    return d


def _extends(run: list[float], seq: int, ts_ms: float, duration_ms: float) -> bool:
    """The message continues the run's line of seq against time (drift within 2 %)."""
    s0, t0, s1, t1 = run
    k = seq - s1
    if k < 1:
        return False
    step = (t1 - t0) / (s1 - s0) if s1 > s0 else duration_ms
    if s1 == s0 and step <= 0:
        return 0 < ts_ms - t1 <= 2_000.0 * k  # a second heart-rate sample sets the pace
    return abs(ts_ms - (t1 + k * step)) <= RUN_MATCH_MS + 0.02 * k * step
