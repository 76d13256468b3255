"""Delivery stage: the alert dispatcher: ``alerts`` topic to care-team webhooks.

Guarantees
----------
* At-least-once: offsets are committed per partition only up to the lowest offset not
  yet delivered or dead-lettered, so a killed dispatcher resumes without loss. A
  redelivery carries the same ``webhook-id`` (``AlertEvent.event_id``).
* Order per patient: one sequential queue per Kafka key (patient id); a failing
  endpoint holds back only its own patients.
* Memory stays bounded without a failing endpoint holding back healthy ones: records
  waiting behind their patient's earlier alerts keep their bytes in memory only up to
  ``max_held_bytes`` in all; past that they are *parked* (only topic, partition and
  offset kept; uncommitted) and read back from the log when their turn comes. Fetching
  pauses only when ``max_in_flight`` records (a few hundred bytes each once parked)
  are unfinished.
* Retries with full-jitter exponential backoff, per-endpoint timeouts, then the failover
  endpoint; a per-endpoint circuit breaker (:class:`CircuitBreaker`) sends alerts
  straight to the failover while their primary keeps failing, instead of each alert
  paying the primary's retries again. When every route fails the event goes to
  ``alerts_deadletter`` and a technical ``delivery_failure`` alert is produced to
  ``alerts``, routed to the ops team. A failed ``delivery_failure`` alert is only
  dead-lettered (no loop).
* Escalation: every alert is fed to an ``EscalationTracker``; due escalations are
  produced to ``alerts`` (the audit log) and delivered from there to the route's
  escalation contact for their level. Acks (``acks`` topic or the ack API) stop them.
  On start the tracker is rebuilt from the ``alerts`` and ``acks`` topics.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import random
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CollectorRegistry, start_http_server

from models.errors import CardiowatchError
from services.access import AccessConfigError, TokenBook
from services.ack_api import AckApi, AckRecord, AlertBook, AlertState
from services.payloads import render
from services.routing import (
    Endpoint,
    RetryPolicy,
    Route,
    RoutingConfig,
    load_routing,
    redact_url,
    route_key_for,
)
from services.settings import DispatcherSettings
from services.signing import signature_headers
from services.topics import TopicLayoutError, check_topics
from streaming.events import AlertEvent
from streaming.kafka_security import KafkaSecurity, check_connection
from streaming.logread import LogReader
from streaming.metrics import DispatcherMetrics
from models.cli_help import HelpFormatter

__all__ = [
    "DELIVERY_FAILURE",
    "CircuitBreaker",
    "DispatchOptions",
    "DeliveryResult",
    "DeliveryTimeout",
    "DeliveryTransportError",
    "WebhookPoster",
    "HttpxPoster",
    "AiohttpPoster",
    "OffsetBook",
    "EscalationTrackerLike",
    "deliver",
    "delivery_failure_alert",
    "is_delivery_failure",
    "alert_team",
    "scrub",
    "run_dispatcher",
    "open_log_reader",
    "log_behind",
    "main",
]

log = logging.getLogger("cardiowatch.dispatcher")

DELIVERY_FAILURE = "delivery_failure"
Outcome = Literal["delivered", "failover_delivered", "deadlettered", "abandoned"]


class EscalationTrackerLike(Protocol):
    """The part of ``streaming.escalation.EscalationTracker`` the dispatcher uses."""

    def observe(self, event: AlertEvent, now_ms: int) -> Any: ...
    def acknowledge(self, alert_id: str, now_ms: int, by: str) -> AlertEvent | None: ...
    def resolve(self, alert_id: str, now_ms: int, by: str) -> AlertEvent | None: ...
    def due(self, now_ms: int) -> list[AlertEvent]: ...


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    """Knobs of one dispatcher run (tests shrink them)."""

    max_in_flight: int = 200_000
    max_held_bytes: int = 64 * 1024 * 1024
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    commit_interval_s: float = 0.5
    rebuild_timeout_s: float = 30.0
    rebuild_max_records: int = 1_000_000
    stop_grace_s: float = 10.0
    serve_ack_api: bool = True


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: Outcome
    endpoint: str | None
    attempts: int
    reasons: tuple[str, ...] = ()


class _Abandon(Exception):
    """Stopping: leave the event undelivered and uncommitted; the next run retries it."""


class DeliveryTransportError(CardiowatchError):
    """The request got no HTTP response (refused, reset, closed without an answer)."""


class DeliveryTimeout(DeliveryTransportError):
    """No complete response within the endpoint's ``timeout_s``."""


