"""The JSON codec: orjson where it agrees with the stdlib, the stdlib where it does not.

Each row of the module docstring's table, pinned; the fuzz suite
(``tests/fuzz/test_fuzz_jsoncodec.py``) checks the same property on drawn inputs."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

import pytest

from streaming import jsoncodec


@pytest.mark.parametrize("raw, want", [
    (b"[NaN,Infinity,-Infinity]", None),     # checked below: floats, not refused
    (b"1e400", math.inf),
    (b"18446744073709551616", 2**64),         # orjson alone: 1.8446744073709552e+19
    (b"-9223372036854775809", -(2**63) - 1),  # orjson alone: a float
    (b"18446744073709551615", 2**64 - 1),     # within orjson's range: an int as well
    (b'"\\ud800"', "\ud800"),
    (b"\xef\xbb\xbf{}", {}),
    ('{"a":1}'.encode("utf-16"), {"a": 1}),
    (b'{"a":1,"a":2}', {"a": 2}),
    (b'{"seq":42,"x":0.125}', {"seq": 42, "x": 0.125}),
])
def test_loads_gives_the_stdlibs_value(raw: bytes, want: object) -> None:
    got = jsoncodec.loads(raw)
    ref = json.loads(raw)
    assert repr(got) == repr(ref)
    if want is not None:
        assert got == want and type(got) is type(want)


def test_nan_literals_are_read_as_floats() -> None:
    got = jsoncodec.loads(b"[NaN,Infinity,-Infinity]")
    assert math.isnan(got[0]) and got[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("raw, error", [
    (b'"\xff"', UnicodeDecodeError), (b"{", json.JSONDecodeError), (b"", json.JSONDecodeError),
    (b"9" * 5000, ValueError), (b"[" * 100_000, RecursionError),
])
def test_loads_raises_what_the_stdlib_raises(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as got:
        jsoncodec.loads(raw)
    with pytest.raises(error) as want:
        json.loads(raw)
    assert type(got.value) is type(want.value) and str(got.value) == str(want.value)


def test_loads_of_none_is_a_type_error_as_in_the_stdlib() -> None:
    with pytest.raises(TypeError):
        jsoncodec.loads(None)  # type: ignore[arg-type]


def test_dumps_is_compact_and_keeps_nan_and_big_ints() -> None:
    assert jsoncodec.dumps({"a": [1, 2.5, "é"], "b": True}) == '{"a":[1,2.5,"é"],"b":true}'.encode()
    raw = jsoncodec.dumps({"score": math.nan, "hi": math.inf, "seq": 2**64})
    assert raw == b'{"score":NaN,"hi":Infinity,"seq":18446744073709551616}'  # the stdlib's spelling
    back = jsoncodec.loads(raw)
    assert math.isnan(back["score"]) and back["hi"] == math.inf and back["seq"] == 2**64
    assert jsoncodec.dumps({"id": "\ud800"}) == json.dumps({"id": "\ud800"}, separators=(",", ":")).encode()
    assert jsoncodec.dumps({1: 2}) == b'{"1":2}'  # non-string keys: as the stdlib writes them


@dataclass
class _Thing:
    x: int


@pytest.mark.parametrize("value", [_Thing(1), dt.datetime(2026, 1, 1), {1j: 2}, object()])
def test_dumps_refuses_what_the_stdlib_refuses(value: object) -> None:
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        jsoncodec.dumps(value)


def test_a_null_beside_a_nan_keeps_both() -> None:
    raw = jsoncodec.dumps({"held": None, "runs": [[1, 2.5]], "deep": {"x": [None, math.nan]}})
    back = jsoncodec.loads(raw)
    assert back["held"] is None and back["deep"]["x"][0] is None and math.isnan(back["deep"]["x"][1])
    assert jsoncodec.dumps({"held": None, "x": 1.5}) == b'{"held":null,"x":1.5}'
