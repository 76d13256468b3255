"""Delivery stage, policy: one alert along its route with retries, failover and a circuit breaker.

:func:`deliver` tries the route's endpoints in order (an escalated alert's level
contact first, then the team's primary and failover); each endpoint gets its retries
with full-jitter exponential backoff inside the route's budget, and a shared
:class:`CircuitBreaker` lets alerts skip an endpoint that keeps failing while another
follows it. When every endpoint fails the caller dead-letters the alert and raises a
:func:`delivery_failure_alert` to the ops team. HTTP is reached only through a
:class:`services.webhook.WebhookPoster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from services.ack_api import AlertState
from services.payloads import render
from services.routing import Endpoint, RetryPolicy, Route, RoutingConfig, route_key_for
from services.webhook import (
    DeliveryTimeout,
    DeliveryTransportError,
    WebhookPoster,
    as_poster,
    scrub,
    webhook_headers,
)
from streaming.events import AlertEvent
from streaming.metrics import DispatcherMetrics

__all__ = [
    "DELIVERY_FAILURE",
    "CircuitBreaker",
    "DeliveryResult",
    "Outcome",
    "alert_team",
    "deliver",
    "delivery_failure_alert",
    "is_delivery_failure",
]

DELIVERY_FAILURE = "delivery_failure"
Outcome = Literal["delivered", "failover_delivered", "deadlettered", "abandoned"]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: Outcome
    endpoint: str | None
    attempts: int
    reasons: tuple[str, ...] = ()


class _Abandon(Exception):
    """Stopping: leave the event undelivered and uncommitted; the next run retries it."""


def is_delivery_failure(ev: AlertEvent) -> bool:
    return ev.condition == DELIVERY_FAILURE and bool(ev.details.get(DELIVERY_FAILURE))


def delivery_failure_alert(ev: AlertEvent, reasons: tuple[str, ...], now_ms: int) -> AlertEvent:
    """The technical alert raised when ``ev`` could not be delivered anywhere."""
    return AlertEvent(
        alert_id=f"{DELIVERY_FAILURE}:{ev.event_id}", revision=1, action="raised",
        patient_id=ev.patient_id, device_id=ev.device_id, condition=DELIVERY_FAILURE,
        category="technical", priority="high", onset_ts_ms=now_ms, detected_ts_ms=now_ms,
        rule="dispatcher.all_routes_failed", produced_wall_ms=now_ms,
        details={DELIVERY_FAILURE: True, "failed_event_id": ev.event_id,
                 "failed_alert_id": ev.alert_id, "failed_priority": ev.priority,
                 "reasons": list(reasons)})


def _endpoints_for(ev: AlertEvent, routing: RoutingConfig) -> tuple[Route, tuple[Endpoint, ...]]:
    if is_delivery_failure(ev):
        route = routing.ops_route()
        return route, route.endpoints()
    route = routing.route_for(ev.patient_id, route_key_for(ev.category, ev.priority))
    contact = route.escalation_endpoint(ev.escalation_level)
    if contact is not None:
        return route, (contact,) + route.endpoints()  # then the usual team, never nobody
    return route, route.endpoints()


_RETRYABLE_4XX = frozenset({408, 425, 429})


class CircuitBreaker:
    """Per-endpoint circuit breaker, shared by every delivery of one dispatcher.

    ``failures`` consecutive retryable failures on an endpoint (timeouts, refused or
    dropped connections, 5xx, 429; any alerts) open it for ``cooldown_s``. While it is
    open, a delivery that has another endpoint after it skips it, and one already
    retrying it stops and fails over at once. The last endpoint of a route is never
    skipped: its alerts go on retrying as without a breaker, so an outage of every
    endpoint still ends in the usual retries, then the dead-letter topic. After the
    cooldown the circuit is half-open: one delivery probes the endpoint while the others
    that can fail over still skip it, so a recovering receiver is not hit by every
    waiting alert at once; the probe's success closes the circuit, its failure opens it
    for another cooldown (a probe that never reports back frees the slot after a
    cooldown).
    """

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError(f"breaker needs failures >= 1 and cooldown_s > 0, got {failures}, {cooldown_s}")
        self.failures, self.cooldown_s, self._clock = failures, cooldown_s, clock
        self._failed: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._probe_since: dict[str, float] = {}

    def is_open(self, url: str) -> bool:
        """Within the cooldown after the circuit opened."""
        until = self._open_until.get(url)
        return until is not None and self._clock() < until

    def should_skip(self, url: str) -> bool:
        """For a delivery that could fail over: skip ``url``? While open, yes; once
        half-open, no for the first caller (it becomes the probe), yes for the others
        until the probe is recorded."""
        if url not in self._open_until:
            return False
        now = self._clock()
        if now < self._open_until[url]:
            return True
        since = self._probe_since.get(url)
        if since is not None and now - since < self.cooldown_s:
            return True
        self._probe_since[url] = now
        return False

    def record(self, url: str, ok: bool) -> None:
        self._probe_since.pop(url, None)
        if ok:
            self._failed.pop(url, None)
            self._open_until.pop(url, None)
            return
        n = self._failed[url] = self._failed.get(url, 0) + 1
        if n >= self.failures:
            self._open_until[url] = self._clock() + self.cooldown_s

    def open_count(self) -> int:
        return sum(1 for url in self._open_until if self.is_open(url))


async def _try_endpoint(client: WebhookPoster, ep: Endpoint, retry: RetryPolicy, ev: AlertEvent,
                        receiver: str, metrics: DispatcherMetrics, stopping: asyncio.Event,
                        rng: random.Random, breaker: CircuitBreaker | None = None,
                        can_fail_over: bool = False) -> tuple[bool, int, list[str]]:
    body, ctype = render(ev, ep.format, receiver=receiver)
    started = time.monotonic()
    reasons: list[str] = []
    attempt = 0
    for attempt in range(1, retry.max_attempts + 1):
        if attempt > 1:
            metrics.retries.inc()
        headers = webhook_headers(ep, ev.event_id, body, ctype)
        retryable = True
        try:
            if ep.ca_file is None:  # posters written before per-route CA files keep working
                status = await client.post(ep.url, body, headers, ep.timeout_s)
            else:
                status = await client.post(ep.url, body, headers, ep.timeout_s, ca_file=ep.ca_file)
            if 200 <= status < 300:
                if breaker is not None:
                    breaker.record(ep.url, True)
                return True, attempt, reasons
            reasons.append(f"{ep.name} attempt {attempt}: HTTP {status}")
            retryable = status >= 500 or status in _RETRYABLE_4XX
        except DeliveryTimeout:
            reasons.append(f"{ep.name} attempt {attempt}: timeout after {ep.timeout_s} s")
        except DeliveryTransportError as e:
            reasons.append(f"{ep.name} attempt {attempt}: {scrub(str(e), ep)}")
        if retryable and breaker is not None:
            breaker.record(ep.url, False)
            if can_fail_over and breaker.is_open(ep.url):
                reasons.append(f"{ep.name}: circuit open after {breaker.failures} failures in a row; "
                               f"failing over")
                break
        if not retryable or attempt == retry.max_attempts:
            break
        sleep_s = rng.uniform(0.0, retry.backoff_cap_s(attempt))  # full jitter
        if time.monotonic() - started + sleep_s > retry.total_budget_s:
            reasons.append(f"{ep.name}: retry budget {retry.total_budget_s} s spent")
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=sleep_s)
        if stopping.is_set():
            raise _Abandon()
    return False, attempt, reasons


async def deliver(ev: AlertEvent, routing: RoutingConfig,
                  client: httpx.AsyncClient | WebhookPoster, metrics: DispatcherMetrics,
                  stopping: asyncio.Event | None = None,
                  rng: random.Random | None = None,
                  breaker: CircuitBreaker | None = None) -> DeliveryResult:
    """Deliver one event along its route: retries, then failover.

    ``client`` is an ``httpx.AsyncClient`` (wrapped in :class:`HttpxPoster`) or any
    :class:`WebhookPoster`. With a ``breaker``, an endpoint it holds open is skipped
    when another endpoint follows it. Raises ``_Abandon`` (internal to the delivery stage)
    when ``stopping`` is set during a backoff sleep.
    """
    client = as_poster(client)
    stopping = stopping or asyncio.Event()
    rng = rng or random.Random()
    route, endpoints = _endpoints_for(ev, routing)
    team = routing.ops_team if is_delivery_failure(ev) else routing.team_for(ev.patient_id).name
    reasons: list[str] = []
    attempts = 0
    for i, ep in enumerate(endpoints):
        if i > 0:
            metrics.failovers.inc()
        can_fail_over = i < len(endpoints) - 1
        if breaker is not None and can_fail_over and breaker.should_skip(ep.url):
            metrics.circuit_skips.inc()
            reasons.append(f"{ep.name}: circuit open; skipped")
            continue
        ok, n, why = await _try_endpoint(client, ep, route.retry, ev, team, metrics, stopping, rng,
                                         breaker, can_fail_over)
        attempts += n
        reasons += why
        if ok:
            return DeliveryResult("delivered" if i == 0 else "failover_delivered", ep.name, attempts,
                                  tuple(reasons))
    return DeliveryResult("deadlettered", None, attempts, tuple(reasons))


def alert_team(routing: RoutingConfig) -> Callable[[AlertState], str]:
    """The care team an alert is routed to, as the ack API sees it: the dispatcher's own
    ``delivery_failure`` alerts go to the ops team, the others to their patient's team."""
    def team_of(a: AlertState) -> str:
        if a.condition == DELIVERY_FAILURE and a.category == "technical":
            return routing.ops_team
        return routing.team_for(a.patient_id).name
    return team_of