class WebhookPoster(Protocol):
    """Sends one signed webhook; the dispatcher's only view of HTTP.

    Returns the HTTP status code; raises :class:`DeliveryTimeout` or
    :class:`DeliveryTransportError` when no response arrived. ``https://`` URLs are
    verified against ``ca_file`` (PEM) when given, else the system trust store.
    """

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   timeout_s: float, *, ca_file: Path | None = None) -> int: ...


class HttpxPoster:
    """:class:`WebhookPoster` over an injected ``httpx.AsyncClient`` (tests: ``MockTransport``).

    httpx's connection pool scans every pooled connection on each request, which costs
    several milliseconds per delivery at a few dozen concurrent patients; the default
    transport of :func:`run_dispatcher` is therefore :class:`AiohttpPoster`.
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   timeout_s: float, *, ca_file: Path | None = None) -> int:
        if ca_file is not None:  # an httpx client verifies with one context, set when it was built
            raise DeliveryTransportError("a per-route ca_file needs the default AiohttpPoster; the "
                                         "injected httpx client cannot switch CA per request")
        try:
            resp = await self.client.post(url, content=body, headers=dict(headers), timeout=timeout_s)
        except httpx.TimeoutException as e:
            raise DeliveryTimeout(f"timeout after {timeout_s} s") from e
        except httpx.HTTPError as e:
            raise DeliveryTransportError(f"{type(e).__name__}: {e}") from e
        return resp.status_code


class AiohttpPoster:
    """:class:`WebhookPoster` over one shared ``aiohttp.ClientSession`` (keep-alive pool).

    The pool has no total or per-host connection cap, so requests hung on one endpoint
    can never make deliveries to another wait for a connection. ``timeout_s`` bounds the
    whole request (connect, send, response). Redirects are not followed (a 3xx is a
    non-retryable failure, as with httpx's default). TLS is always verified: one
    ``ssl.SSLContext`` per CA file (the system store when none), built once.
    """

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._own = session is None
        self._contexts: dict[Path | None, ssl.SSLContext] = {}

    def _context(self, ca_file: Path | None) -> ssl.SSLContext:
        ctx = self._contexts.get(ca_file)
        if ctx is None:
            ctx = self._contexts[ca_file] = ssl.create_default_context(
                cafile=None if ca_file is None else str(ca_file))
        return ctx

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: a session must be made inside a loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
                skip_auto_headers=("User-Agent",))
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str],
                   timeout_s: float, *, ca_file: Path | None = None) -> int:
        try:
            ctx = self._context(ca_file)
        except (OSError, ssl.SSLError) as e:
            raise DeliveryTransportError(f"cannot load CA file {str(ca_file)!r}: {e}") from e
        try:
            async with self.session.post(url, data=body, headers=dict(headers), allow_redirects=False,
                                         ssl=ctx, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                await resp.read()  # drain so the connection goes back to the pool
                return resp.status
        except asyncio.TimeoutError as e:
            raise DeliveryTimeout(f"timeout after {timeout_s} s") from e
        except aiohttp.ClientConnectorCertificateError as e:
            cert = e.certificate_error
            why = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or cert
            raise DeliveryTransportError(f"TLS certificate not trusted ({why}); give the route a "
                                         "ca_file that signed it") from e
        except aiohttp.ClientError as e:
            raise DeliveryTransportError(f"{type(e).__name__}: {e}") from e

    async def aclose(self) -> None:
        if self._own and self._session is not None:
            await self._session.close()
            self._session = None


def scrub(message: str, ep: Endpoint) -> str:
    """``message`` without ``ep``'s URL path, query or user info (often credentials) or any
    form of its signing key: this is what reaches logs, dead letters and ops alerts."""
    out = message.replace(ep.url, redact_url(ep.url))
    pieces: list[str] = []
    with contextlib.suppress(ValueError):
        u = urlsplit(ep.url)
        # pieces shorter than 6 characters ("/hook") are no credential, and replacing them
        # would garble unrelated text
        pieces += [p for p in (u.path, u.query, u.username, u.password, u.fragment) if p and len(p) >= 6]
    b64 = base64.b64encode(ep.secret.key).decode()
    pieces += [b64, b64.rstrip("="), ep.secret.key.hex()]
    for piece in sorted(set(pieces), key=len, reverse=True):
        out = out.replace(piece, "<redacted>")
    return out


def _as_poster(client: httpx.AsyncClient | WebhookPoster) -> WebhookPoster:
    return HttpxPoster(client) if isinstance(client, httpx.AsyncClient) else client


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
        headers = signature_headers(ep.secret, ev.event_id, int(time.time()), body)
        headers.update({"content-type": ctype, "user-agent": "cardiowatch-dispatcher/0.1"})
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
    when another endpoint follows it. Raises ``_Abandon`` (internal) when ``stopping``
    is set during a backoff sleep.
    """
    client = _as_poster(client)
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


class OffsetBook:
    """Per-partition completion tracking: commit only below the lowest unfinished offset."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}  # one past the highest offset seen
        self._committed: dict[TopicPartition, int] = {}

    @property
    def in_flight(self) -> int:
        return sum(len(s) for s in self._pending.values())

    def add(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        pending = self._pending.get(tp)
        if pending is not None:
            pending.discard(offset)

    def drop(self, tp: TopicPartition) -> None:
        """Forget a revoked partition; completions arriving later are ignored."""
        self._pending.pop(tp, None)
        self._next.pop(tp, None)
        self._committed.pop(tp, None)

    def commit_points(self) -> dict[TopicPartition, int]:
        """Offsets to commit (next record to read) that moved since the last commit."""
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            pending = self._pending.get(tp)
            point = min(pending) if pending else nxt
            if point > self._committed.get(tp, -1):
                out[tp] = point
        return out

    def mark_committed(self, points: dict[TopicPartition, int]) -> None:
        for tp, off in points.items():
            if tp in self._next:
                self._committed[tp] = off


@dataclass
class _Item:
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    ts_ms: int  # record timestamp: when the alert was appended to the log
    parked: bool = False  # value dropped to save memory; read back from the log


@dataclass
class _State:
    settings: DispatcherSettings
    routing: RoutingConfig
    client: WebhookPoster
    producer: AIOKafkaProducer
    tracker: EscalationTrackerLike
    book: AlertBook
    metrics: DispatcherMetrics
    stopping: asyncio.Event
    offsets: OffsetBook = field(default_factory=OffsetBook)
    queues: dict[bytes, asyncio.Queue[_Item]] = field(default_factory=dict)
    workers: dict[bytes, asyncio.Task[None]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    patient_span_ms: dict[str, tuple[int, int]] = field(default_factory=dict)
    raised: int = 0
    max_held_bytes: int = 64 * 1024 * 1024  # DispatchOptions.max_held_bytes
    held_bytes: int = 0
    parked: dict[tuple[TopicPartition, int], _Item] = field(default_factory=dict)
    fetcher: LogReader | None = None
    breaker: CircuitBreaker | None = None
    # ack records this process's ack API is publishing: the acks tail skips them, so the
    # publisher alone applies each one and logs its "acknowledged" event (see _KafkaAckSink)
    own_acks: set[bytes] = field(default_factory=set)

    @property
    def topics(self) -> Any:
        return self.settings.kafka.topics

    def observe(self, ev: AlertEvent, now_ms: int) -> None:
        self.book.observe(ev)
        if not is_delivery_failure(ev):
            self.tracker.observe(ev, now_ms)
        if ev.category == "physiological":
            lo, hi = self.patient_span_ms.get(ev.patient_id, (ev.onset_ts_ms, ev.detected_ts_ms))
            self.patient_span_ms[ev.patient_id] = (min(lo, ev.onset_ts_ms), max(hi, ev.detected_ts_ms))
            if ev.action == "raised":
                self.raised += 1

    def apply_ack(self, rec: AckRecord) -> AlertEvent | None:
        self.book.apply(rec)
        fn = self.tracker.acknowledge if rec.action == "ack" else self.tracker.resolve
        ev = fn(rec.alert_id, rec.ts_ms, rec.by)
        if ev is not None and rec.team is not None:  # the audit log says from which team, too
            ev = dataclasses.replace(ev, details={**ev.details, "by_team": rec.team})
        return ev

    def refresh_gauges(self) -> None:
        open_, unack = self.book.counts()
        for p, n in open_.items():
            self.metrics.open_alerts.labels(priority=p).set(n)
        for p, n in unack.items():
            self.metrics.unacknowledged.labels(priority=p).set(n)
        hour_ms = 3_600_000
        observed_ms = sum(max(hour_ms, hi - lo) for lo, hi in self.patient_span_ms.values())
        if observed_ms:
            self.metrics.alerts_per_patient_day.set(self.raised / (observed_ms / 86_400_000))
        self.metrics.in_flight.set(self.offsets.in_flight)
        self.metrics.held_bytes.set(self.held_bytes)
        if self.breaker is not None:
            self.metrics.circuits_open.set(self.breaker.open_count())


async def _send(st: _State, topic: str, key: str, value: bytes) -> None:
    await st.producer.send_and_wait(topic, value=value, key=key.encode())


async def _process(st: _State, item: _Item) -> None:
    try:
        ev = AlertEvent.from_json(item.value or b"")
    except Exception as e:  # any undecodable value ([] or null too): dead-letter, go on
        await _send(st, st.topics.alerts_deadletter, (item.key or b"").decode(errors="replace"),
                    json.dumps({"reason": f"undecodable alert: {e}", "raw": (item.value or b"").decode(
                        errors="replace"), "offset": item.offset, "partition": item.tp.partition}).encode())
        st.metrics.deliveries.labels(outcome="undecodable", priority="unknown").inc()
        return
    result = await deliver(ev, st.routing, st.client, st.metrics, st.stopping, st.rng, st.breaker)
    now_ms = int(time.time() * 1000)
    if result.outcome == "deadlettered":
        log.warning("all routes failed for %s: %s", ev.event_id, "; ".join(result.reasons[-4:]))
        await _send(st, st.topics.alerts_deadletter, ev.patient_id, json.dumps(
            {"reason": "all_routes_failed", "reasons": list(result.reasons), "failed_wall_ms": now_ms,
             "event": ev.to_dict()}, separators=(",", ":")).encode())
        if not is_delivery_failure(ev):  # a failed failure alert is only dead-lettered: no loop
            fail = delivery_failure_alert(ev, result.reasons[-8:], now_ms)
            await _send(st, st.topics.alerts, fail.patient_id, fail.to_json())
    elif ev.produced_wall_ms is not None:
        st.metrics.delivery_latency.observe(max(0.0, now_ms - ev.produced_wall_ms) / 1000.0)
    st.metrics.deliveries.labels(outcome=result.outcome, priority=ev.priority).inc()
    # escalation clocks run from when the alert entered the log, live and on replay alike
    st.observe(ev, item.ts_ms)


async def _retry_until_stopping(st: _State, step: Callable[[], Awaitable[bool]], what: str,
                                fatal: tuple[type[BaseException], ...] = ()) -> bool:
    """Run ``step`` until it returns True, backing off 0.5 s doubling to 30 s after it
    raises or returns False; False only when the dispatcher is stopping first.

    Exceptions of the ``fatal`` types are not retried but raised to the caller."""
    delay = 0.5
    while not st.stopping.is_set():
        try:
            if await step():
                return True
        except fatal:
            raise
        except Exception:
            log.exception("%s failed; retrying", what)
        await asyncio.sleep(delay)
        delay = min(2 * delay, 30.0)
    return False


async def _deadletter_unexpected(st: _State, item: _Item, exc: Exception) -> bool:
    """Keep an alert that could not be processed; False only when stopping first."""
    doc = json.dumps({"reason": f"dispatch_error: {type(exc).__name__}: {exc}",
                      "raw": (item.value or b"").decode(errors="replace"),
                      "offset": item.offset, "partition": item.tp.partition}).encode()

    async def step() -> bool:
        await _send(st, st.topics.alerts_deadletter, (item.key or b"").decode(errors="replace"), doc)
        st.metrics.deliveries.labels(outcome="dispatch_error", priority="unknown").inc()
        return True

    return await _retry_until_stopping(st, step, f"dead-lettering {item.tp} offset {item.offset}")


async def _unpark(st: _State, item: _Item) -> bool:
    """Read a parked record's bytes back from the log; False only when stopping first.

    A fetch also fills the other parked records it returns (the ones queued behind)."""
    if not item.parked:
        return True

    async def step() -> bool:
        assert st.fetcher is not None
        recs = await st.fetcher.fetch(item.tp, item.offset)
        if recs[0].offset > item.offset:
            # retention removed it before its turn: say so (the caller dead-letters the
            # offset with this reason) and keep the patient's later alerts going
            raise LookupError(f"parked alert record {item.tp.topic}[{item.tp.partition}]@{item.offset} "
                              f"is no longer in the log (it starts at {recs[0].offset})")
        for r in recs:
            other = st.parked.pop((item.tp, r.offset), None)
            if other is not None:
                other.value, other.parked = r.value, False
                st.held_bytes += len(r.value or b"")
        return not item.parked  # False: the fetch ended before the offset, ask again

    return await _retry_until_stopping(st, step, f"reading parked {item.tp} offset {item.offset} back",
                                       fatal=(LookupError,))


async def _worker(st: _State, key: bytes) -> None:
    q = st.queues[key]
    try:
        while not q.empty() and not st.stopping.is_set():
            item = q.get_nowait()
            try:
                if item.parked and not await _unpark(st, item):
                    return
                await _process(st, item)
            except _Abandon:
                return
            except Exception as exc:
                # Never skip to the patient's next alert (order) and never leave this one
                # in limbo (it would hold the partition's commit point forever): keep it in
                # the alerts dead-letter topic with the reason, retrying that until it lands.
                log.exception("unexpected error on %s offset %d; dead-lettering it",
                              item.tp, item.offset)
                if not await _deadletter_unexpected(st, item, exc):
                    return
            st.held_bytes -= len(item.value or b"")
            item.value = None
            st.offsets.done(item.tp, item.offset)
    finally:
        if st.workers.get(key) is asyncio.current_task():
            del st.workers[key]
            if q.empty() or st.stopping.is_set():
                st.queues.pop(key, None)


def _enqueue(st: _State, item: _Item) -> None:
    key = item.key or b""
    q = st.queues.get(key)
    if q is None:
        q = st.queues[key] = asyncio.Queue()
    size = len(item.value or b"")
    must_wait = key in st.workers  # its patient's earlier alerts are still being delivered
    if must_wait and st.fetcher is not None and st.held_bytes + size > st.max_held_bytes:
        item.value, item.parked = None, True
        st.parked[(item.tp, item.offset)] = item
        st.metrics.parked.inc()
    else:
        st.held_bytes += size
    q.put_nowait(item)
    if key not in st.workers:
        st.workers[key] = asyncio.create_task(_worker(st, key), name=f"deliver:{key[:32]!r}")


async def open_log_reader(bootstrap: str, topics: list[str], timeout_s: float = 30.0,
                          security: KafkaSecurity | None = None,
                          ) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A group-less consumer assigned every partition of ``topics``, at the beginning."""
    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         **(security or KafkaSecurity()).aiokafka_kwargs())
    await c.start()
    deadline = time.monotonic() + timeout_s
    # without a group the subscription assigns every partition once metadata has arrived
    while {tp.topic for tp in c.assignment()} != set(topics):
        if time.monotonic() > deadline:
            await c.stop()
            raise TimeoutError(f"no partitions for topics {topics} after {timeout_s} s")
        await asyncio.sleep(0.05)
    tps = sorted(c.assignment(), key=lambda tp: (tp.topic, tp.partition))
    await c.seek_to_beginning(*tps)
    return c, tps


