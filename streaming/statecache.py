"""The Faust shell's view of per-patient states: decoded once, overlaid with newer ones.

A table holds each patient's state as bytes (its changelog is the durable copy). The
stream cores want decoded state objects, and decoding costs more than a batch's work
for that patient, so :class:`DecodedCache` keeps the decoded object beside the bytes it
came from. :class:`LazyStates` hands a core the states of a table, decoded on first use;
:class:`Overlay` puts states that are newer than the table in front of it (those changed
earlier in a batch retried message by message, or a batch whose states are still on
their way to the changelog while the next one is processed).

The cores never mutate the states they are given, so handing the same object to the
next batch is safe.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Callable, Generic, TypeVar

__all__ = ["DecodedCache", "LazyStates", "Overlay"]

S = TypeVar("S")


class DecodedCache(Generic[S]):
    """Decoded patient states, valid while the table still holds the very bytes object
    they were decoded from (identity, not equality: any other write, a recovery or a
    rebalance makes a new object and forces a fresh decode)."""

    def __init__(self, decode: Callable[[bytes], S]) -> None:
        self.decode = decode
        self._entries: dict[str, tuple[bytes, S]] = {}

    def get(self, pid: str, raw: bytes) -> S:
        hit = self._entries.get(pid)
        if hit is not None and hit[0] is raw:
            return hit[1]
        state = self.decode(raw)
        self._entries[pid] = (raw, state)
        return state

    def put(self, pid: str, raw: bytes, state: S) -> None:
        self._entries[pid] = (raw, state)

    def drop(self, pid: str) -> None:
        self._entries.pop(pid, None)


class LazyStates(Mapping[str, S], Generic[S]):
    """Patient states read from a table on first use, through the decoded cache."""

    def __init__(self, table: Any, cache: DecodedCache[S]) -> None:
        self._table, self._cache = table, cache
        self._seen: dict[str, S] = {}

    def __getitem__(self, pid: str) -> S:
        if pid not in self._seen:
            raw = self._table.get(pid.encode())
            if raw is None:
                raise KeyError(pid)
            self._seen[pid] = self._cache.get(pid, raw)
        return self._seen[pid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._seen)

    def __len__(self) -> int:
        return len(self._seen)


class Overlay(Mapping[str, Any]):
    """States from ``base``, overlaid with the newer ones in ``changed``."""

    def __init__(self, base: Any, changed: Mapping[str, Any]) -> None:
        self._base, self._changed = base, changed

    def __getitem__(self, pid: str) -> Any:
        if pid in self._changed:
            return self._changed[pid]
        value = self._base.get(pid)
        if value is None:
            raise KeyError(pid)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._changed)

    def __len__(self) -> int:
        return len(self._changed)
