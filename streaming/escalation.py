"""Escalation: tracks open alerts for the dispatcher and escalates unacknowledged ones.

Pure and wall-clock based, with the time passed in (``now_ms``, epoch milliseconds);
no Faust, Kafka or HTTP here. Alerts latch: an alert stays open after its condition
``cleared`` until a person acknowledges or resolves it (IEC 60601-1-8 latching alarms),
and an unacknowledged latched alert keeps escalating.

The tracker is rebuildable: replaying the ``alerts`` topic (``observe``, including the
``escalated`` and ``acknowledged`` events this tracker produced and the dispatcher
logged there) and the ``acks`` topic (``acknowledge`` / ``resolve``) in order, each with
the wall time it was recorded, reproduces the same state (``to_dict``).

Memory stays bounded: a finished alert (resolved, or acknowledged with its condition
over) is remembered only as its id and the time it finished, so late echoes of it (a
replayed ``raised``, a second resolve) cannot reopen it; :meth:`EscalationTracker.forget`
drops those once ``retention_ms`` has passed. Open alerts, acknowledged or not, latched
or not, are never forgotten.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streaming.events import PRIORITY_ORDER, AlertEvent, Priority

__all__ = ["EscalationConfig", "EscalationTracker"]

STATE_VERSION = 1
DEFAULT_RETENTION_MS = 24 * 3_600_000
_PRIORITIES = ("high", "medium", "low")


def _default_after() -> dict[Priority, float | None]:
    return {"high": 120.0, "medium": None, "low": None}


@dataclass(frozen=True, slots=True)
class EscalationConfig:
    """When to escalate unacknowledged alerts.

    Parameters
    ----------
    escalate_after_s
        Per priority, seconds without acknowledgement before each escalation step;
        ``None`` never escalates that priority.
    max_level
        Highest ``escalation_level`` (level 0 is the first notification).
    repeat
        After ``max_level`` is reached, keep sending reminders at ``max_level`` every
        interval (``details["reminder"]`` counts them, and ``event_id`` ends in it, so
        each reminder is a new webhook-id for receivers that deduplicate).
    """

    escalate_after_s: Mapping[Priority, float | None] = field(default_factory=_default_after)
    max_level: int = 2
    repeat: bool = False

    def __post_init__(self) -> None:
        for key, value in self.escalate_after_s.items():
            if key not in _PRIORITIES:
                raise ValueError(
                    f"escalate_after_s keys must be one of {_PRIORITIES}, got {key!r}")
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))
                                      or not 1.0 <= value <= 86_400.0):
                raise ValueError(
                    f"escalate_after_s[{key!r}] must be None or seconds in [1, 86400], "
                    f"got {value!r}")
        if isinstance(self.max_level, bool) or not isinstance(self.max_level, int) \
                or not 0 <= self.max_level <= 10:
            raise ValueError(f"max_level must be an integer in [0, 10], got {self.max_level!r}")
        if not isinstance(self.repeat, bool):
            raise ValueError(f"repeat must be true or false, got {self.repeat!r}")

    def interval_ms(self, priority: str) -> int | None:
        """Escalation interval for a priority in ms, or ``None``."""
        s = self.escalate_after_s.get(priority)  # type: ignore[call-overload]
        return None if s is None else int(round(s * 1000))


class EscalationTracker:
    """Open alerts of all patients, their acknowledgement and escalation.

    Parameters
    ----------
    config
        Escalation timing.
    retention_ms
        How long a finished alert's id is remembered (so late events of it change
        nothing) before :meth:`forget` drops it; milliseconds of the ``now_ms`` clock.
    """

    def __init__(self, config: EscalationConfig | None = None,
                 retention_ms: int = DEFAULT_RETENTION_MS) -> None:
        if isinstance(retention_ms, bool) or not isinstance(retention_ms, int) or retention_ms < 0:
            raise ValueError(f"retention_ms must be a non-negative integer, got {retention_ms!r}")
        self.config = config if config is not None else EscalationConfig()
        self.retention_ms = retention_ms
        # alert_id -> record; records are JSON-safe dicts (see to_dict)
        self._open: dict[str, dict[str, Any]] = {}
        # finished alert_id -> when it finished (now_ms); insertion order ~ oldest first
        self._closed: dict[str, int] = {}
        # the latest forget() cutoff: an event of an alert not held from before it belongs
        # to an alert already forgotten (or finished longer ago), and must not reopen it
        self._horizon_ms: int | None = None

    # ------------------------------------------------------------------ inputs
    def observe(self, event: AlertEvent, now_ms: int) -> None:
        """Track one event from the alerts topic (live or replayed).

        ``raised`` opens (and arms escalation), ``updated`` refreshes (a priority rise
        re-arms escalation even after an acknowledgement), ``cleared`` latches,
        ``escalated`` / ``acknowledged`` / ``resolved`` replay this tracker's own outputs.
        Repeats of an event already applied change nothing.
        """
        if event.alert_id in self._closed:
            return  # finished is final: replays and echoes of it change nothing
        rec = self._open.get(event.alert_id)
        if rec is None and self._horizon_ms is not None and now_ms <= self._horizon_ms:
            return  # a replayed record of an alert forgotten after the retention
        if event.action == "resolved":
            self._close(event.alert_id, now_ms)
            return
        if rec is None:
            if event.action == "acknowledged":
                return  # acknowledged after it closed: nothing open to track
            rec = {"event": _plain(event), "opened_wall_ms": now_ms, "level": 0,
                   "deadline_ms": None, "acknowledged": False, "acked_by": None,
                   "cleared": False, "reminders": 0}
            self._open[event.alert_id] = rec
            if event.action == "cleared":
                rec["cleared"] = True
            if event.action != "escalated":
                self._arm(rec, now_ms)
        if event.action == "escalated":
            if event.escalation_level > rec["level"]:
                rec["level"] = event.escalation_level
                rec["deadline_ms"] = None
                self._arm(rec, now_ms)
            elif event.escalation_level == rec["level"] and "reminder" in event.details:
                rec["reminders"] = max(rec["reminders"], int(event.details["reminder"]))
                rec["deadline_ms"] = None
                self._arm(rec, now_ms)
            return
        if event.action == "acknowledged":
            self._ack(rec, str(event.details.get("acknowledged_by", "")), now_ms)
            return
        if event.revision < rec["event"]["revision"]:
            return  # stale or duplicate
        old_priority = rec["event"]["priority"]
        rec["event"] = _plain(event)
        if event.action == "cleared":
            rec["cleared"] = True
            if rec["acknowledged"]:
                self._close(event.alert_id, now_ms)  # acknowledged and over: closed
            return
        if event.action in ("raised", "updated"):
            rec["cleared"] = False
            if PRIORITY_ORDER[event.priority] > PRIORITY_ORDER[old_priority]:
                rec["acknowledged"] = False
                self._arm(rec, now_ms)

    def acknowledge(self, alert_id: str, now_ms: int, by: str) -> AlertEvent | None:
        """A person acknowledged the alert: stop escalating it.

        Returns
        -------
        AlertEvent or None
            The ``acknowledged`` event to log and deliver; ``None`` when the id is not
            open or it was already acknowledged.
        """
        rec = self._open.get(alert_id)
        if rec is None or rec["acknowledged"]:
            return None
        ev = self._emit(rec, "acknowledged", now_ms, acknowledged_by=by)
        self._ack(rec, by, now_ms)
        return ev

    def resolve(self, alert_id: str, now_ms: int, by: str) -> AlertEvent | None:
        """A person closed the alert for good; ``None`` when the id is not open."""
        rec = self._open.get(alert_id)
        if rec is None:
            return None
        self._close(alert_id, now_ms)
        return self._emit(rec, "resolved", now_ms, resolved_by=by)

    def forget(self, now_ms: int) -> list[str]:
        """Drop the finished alerts that finished ``retention_ms`` or more before ``now_ms``.

        Open alerts (acknowledged or not, latched or not) are never dropped. From then
        on, an event of an alert not held whose ``now_ms`` is at or before that cutoff
        (a replay of a forgotten alert's records) is ignored.

        Returns
        -------
        list of str
            The alert ids forgotten.
        """
        cutoff = now_ms - self.retention_ms
        self._horizon_ms = cutoff if self._horizon_ms is None else max(self._horizon_ms, cutoff)
        gone = [a for a, t in self._closed.items() if t <= cutoff]
        for a in gone:
            del self._closed[a]
        return gone

    def __len__(self) -> int:
        """Alerts held: open ones and finished ones not yet forgotten."""
        return len(self._open) + len(self._closed)

    def is_closed(self, alert_id: str) -> bool:
        """Whether the alert finished and is still remembered as finished."""
        return alert_id in self._closed

    def export(self, alert_id: str) -> dict[str, Any] | None:
        """One alert's state, JSON-safe (``{"open": record}`` or ``{"closed_at_ms": t}``),
        for the dispatcher's alert-state topic; ``None`` when not held."""
        if alert_id in self._closed:
            return {"closed_at_ms": self._closed[alert_id]}
        rec = self._open.get(alert_id)
        return None if rec is None else {"open": copy.deepcopy(rec)}

    def restore(self, alert_id: str, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`export` for one alert (replaces what is held for it)."""
        self._open.pop(alert_id, None)
        self._closed.pop(alert_id, None)
        if "closed_at_ms" in state:
            t = state["closed_at_ms"]
            if isinstance(t, bool) or not isinstance(t, int):
                raise ValueError(f"closed_at_ms of {alert_id!r} must be epoch ms, got {t!r}")
            self._closed[alert_id] = t
        elif isinstance(state.get("open"), Mapping):
            self._open[alert_id] = copy.deepcopy(dict(state["open"]))
        else:
            raise ValueError(f"tracker state of {alert_id!r} needs 'open' or 'closed_at_ms', "
                             f"got keys {sorted(state)}")

    # ------------------------------------------------------------------ outputs
    def due(self, now_ms: int) -> list[AlertEvent]:
        """Escalations whose deadline has passed, one step per alert per call.

        Each is an ``escalated`` event one level up (never beyond ``max_level``); the
        next deadline is one interval after ``now_ms``.
        """
        out: list[AlertEvent] = []
        for alert_id in sorted(self._open, key=lambda a: (self._open[a]["deadline_ms"] or 0, a)):
            rec = self._open[alert_id]
            deadline = rec["deadline_ms"]
            if rec["acknowledged"] or deadline is None or deadline > now_ms:
                continue
            rec["deadline_ms"] = None
            if rec["level"] < self.config.max_level:
                rec["level"] += 1
                out.append(self._emit(rec, "escalated", now_ms))
            elif self.config.repeat:
                rec["reminders"] += 1
                out.append(self._emit(rec, "escalated", now_ms, reminder=rec["reminders"]))
            self._arm(rec, now_ms)
        return out

    def open_alerts(self) -> list[AlertEvent]:
        """Latest event of every open alert (latched ones included), oldest first.

        ``escalation_level`` is the current level; ``details["acknowledged"]`` and
        ``details["latched"]`` say whether someone acknowledged it and whether its
        condition has already cleared.
        """
        recs = sorted(self._open.values(),
                      key=lambda r: (r["opened_wall_ms"], r["event"]["alert_id"]))
        out = []
        for r in recs:
            ev = AlertEvent.from_dict(copy.deepcopy(r["event"]))
            details = dict(ev.details)
            details.update(acknowledged=r["acknowledged"], latched=r["cleared"])
            out.append(dataclasses.replace(ev, escalation_level=r["level"], details=details))
        return out

    def next_deadline_ms(self) -> int | None:
        """Earliest pending escalation deadline (for the dispatcher's timer), or ``None``."""
        ds = [r["deadline_ms"] for r in self._open.values()
              if r["deadline_ms"] is not None and not r["acknowledged"]]
        return min(ds) if ds else None

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe snapshot of the tracked alerts."""
        return {"version": STATE_VERSION, "open": copy.deepcopy(self._open),
                "closed": dict(self._closed)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], config: EscalationConfig | None = None,
                  retention_ms: int = DEFAULT_RETENTION_MS) -> EscalationTracker:
        """Inverse of :meth:`to_dict` (snapshots without ``closed`` remember none)."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(
                f"escalation state version must be {STATE_VERSION}, got {d.get('version')!r}")
        t = cls(config, retention_ms)
        t._open = copy.deepcopy(dict(d["open"]))
        t._closed = {str(k): int(v) for k, v in dict(d.get("closed") or {}).items()}
        return t

    # ------------------------------------------------------------------ helpers
    def _arm(self, rec: dict[str, Any], now_ms: int) -> None:
        """Schedule the next escalation step if one is due for this alert."""
        if rec["acknowledged"]:
            return
        interval = self.config.interval_ms(rec["event"]["priority"])
        if interval is None:
            return
        if rec["level"] >= self.config.max_level and not self.config.repeat:
            return
        nxt = now_ms + interval
        rec["deadline_ms"] = nxt if rec["deadline_ms"] is None else min(rec["deadline_ms"], nxt)

    def _ack(self, rec: dict[str, Any], by: str, now_ms: int) -> None:
        rec["acknowledged"] = True
        rec["acked_by"] = by
        rec["deadline_ms"] = None
        if rec["cleared"]:
            self._close(rec["event"]["alert_id"], now_ms)

    def _close(self, alert_id: str, now_ms: int) -> None:
        self._open.pop(alert_id, None)
        self._closed.pop(alert_id, None)
        self._closed[alert_id] = now_ms

    def _emit(self, rec: Mapping[str, Any], action: str, now_ms: int,
              **extra: Any) -> AlertEvent:
        ev = AlertEvent.from_dict(copy.deepcopy(rec["event"]))
        details = dict(ev.details)
        details.update(extra)
        details["wall_ms"] = now_ms
        return dataclasses.replace(ev, action=action,  # type: ignore[arg-type]
                                   escalation_level=rec["level"], produced_wall_ms=None,
                                   details=details)


def _plain(event: AlertEvent) -> dict[str, Any]:
    """Event as a JSON-safe dict without the (possibly large) ECG strip."""
    d = event.to_dict()
    d["strip"] = None
    return d