async def log_behind(c: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    """Whether any partition's position is still before ``end``."""
    for tp, off in end.items():
        if await c.position(tp) < off:
            return True
    return False


async def _rebuild(st: _State, bootstrap: str, opts: DispatchOptions) -> AIOKafkaConsumer:
    """Replay ``alerts`` and ``acks`` into the tracker; return a consumer tailing ``acks``."""
    c, tps = await open_log_reader(bootstrap, [st.topics.alerts, st.topics.acks], opts.rebuild_timeout_s,
                                   st.settings.kafka.security)
    end = await c.end_offsets(tps)
    # Decoded as they arrive, ECG strips dropped (neither the tracker nor the book keeps
    # them), then replayed in log-time order across the two topics.
    records: list[tuple[int, int, AlertEvent | AckRecord]] = []
    skipped = 0
    deadline = time.monotonic() + opts.rebuild_timeout_s
    while (await log_behind(c, end) and time.monotonic() < deadline
           and len(records) < opts.rebuild_max_records):
        for tp, recs in (await c.getmany(timeout_ms=200, max_records=5000)).items():
            for r in recs:
                if r.offset >= end[tp]:
                    continue
                try:
                    if tp.topic == st.topics.alerts:
                        item: AlertEvent | AckRecord = AlertEvent.from_json(r.value)
                        item = AlertEvent.from_dict({**item.to_dict(), "strip": None})
                    else:
                        item = AckRecord.from_json(r.value)
                except (ValueError, TypeError, KeyError):
                    skipped += 1
                    continue
                records.append((r.timestamp, len(records), item))
    complete = not await log_behind(c, end)
    records.sort(key=lambda x: (x[0], x[1]))
    n_alerts = n_acks = 0
    for ts, _, item in records:
        if isinstance(item, AlertEvent):
            st.observe(item, ts)
            n_alerts += 1
        else:
            st.apply_ack(item)
            n_acks += 1
    if complete:
        log.info("rebuilt escalation state from %d alerts and %d acks (%d undecodable skipped)",
                 n_alerts, n_acks, skipped)
    else:
        log.error("escalation state rebuilt only partly: stopped after %d alerts and %d acks "
                  "(limits %.0f s, %d records); alerts before that point may neither escalate "
                  "nor be acknowledgeable", n_alerts, n_acks, opts.rebuild_timeout_s,
                  opts.rebuild_max_records)
    ack_tps = [tp for tp in tps if tp.topic == st.topics.acks]
    c.unsubscribe()
    c.assign(ack_tps)
    for tp in ack_tps:
        c.seek(tp, end[tp])
    return c


async def _tail_acks(st: _State, c: AIOKafkaConsumer) -> None:
    while not st.stopping.is_set():
        try:
            batches = await c.getmany(timeout_ms=200)
        except Exception:  # a broker hiccup must not end ack handling for the process
            log.exception("reading the acks topic failed; retrying")
            await asyncio.sleep(1.0)
            continue
        for recs in batches.values():
            for r in recs:
                apply_tailed_ack(st, r.value)


def apply_tailed_ack(st: _State, raw: bytes | None) -> None:
    """An ack record read back from the ``acks`` topic: applied unless this process's own
    ack API published it (that call applies it itself and logs the ``acknowledged`` event;
    applied here first, the tracker would answer that call "already acknowledged" and the
    event would never reach the audit log or the care team)."""
    if raw is not None and raw in st.own_acks:
        st.own_acks.discard(raw)
        return
    try:
        rec = AckRecord.from_json(raw or b"")
    except Exception:
        return
    st.apply_ack(rec)


async def _send_until_sent(st: _State, topic: str, key: str, value: bytes) -> bool:
    """Send, retrying with backoff until it lands; False only when stopping first."""

    async def step() -> bool:
        await _send(st, topic, key, value)
        return True

    return await _retry_until_stopping(st, step, f"producing to {topic}")


async def _escalate(st: _State, poll_s: float) -> None:
    while not st.stopping.is_set():
        try:
            now_ms = int(time.time() * 1000)
            # due() has already moved each alert to its next level: the escalated event
            # must reach the log (and from there the next contact), so it is retried.
            for ev in st.tracker.due(now_ms):
                ev = AlertEvent.from_dict({**ev.to_dict(), "produced_wall_ms": now_ms})
                if not await _send_until_sent(st, st.topics.alerts, ev.patient_id, ev.to_json()):
                    return
            st.refresh_gauges()
        except Exception:  # never let escalation die silently while delivery goes on
            log.exception("escalation step failed; continuing")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(st.stopping.wait(), timeout=poll_s)


class _KafkaAckSink:
    def __init__(self, st: _State) -> None:
        self._st = st

    async def publish(self, record: AckRecord) -> None:
        raw = record.to_json()
        self._st.own_acks.add(raw)  # before the send: the acks tail may read it back at once
        try:
            await _send(self._st, self._st.topics.acks, record.alert_id, raw)
        except BaseException:
            self._st.own_acks.discard(raw)
            raise
        ev = self._st.apply_ack(record)
        if ev is not None:  # the acknowledgement itself goes to the audit log (and the team)
            await _send(self._st, self._st.topics.alerts, ev.patient_id, ev.to_json())


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, st: _State, consumer: AIOKafkaConsumer) -> None:
        self._st, self._c = st, consumer

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        points = {tp: o for tp, o in self._st.offsets.commit_points().items() if tp in revoked}
        if points:
            with contextlib.suppress(Exception):
                await self._c.commit(points)
        for tp in revoked:
            self._st.offsets.drop(tp)
        self._st.metrics.assigned_partitions.set(0)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._st.metrics.assigned_partitions.set(len(assigned))


