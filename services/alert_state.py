"""Delivery stage, state: the records of the dispatcher's compacted alert-state topic.

The dispatcher keeps, per alert, what its alert book and escalation tracker hold in the
``alert_state`` topic (``cleanup.policy=compact``), so a restart reads the latest state
of each alert instead of replaying the whole ``alerts`` and ``acks`` logs:

* key = alert id (UTF-8), value = a ``cardiowatch.alert-state/1`` record of ``kind``
  ``alert``: the alerts partition the alert lives in, the book entry
  (:meth:`services.ack_api.AlertBook.export`) and the tracker entry
  (:meth:`streaming.escalation.EscalationTracker.export`), either ``null`` once forgotten;
* a tombstone (no value) once both have forgotten the alert (past the retention);
* key = ``"\\x00checkpoint:<alerts topic>:<partition>"`` (a NUL cannot begin a patient id,
  so it never collides with an alert id), ``kind`` ``checkpoint``: the state of every
  alert of that alerts partition includes every ``alerts`` record below ``alerts_offset``
  and every ``acks`` record below ``acks[q]`` of each acks partition ``q``. A restart
  replays only what lies after it.

The schema is ``schemas/cardiowatch.alert-state-1.schema.json``. This module is the
codec and :class:`StateSnapshot` (what one read of the topic found); the reading and
writing live in :mod:`services.alert_log` and :mod:`services.dispatcher`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from models.errors import CardiowatchError

__all__ = [
    "SCHEMA",
    "AlertStateRecordError",
    "Checkpoint",
    "StateEntry",
    "StateSnapshot",
    "alert_record",
    "checkpoint_key",
    "checkpoint_record",
    "decode",
]

SCHEMA = "cardiowatch.alert-state/1"
_CHECKPOINT = "\x00checkpoint:"


class AlertStateRecordError(CardiowatchError, ValueError):
    """A record of the alert-state topic is not a valid ``cardiowatch.alert-state/1``."""


@dataclass(frozen=True, slots=True)
class StateEntry:
    """One alert's latest state: its alerts partition, book and tracker entries."""

    alert_id: str
    partition: int
    book: Mapping[str, Any] | None
    tracker: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Up to where the state of one alerts partition's alerts is complete."""

    partition: int
    alerts_offset: int
    acks: Mapping[int, int]


@dataclass
class StateSnapshot:
    """What one read of the alert-state topic found, for one alerts topic."""

    entries: dict[str, StateEntry] = field(default_factory=dict)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    undecodable: int = 0

    def add(self, alerts_topic: str, key: bytes | None, value: bytes | None) -> None:
        """Fold one record (in log order) in: later records of a key replace earlier ones.

        A record that does not decode is counted in ``undecodable`` and otherwise skipped."""
        if key is None:
            self.undecodable += 1
            return
        k = key.decode("utf-8", errors="surrogateescape")
        if k.startswith(_CHECKPOINT):
            if value is None:
                self.undecodable += 1
                return
            try:
                cp = decode(value)
            except AlertStateRecordError:
                self.undecodable += 1
                return
            if isinstance(cp, Checkpoint) and k == checkpoint_key(alerts_topic, cp.partition).decode():
                self.checkpoints[cp.partition] = cp
            return
        if value is None:  # a tombstone: the alert was forgotten
            self.entries.pop(k, None)
            return
        try:
            got = decode(value, alerts_topic)
        except AlertStateRecordError:
            self.undecodable += 1
            return
        if isinstance(got, StateEntry) and got.alert_id == k:
            self.entries[k] = got


def checkpoint_key(alerts_topic: str, partition: int) -> bytes:
    """The key of a checkpoint record (see the module docstring)."""
    return f"{_CHECKPOINT}{alerts_topic}:{partition}".encode()


def alert_record(alerts_topic: str, entry: StateEntry, wall_ms: int) -> bytes:
    """The value of an alert's state record."""
    return json.dumps({"schema": SCHEMA, "kind": "alert", "alerts_topic": alerts_topic,
                       "alert_id": entry.alert_id, "partition": entry.partition,
                       "book": entry.book, "tracker": entry.tracker, "written_wall_ms": wall_ms},
                      separators=(",", ":")).encode()


def checkpoint_record(alerts_topic: str, cp: Checkpoint, wall_ms: int) -> bytes:
    """The value of a checkpoint record."""
    return json.dumps({"schema": SCHEMA, "kind": "checkpoint", "alerts_topic": alerts_topic,
                       "partition": cp.partition, "alerts_offset": cp.alerts_offset,
                       "acks": {str(q): o for q, o in sorted(cp.acks.items())},
                       "written_wall_ms": wall_ms}, separators=(",", ":")).encode()


def _offset(d: Mapping[str, Any], name: str) -> int:
    v = d.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise AlertStateRecordError(f"alert-state field {name!r} must be a non-negative integer, got {v!r:.60}")
    return v


def decode(raw: bytes, alerts_topic: str | None = None) -> StateEntry | Checkpoint | None:
    """Decode a record value; ``None`` when it belongs to another alerts topic than
    ``alerts_topic`` (several test or bench dispatchers may share one state topic).

    Raises
    ------
    AlertStateRecordError
        Not JSON, another schema, or a missing or mistyped field (named).
    """
    try:
        d = json.loads(raw)
    except (ValueError, TypeError, RecursionError) as e:
        raise AlertStateRecordError(f"alert-state record must be UTF-8 JSON: {str(e)[:120]}") from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise AlertStateRecordError(f"alert-state record must be an object with schema {SCHEMA!r}, "
                                    f"got {str(raw[:80])!r}")
    topic = d.get("alerts_topic")
    if not isinstance(topic, str):
        raise AlertStateRecordError(f"alert-state field 'alerts_topic' must be a string, got {topic!r:.60}")
    if alerts_topic is not None and topic != alerts_topic:
        return None
    partition = _offset(d, "partition")
    if d.get("kind") == "checkpoint":
        acks = d.get("acks")
        if not isinstance(acks, dict):
            raise AlertStateRecordError(f"alert-state field 'acks' must be an object, got {acks!r:.60}")
        try:
            parsed = {int(q): _offset(acks, q) for q in acks}
        except ValueError:
            raise AlertStateRecordError(f"alert-state field 'acks' must map partitions to offsets, "
                                        f"got {acks!r:.60}") from None
        return Checkpoint(partition, _offset(d, "alerts_offset"), parsed)
    if d.get("kind") != "alert":
        raise AlertStateRecordError(f"alert-state field 'kind' must be alert|checkpoint, got {d.get('kind')!r:.60}")
    alert_id = d.get("alert_id")
    if not isinstance(alert_id, str) or not alert_id:
        raise AlertStateRecordError(f"alert-state field 'alert_id' must be a non-empty string, got {alert_id!r:.60}")
    for name in ("book", "tracker"):
        if d.get(name) is not None and not isinstance(d[name], dict):
            raise AlertStateRecordError(f"alert-state field {name!r} must be an object or null, "
                                        f"got {d[name]!r:.60}")
    return StateEntry(alert_id, partition, d.get("book"), d.get("tracker"))
