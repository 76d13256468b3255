"""Exception tree of the stream core.

::

    CardiowatchError
    └── InvalidMessage            (a message rejected at the boundary; has .reason)
        ├── MalformedMessage      malformed_json, empty_payload, oversized_payload,
        │                         unsupported_schema, key_mismatch,
        │                         missing_key, bad_payload_length (binary)
        ├── FieldError            missing_field, wrong_type
        ├── ValueOutOfRange       non_finite_sample, bad_sample_rate, bad_hr, bad_rr,
        │                         bad_quality, bad_samples_length, bad_units,
        │                         bad_timestamp, bad_seq, bad_scale (binary)
        └── SequenceError         duplicate_seq, out_of_order_ts
    PolicyConfigError             a bad alert-policy setting (also a ValueError)
    StateDecodeError              a stored per-patient stream state that cannot be
    │                             loaded (also a ValueError)
    └── PolicyStateError          its alert-policy part
    AlertDecodeError              a record on the alerts topic that is not an alert
                                  (also a ValueError)

Every message names the offending value. ``reason`` is a short, bounded code used as a
metric label and in the dead-letter record.
"""

from __future__ import annotations

from models.errors import CardiowatchError

__all__ = [
    "CardiowatchError",
    "InvalidMessage",
    "MalformedMessage",
    "FieldError",
    "ValueOutOfRange",
    "SequenceError",
    "PolicyConfigError",
    "PolicyStateError",
    "StateDecodeError",
    "AlertDecodeError",
    "REASONS",
]

REASONS = (
    "malformed_json", "empty_payload", "oversized_payload", "unsupported_schema",
    "key_mismatch", "missing_key", "missing_field", "wrong_type", "non_finite_sample", "bad_sample_rate",
    "bad_hr", "bad_rr", "bad_quality", "bad_samples_length", "bad_units", "duplicate_seq",
    "out_of_order_ts", "bad_timestamp", "bad_seq", "processing_error",
    # cardiowatch.ecg/2 (binary): a payload shorter or longer than its header says, and a
    # scale (mV per count) out of range
    "bad_payload_length", "bad_scale",
)




class InvalidMessage(CardiowatchError):
    """A message that fails validation. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown invalid-message reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class MalformedMessage(InvalidMessage):
    """The payload is not a message of a known schema at all."""


class FieldError(InvalidMessage):
    """A required field is missing or has the wrong type."""


class ValueOutOfRange(InvalidMessage):
    """A field has the right type but an impossible value."""


class SequenceError(InvalidMessage):
    """The message contradicts the device's stream so far (duplicate, out of order)."""


class PolicyConfigError(CardiowatchError, ValueError):
    """An alert-policy setting is missing or has a bad value; the message names the key."""


class StateDecodeError(CardiowatchError, ValueError):
    """A stored per-patient stream state (a changelog value) cannot be decoded."""


class PolicyStateError(StateDecodeError):
    """A stored per-patient policy state has an unknown version or a broken layout."""


class AlertDecodeError(CardiowatchError, ValueError):
    """A record of the alerts topic is not a valid ``cardiowatch.alert/1`` event."""