def alert_team(routing: RoutingConfig) -> Callable[[AlertState], str]:
    """The care team an alert is routed to, as the ack API sees it: the dispatcher's own
    ``delivery_failure`` alerts go to the ops team, the others to their patient's team."""
    def team_of(a: AlertState) -> str:
        if a.condition == DELIVERY_FAILURE and a.category == "technical":
            return routing.ops_team
        return routing.team_for(a.patient_id).name
    return team_of


def _default_tracker(routing: RoutingConfig) -> EscalationTrackerLike:
    from streaming.escalation import EscalationConfig, EscalationTracker
    return EscalationTracker(EscalationConfig(
        escalate_after_s=dict(routing.escalation.escalate_after_s),
        max_level=routing.escalation.max_level))


async def run_dispatcher(settings: DispatcherSettings, routing: RoutingConfig, *,
                         client: httpx.AsyncClient | WebhookPoster | None = None,
                         stop: asyncio.Event | None = None,
                         metrics: DispatcherMetrics | None = None,
                         tracker: EscalationTrackerLike | None = None,
                         options: DispatchOptions = DispatchOptions(),
                         tokens: TokenBook | None = None,
                         on_ready: Callable[[AckApi | None], None] | None = None) -> None:
    """Consume ``alerts`` and deliver them until ``stop`` is set; then drain and commit.

    Parameters
    ----------
    settings : DispatcherSettings
        Kafka bootstrap, topics, group id, metrics and ack ports.
    routing : RoutingConfig
        Care-team routes and the escalation policy.
    client : httpx.AsyncClient or WebhookPoster, optional
        Injected HTTP client (tests); default an :class:`AiohttpPoster` (one keep-alive
        pool without a connection cap, so a hung endpoint cannot starve healthy ones).
    stop : asyncio.Event, optional
        Set to stop gracefully (SIGTERM/SIGINT do it in :func:`main`).
    metrics : DispatcherMetrics, optional
        Built on a fresh registry when not given.
    tracker : EscalationTrackerLike, optional
        Default: ``streaming.escalation.EscalationTracker`` from ``routing.escalation``.
    options : DispatchOptions
        Bounds and intervals.
    tokens : TokenBook, optional
        Ack API tokens (hashed, each a user in a team); default the routing file's.
    on_ready : callable, optional
        Called with the started ack API (or None) once consuming begins.

    Raises
    ------
    services.topics.TopicLayoutError
        Before starting anything, when the ``alerts``, ``acks`` or ``alerts_deadletter``
        topic is missing or has a replication factor below the setting.
    """
    if settings.ack_tokens_file is not None:
        raise AccessConfigError(
            f"CARDIOWATCH_ACK_TOKENS_FILE ({str(settings.ack_tokens_file)!r}) is no longer read: ack tokens "
            "belong to a team in the routing file, hashed; convert the file with 'cardiowatch token hash "
            "--from-tokens-file FILE --team TEAM' and unset the variable")
    stop = stop or asyncio.Event()
    metrics = metrics or DispatcherMetrics(CollectorRegistry())
    own_poster = AiohttpPoster() if client is None else None
    poster: WebhookPoster = own_poster if own_poster is not None else _as_poster(client)  # type: ignore[arg-type]
    bootstrap, security = settings.kafka.bootstrap, settings.kafka.security
    # a bad certificate or password: one error naming it (KafkaConnectError), no retries
    await check_connection(bootstrap, security, settings.kafka.connect_timeout_s)
    # Refuse a cluster that does not fit the settings before anything is started.
    for d in await asyncio.to_thread(check_topics, settings.kafka, "dispatcher"):
        log.warning("%s; starting anyway (`cardiowatch topics apply` lists every difference)",
                    d.describe())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=2, **security.aiokafka_kwargs())
    await producer.start()
    st = _State(settings, routing, poster, producer, tracker or _default_tracker(routing), AlertBook(),
                metrics, asyncio.Event(), max_held_bytes=options.max_held_bytes,
                fetcher=LogReader(bootstrap, security=security),
                breaker=CircuitBreaker(options.breaker_failures, options.breaker_cooldown_s))
    tasks: list[asyncio.Task[None]] = []
    api: AckApi | None = None
    consumer: AIOKafkaConsumer | None = None
    acks_consumer: AIOKafkaConsumer | None = None
    try:
        acks_consumer = await _rebuild(st, bootstrap, options)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=settings.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=500, **security.aiokafka_kwargs())
        consumer.subscribe([st.topics.alerts], listener=_Rebalance(st, consumer))
        await consumer.start()
        if options.serve_ack_api:
            api = AckApi(st.book, TokenBook(routing.tokens) if tokens is None else tokens, _KafkaAckSink(st),
                         team_of=alert_team(routing), host=settings.bind_host, port=settings.ack_port)
            await api.start()
        tasks.append(asyncio.create_task(_tail_acks(st, acks_consumer), name="acks"))
        tasks.append(asyncio.create_task(_escalate(st, routing.escalation.poll_s), name="escalate"))
        if on_ready is not None:
            on_ready(api)
        await _consume(st, consumer, stop, options)
    finally:
        st.stopping.set()
        workers = list(st.workers.values())
        if workers:
            _, pending = await asyncio.wait(workers, timeout=options.stop_grace_s)
            for t in pending:
                t.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, *st.workers.values(), return_exceptions=True)
        if consumer is not None:
            await _commit(st, consumer)
            await consumer.stop()
        if acks_consumer is not None:
            await acks_consumer.stop()
        if api is not None:
            await api.stop()
        if st.fetcher is not None:
            await st.fetcher.stop()
        await producer.stop()
        if own_poster is not None:
            await own_poster.aclose()


