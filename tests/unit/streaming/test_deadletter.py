"""Dead-letter records: one schema for the worker and the dispatcher, raw bytes kept exactly."""

from __future__ import annotations

import base64
import json

import pytest

from streaming.deadletter import DEADLETTER_SCHEMA, DeadLetter


def test_raw_bytes_that_are_not_utf8_survive_byte_for_byte() -> None:
    raw = bytes(range(256)) + b"\xff\xfe{\"not\": json"
    doc = json.loads(DeadLetter("alerts", "undecodable_alert", "bad", b"\xc3(", raw, 3, 42).to_json())
    assert doc["schema"] == DEADLETTER_SCHEMA and doc["stream"] == "alerts"
    assert base64.b64decode(doc["raw_b64"]) == raw and doc["raw_size"] == len(raw)
    assert base64.b64decode(doc["key_b64"]) == b"\xc3(" and (doc["source_partition"], doc["source_offset"]) == (3, 42)


def test_extra_fields_are_added_but_never_replace_schema_fields() -> None:
    doc = json.loads(DeadLetter("alerts", "all_routes_failed", "x", None, b"{}", 0, 1,
                                extra={"reasons": ["a", "b"]}).to_json())
    assert doc["reasons"] == ["a", "b"] and doc["key_b64"] is None
    with pytest.raises(ValueError, match=r"may not replace schema fields, got \['reason'\]"):
        DeadLetter("alerts", "all_routes_failed", "x", None, b"{}", 0, 1, extra={"reason": "y"}).to_json()
