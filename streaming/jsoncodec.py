"""Bytes: the stream core's JSON codec, orjson's speed with the stdlib ``json`` module's meaning.

Every JSON value the worker reads or writes on its hot path goes through :func:`loads` and
:func:`dumps`: wearable messages (``cardiowatch.ecg/1``, ``cardiowatch.hr/1``), scores,
alerts, dead letters and the JSON parts of the per-patient state. orjson is 4-5x faster
than the stdlib on these documents, but it does not read and write quite the same JSON,
and a message must get the same verdict (and dead-letter reason) whichever parser reads
it. So orjson takes what it handles identically and hands everything else to the stdlib:

========================================  ===============================  ==================
input                                     orjson alone                     this codec
========================================  ===============================  ==================
``NaN``, ``Infinity``, ``-Infinity``      refused                          stdlib: the float
a number beyond float64 (``1e400``)       refused                          stdlib: ``inf``
an integer outside [-2**63, 2**64)        a *float* (silently)             stdlib: the int
an integer of > 4300 digits               refused                          stdlib: ValueError
lone surrogate escape (``"\\ud800"``)     refused                          stdlib: the str
UTF-16 / UTF-32 text, a UTF-8 BOM         refused                          stdlib: decoded
nesting deeper than 1024                  refused                          stdlib: RecursionError
duplicate keys                            the last one wins                same (both)
========================================  ===============================  ==================

:func:`loads` therefore parses with the stdlib whenever orjson refuses, and also whenever
the text holds a run of 19 or more digits (where an integer could lie outside orjson's
64-bit range, and where a long float mantissa lives): the stdlib then gives the value or
raises exactly what it always raised (``ValueError`` subclasses, ``RecursionError``).

:func:`dumps` writes compact JSON (``separators=(",", ":")``) that decodes to the same
value as the stdlib's output. Where orjson cannot say the same thing it is not used:
NaN and infinities (orjson writes ``null``; the stdlib writes the non-JSON literals that
its reader, and so ours, reads back; looked for only when a ``null`` shows in orjson's
output), integers beyond 64 bits, lone surrogates, non-string
keys, and any type but the plain JSON ones (dataclasses, datetimes and subclasses are
passed through to the stdlib, which refuses them as before). The bytes differ from the
stdlib's in two harmless ways: non-ASCII text is written as UTF-8 rather than ``\\u``
escapes, and some floats are spelled differently (``0.00001`` for ``1e-05``).
``tests/fuzz/test_fuzz_jsoncodec.py`` checks both directions against the stdlib.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

__all__ = ["loads", "dumps"]

# digits -> "0", everything else -> " ": a run of 19 digits shows as b"0" * 19
_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
# 18 digits always fit int64, so orjson returns such an integer exactly; with 19 it may not
_LONG_RUN = b"0" * 19
_OPTS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def loads(raw: bytes | bytearray | str) -> Any:
    """Parse one JSON document as :func:`json.loads` does.

    Raises
    ------
    ValueError
        Exactly what :func:`json.loads` raises (``json.JSONDecodeError``,
        ``UnicodeDecodeError``, the integer-digits limit); ``TypeError`` for a value that
        is not text or bytes, ``RecursionError`` for nesting deeper than the stack.
    """
    if isinstance(raw, (bytes, bytearray)):
        if _LONG_RUN in raw.translate(_DIGITS):
            return json.loads(raw)
    elif isinstance(raw, str):
        if _LONG_RUN in raw.encode("utf-8", "surrogatepass").translate(_DIGITS):
            return json.loads(raw)
    else:
        return json.loads(raw)  # None and other types: the stdlib's TypeError
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _std(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def dumps(obj: Any) -> bytes:
    """Compact JSON of ``obj``; decodes (with :func:`loads`) to what
    ``json.dumps(obj, separators=(",", ":"))`` decodes to.

    Raises
    ------
    TypeError, ValueError
        What :func:`json.dumps` raises for a value it cannot encode.
    """
    try:
        out = orjson.dumps(obj, option=_OPTS)
    except TypeError:  # orjson.JSONEncodeError: big ints, surrogates, other keys and types
        return _std(obj)
    # orjson writes NaN and +-Infinity as null: where a null shows, look for one (a walk,
    # paid only by documents with a null) and let the stdlib write it
    if b"null" in out and _has_nonfinite(obj):
        return _std(obj)
    return out


def _has_nonfinite(obj: Any) -> bool:
    todo = [obj]
    while todo:
        v = todo.pop()
        if type(v) is float:
            if not math.isfinite(v):
                return True
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, (list, tuple)):
            todo.extend(v)
    return False