async def _commit(st: _State, consumer: AIOKafkaConsumer) -> None:
    points = st.offsets.commit_points()
    if not points:
        return
    try:
        await consumer.commit(points)
        st.offsets.mark_committed(points)
    except Exception as e:  # rebalance in progress etc.: the next tick tries again
        log.warning("commit failed (%s); will retry", e)


async def _consume(st: _State, consumer: AIOKafkaConsumer, stop: asyncio.Event,
                   opts: DispatchOptions) -> None:
    paused = False
    last_commit = time.monotonic()
    resume_below = max(1, opts.max_in_flight // 2)
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=100, max_records=500)
        for tp, recs in batches.items():
            if tp not in consumer.assignment():
                continue
            for r in recs:
                st.offsets.add(tp, r.offset)
                _enqueue(st, _Item(tp, r.offset, r.key, r.value, r.timestamp))
        inflight = st.offsets.in_flight
        if not paused and inflight >= opts.max_in_flight:
            consumer.pause(*consumer.assignment())
            paused = True
        elif paused and inflight <= resume_below:
            consumer.resume(*consumer.assignment())
            paused = False
        if time.monotonic() - last_commit >= opts.commit_interval_s:
            await _commit(st, consumer)
            last_commit = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    """``cardiowatch dispatch``: settings from ``CARDIOWATCH_*``; stops on SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(prog="cardiowatch dispatch", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--log-level", default="INFO", help="Python logging level (DEBUG, INFO, WARNING, ERROR)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = DispatcherSettings.from_env()
    routing = load_routing(settings.routing_file)
    registry = CollectorRegistry()
    start_http_server(settings.metrics_port, addr=settings.bind_host, registry=registry)

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(api: AckApi | None) -> None:
            print(f"dispatcher ready ack_api={api.url if api else None}", flush=True)

        opts = DispatchOptions(max_in_flight=settings.max_in_flight,
                               max_held_bytes=settings.held_mib * 1024 * 1024,
                               breaker_failures=settings.breaker_failures,
                               breaker_cooldown_s=settings.breaker_cooldown_s)
        await run_dispatcher(settings, routing, stop=stop, metrics=DispatcherMetrics(registry),
                             options=opts, on_ready=ready)

    try:
        asyncio.run(_run())
    except TopicLayoutError as exc:
        print(f"cardiowatch dispatch: error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG: a restart will not help until the topics or settings change
    return 0


if __name__ == "__main__":
    sys.exit(main())
