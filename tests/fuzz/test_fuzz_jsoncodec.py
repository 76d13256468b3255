"""Fuzz the JSON codec (:mod:`streaming.jsoncodec`) against the stdlib ``json`` module.

Property: for any bytes, :func:`jsoncodec.loads` gives what :func:`json.loads` gives
(the same value, int and float told apart, NaN equal to NaN) or raises the same
exception type; for any JSON-able value, what :func:`jsoncodec.dumps` writes reads back
as what the stdlib's own output reads back as. The wire decoders and state decoders
build on these two, so their verdicts and dead-letter reasons cannot change with the
parser."""

from __future__ import annotations

import json
import math
from typing import Any

from fuzz_support import fuzz_settings, json_values
from hypothesis import example, given
from hypothesis import strategies as st

from streaming import jsoncodec


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types (bool, int and float kept apart; NaN == NaN; -0.0 != 0.0).
    Iterative: a document may nest deeper than the interpreter's stack."""
    todo = [(a, b)]
    while todo:
        x, y = todo.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if not ((math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))):
                return False
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            todo.extend(zip(x, y))
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            todo.extend((x[k], y[k]) for k in x)
        elif x != y:
            return False
    return True


def outcome(f: Any, raw: Any) -> tuple[str, Any]:
    try:
        return "ok", f(raw)
    except (ValueError, TypeError, RecursionError) as e:
        return "error", type(e)


def check_loads(raw: bytes) -> None:
    got, want = outcome(jsoncodec.loads, raw), outcome(json.loads, raw)
    assert got[0] == want[0] and (same(got[1], want[1]) if got[0] == "ok" else got[1] is want[1]), (raw[:200], got, want)


def _text(v: Any) -> bytes:
    return json.dumps(v, allow_nan=True).encode()


# numbers where orjson and the stdlib part ways, and runs of digits around the limit
numbers = st.one_of(
    st.integers(), st.integers(-(2**65), 2**65), st.integers(-(10**30), 10**30),
    st.builds(lambda d, e: f"{d}e{e}", st.integers(-(10**20), 10**20), st.integers(-400, 400)),
    st.builds(lambda a, b: f"{a}.{b}", st.integers(-(10**19), 10**19), st.integers(0, 10**25)),
    st.floats(), st.sampled_from(["NaN", "Infinity", "-Infinity", "-0", "-0.0", "1e400", "4.9e-324"]),
)
documents = st.one_of(
    st.builds(_text, json_values),
    st.builds(lambda ns: ("[" + ",".join(map(str, ns)) + "]").encode(), st.lists(numbers, max_size=6)),
    st.builds(lambda n: f'{{"seq":{n},"ts_ms":{n}}}'.encode(), numbers),
    st.builds(lambda t, enc: json.dumps(t, ensure_ascii=False).encode(enc, "surrogatepass"),
              json_values, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"])),
)


@fuzz_settings(600)
@given(raw=st.one_of(st.binary(max_size=200), documents))
@example(raw=b'{"a":1,"a":2}')               # duplicate keys: the last one, in both
@example(raw=b"18446744073709551616")         # orjson alone: a float
@example(raw=b"-9223372036854775809")         # orjson alone: a float
@example(raw=b"99999999999999999999")         # orjson alone: 1e+20
@example(raw=b"[NaN, Infinity, -Infinity]")   # orjson alone: refused
@example(raw=b"1e400")                        # orjson alone: refused; stdlib: inf
@example(raw=b'"\\ud800"')                    # lone surrogate: orjson refuses
@example(raw=b"\xef\xbb\xbf{}")               # UTF-8 BOM: orjson refuses
@example(raw='{"a":1}'.encode("utf-16"))     # UTF-16: orjson refuses
@example(raw=b'"\xff"')                       # not UTF-8: both refuse
@example(raw=b"[" * 1100 + b"]" * 1100)       # deeper than orjson's limit
@example(raw=b"[" * 100_000)                  # RecursionError from the stdlib
@example(raw=b"9" * 5000)                     # the stdlib's digit limit: ValueError
def test_loads_is_the_stdlibs(raw: bytes) -> None:
    check_loads(raw)


@fuzz_settings(400)
@given(raw=st.one_of(st.binary(max_size=100), documents))
def test_loads_of_text_is_the_stdlibs(raw: bytes) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    got, want = outcome(jsoncodec.loads, text), outcome(json.loads, text)
    assert got[0] == want[0] and (same(got[1], want[1]) if got[0] == "ok" else got[1] is want[1])


@fuzz_settings(600)
@given(value=st.one_of(json_values, st.lists(numbers.filter(lambda n: not isinstance(n, str)), max_size=5),
                       st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)))
@example(value=[float("nan"), float("inf"), -float("inf")])  # orjson alone writes null
@example(value={"seq": 2**64, "x": -(2**63) - 1})             # orjson alone refuses
@example(value={"id": "\ud800"})                              # lone surrogate
@example(value={"k": None, "v": 1.5})                         # a real null
def test_dumps_reads_back_as_the_stdlibs(value: Any) -> None:
    want = json.loads(json.dumps(value, separators=(",", ":")))
    raw = jsoncodec.dumps(value)
    assert isinstance(raw, bytes)
    assert same(jsoncodec.loads(raw), want) and same(json.loads(raw), want), (value, raw[:200])
