"""Dead letters: a rejected or undeliverable record, kept with its raw bytes and the reason.

One schema (``cardiowatch.deadletter/1``) for every dead-letter topic: the worker's
(``stream`` ``ecg`` or ``hr``: a message that failed validation or processing) and the
dispatcher's (``stream`` ``alerts``: an alert that could not be decoded, delivered or
processed). The raw value travels as base64, byte for byte, so a dead letter can be
replayed exactly; a value over :data:`DEADLETTER_RAW_MAX` keeps its head and the sha256
of the whole.

Pure: no Faust, Kafka or HTTP.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from streaming import jsoncodec
from streaming.errors import InvalidMessage

__all__ = ["ALERT_REASONS", "DEADLETTER_SCHEMA", "DEADLETTER_RAW_MAX", "DeadLetter", "Stream"]

DEADLETTER_SCHEMA = "cardiowatch.deadletter/1"
DEADLETTER_RAW_MAX = 512 * 1024  # = the largest valid payload (streaming.schemas)
Stream = Literal["ecg", "hr", "alerts"]
# The dispatcher's reasons (stream "alerts"); the worker's are streaming.errors.REASONS.
ALERT_REASONS = ("undecodable_alert", "all_routes_failed", "dispatch_error")


class _Record(Protocol):
    """What :meth:`DeadLetter.from_error` reads of a consumed record (``InMessage``)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message, kept with its raw bytes and the reason.

    ``reason`` is a short bounded code (a metric label); ``detail`` says what was wrong.
    ``extra`` adds stream-specific fields to the JSON document (the dispatcher's
    delivery attempts, for one); it may not replace a field of the schema.
    """

    stream: Stream
    reason: str
    detail: str
    key: bytes | None
    raw: bytes | None
    partition: int
    offset: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_error(cls, stream: Stream, exc: Exception, m: _Record) -> DeadLetter:
        """The dead letter for a message that raised: its validation reason, or
        ``processing_error`` for anything else (a bug must not stop the stream)."""
        if isinstance(exc, InvalidMessage):
            return cls(stream, exc.reason, exc.detail, m.key, m.value, m.partition, m.offset)
        return cls(stream, "processing_error", f"{type(exc).__name__}: {exc}", m.key, m.value,
                   m.partition, m.offset)

    def to_dict(self) -> dict[str, Any]:
        raw = self.raw
        doc: dict[str, Any] = {
            "schema": DEADLETTER_SCHEMA, "stream": self.stream, "reason": self.reason,
            "detail": self.detail, "source_partition": self.partition,
            "source_offset": self.offset,
            "key_b64": None if self.key is None else base64.b64encode(self.key[:1024]).decode(),
            "raw_size": None if raw is None else len(raw),
        }
        if raw is not None and len(raw) > DEADLETTER_RAW_MAX:
            # base64 of more would not fit Kafka's default 1 MB record: keep the head and
            # a digest of the whole, so the record can still be identified and replayed.
            doc["raw_sha256"] = hashlib.sha256(raw).hexdigest()
            doc["raw_truncated"] = True
            raw = raw[:DEADLETTER_RAW_MAX]
        doc["raw_b64"] = None if raw is None else base64.b64encode(raw).decode()
        clash = sorted(set(self.extra) & (set(doc) | {"raw_sha256", "raw_truncated"}))
        if clash:
            raise ValueError(f"dead-letter extra fields may not replace schema fields, got {clash}")
        doc.update(self.extra)
        return doc

    def to_json(self) -> bytes:
        return jsoncodec.dumps(self.to_dict())
