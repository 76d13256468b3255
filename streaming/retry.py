"""Retrying the steps a batch cannot skip, and stopping hard when they keep failing."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["SEND_ATTEMPTS", "retry_or_stop"]

log = logging.getLogger(__name__)
T = TypeVar("T")

SEND_ATTEMPTS = 8  # ~1 min of backoff before a worker that cannot deliver stops hard


async def retry_or_stop(step: Callable[[], Awaitable[T]], what: str, why_safe: str,
                        on_failure: Callable[[], Any] | None = None,
                        attempts: int = SEND_ATTEMPTS) -> T:
    """Run ``step`` until it succeeds, backing off 0.5 s, 1 s, 2 s ... 10 s; after
    ``attempts`` failures stop the process hard (exit status 70).

    For the steps an agent cannot skip: its batch's offsets are acked as soon as the
    body returns, even by an exception, so giving up would lose the batch. Stopping
    hard leaves them unacked; ``why_safe`` says what the restart does about it."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return await step()
        except Exception as exc:  # Kafka errors, timeouts: do the whole step again
            if on_failure is not None:
                on_failure()
            log.warning("%s failed (attempt %d/%d): %r", what, attempt, attempts, exc)
            if attempt == attempts:
                log.critical("%s keeps failing; stopping hard so that %s", what, why_safe)
                os._exit(70)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")
