"""Shared pieces of the fuzz suite: case counts, settings, and JSON / mutation strategies.

Case counts: each target declares its CI count; ``CARDIOWATCH_FUZZ_CASES=N`` (what
``cardiowatch fuzz --cases N`` sets) runs every target with ``N`` cases instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

REPO_ROOT = Path(__file__).resolve().parents[2]
_LONG = int(os.environ.get("CARDIOWATCH_FUZZ_CASES", "0") or 0)


def fuzz_settings(ci_cases: int) -> settings:
    """Settings for one target: ``ci_cases`` examples (or the long-run count), no deadline
    (the CI machine is shared), failures kept in ``.cache/hypothesis`` for replay."""
    return settings(
        max_examples=_LONG or ci_cases,
        deadline=None,
        database=DirectoryBasedExampleDatabase(str(REPO_ROOT / ".cache" / "hypothesis")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
        print_blob=True,
    )


# Any JSON value, including the awkward ones: huge integers, NaN and infinities (Python's
# json reads and writes them), deep nesting, unicode and control characters.
json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.text(max_size=12), inner, max_size=6)),
    max_leaves=30,
)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``base`` with a few of its fields (or nested fields) replaced by any JSON value,
    deleted, or joined by unknown keys: inputs that are *nearly* valid, where decoders
    are most likely to trust a field they should have checked."""
    doc = _deep_copy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths)) if paths else ()
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        parent = _at(doc, path[:-1]) if path else None
        if op == "add" or not path:
            target = _at(doc, path) if path and isinstance(_at(doc, path), dict) else doc
            key = draw(st.sampled_from(extra_keys)) if extra_keys and draw(st.booleans()) else draw(st.text(max_size=8))
            target[key] = draw(json_values)
        elif op == "delete" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif op == "delete" and isinstance(parent, list) and parent:
            parent.pop(path[-1])
        else:
            assert parent is not None
            parent[path[-1]] = draw(json_values)
    return doc


def _deep_copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _deep_copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deep_copy(x) for x in v]
    return v


def _paths(v: Any, prefix: tuple[Any, ...] = ()) -> Any:
    """Every path into ``v`` (lists: only their first three items, so big arrays do not
    drown the other fields)."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield prefix + (k,)
            yield from _paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v[:3]):
            yield prefix + (i,)
            yield from _paths(x, prefix + (i,))


def _at(v: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        v = v[p]
    return v
