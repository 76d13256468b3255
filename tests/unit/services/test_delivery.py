"""Delivery policy (services.delivery): retries, failover, the circuit breaker, the retry
budget; over ``httpx.MockTransport``, no broker and no sockets."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from dispatch_support import FAST_RETRY, SECRET, alert, ep, mock_routing, run
from services.delivery import CircuitBreaker, deliver
from services.routing import parse_routing
from services.signing import verify
from streaming.metrics import DispatcherMetrics


def test_deliver_retries_then_fails_over_with_same_webhook_id() -> None:
    seen: list[tuple[str, str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        wid = verify(SECRET, req.content, dict(req.headers), now_s=time.time())
        seen.append((req.url.host, wid))
        if req.url.host == "primary.test":
            return httpx.Response(503)
        return httpx.Response(200)

    m = DispatcherMetrics(CollectorRegistry())
    ev = alert("p1", 1)

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await deliver(ev, mock_routing(), c, m, rng=random.Random(1))

    res = run(go())
    assert res.outcome == "failover_delivered" and res.attempts == 4
    assert [h for h, _ in seen] == ["primary.test"] * 3 + ["failover.test"]
    assert {w for _, w in seen} == {ev.event_id}
    assert m.registry.get_sample_value("cardiowatch_delivery_retries_total") == 2
    assert m.registry.get_sample_value("cardiowatch_delivery_failovers_total") == 1


def test_circuit_breaker_sends_alerts_straight_to_failover_while_primary_fails() -> None:
    hosts: list[str] = []
    primary_ok = False

    def handler(req: httpx.Request) -> httpx.Response:
        hosts.append(req.url.host)
        if req.url.host == "primary.test" and not primary_ok:
            raise httpx.ConnectError("refused", request=req)
        return httpx.Response(200)

    now = [1000.0]
    breaker = CircuitBreaker(failures=2, cooldown_s=30.0, clock=lambda: now[0])
    m = DispatcherMetrics(CollectorRegistry())
    five = {**FAST_RETRY, "max_attempts": 5}

    async def send(i: int) -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await deliver(alert("p1", i), mock_routing(five), c, m, rng=random.Random(1),
                                 breaker=breaker)

    # 2 failures in a row open the circuit: this alert fails over after 2 attempts, not 5
    res = run(send(1))
    assert res.outcome == "failover_delivered" and hosts == ["primary.test"] * 2 + ["failover.test"]
    assert any("circuit open" in r for r in res.reasons)
    # while open, the next alerts skip the primary entirely
    hosts.clear()
    assert run(send(2)).outcome == "failover_delivered" and hosts == ["failover.test"]
    assert m.registry.get_sample_value("cardiowatch_delivery_circuit_skips_total") == 1
    # after the cooldown the primary is tried again; once it answers, the circuit closes
    now[0] += 31
    primary_ok = True
    hosts.clear()
    assert run(send(3)).outcome == "delivered" and hosts == ["primary.test"]
    assert breaker.open_count() == 0


def test_circuit_breaker_half_open_lets_one_probe_through() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=1, cooldown_s=10.0, clock=lambda: now[0])
    u = "https://primary.test/h"
    assert not b.should_skip(u)
    b.record(u, False)
    assert b.should_skip(u) and b.is_open(u)  # open
    now[0] = 11.0
    assert not b.should_skip(u)  # half-open: this delivery is the probe
    assert b.should_skip(u) and b.should_skip(u)  # the others wait for its answer
    b.record(u, False)  # the probe failed: open for another cooldown
    assert b.should_skip(u)
    now[0] = 22.0
    assert not b.should_skip(u)
    b.record(u, True)  # the probe got through: closed for everyone
    assert not b.should_skip(u) and not b.should_skip(u) and b.open_count() == 0
    # a probe that never reports back frees its slot after a cooldown
    b.record(u, False)
    now[0] = 33.0
    assert not b.should_skip(u) and b.should_skip(u)
    now[0] = 44.0
    assert not b.should_skip(u)


def test_circuit_breaker_never_skips_a_routes_last_endpoint() -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503)

    breaker = CircuitBreaker(failures=1, cooldown_s=60.0)
    routing = parse_routing({"default_team": "t", "teams": {"t": {"retry": {**FAST_RETRY, "max_attempts": 4},
                             "routes": {"default": {"primary": ep("https://only.test/h")}}}}})

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await deliver(alert("p1", 1), routing, c, DispatcherMetrics(CollectorRegistry()),
                                 rng=random.Random(1), breaker=breaker)

    res = run(go())
    # the only endpoint keeps its full retries although the circuit opened at once
    assert res.outcome == "deadlettered" and calls == 4 and breaker.is_open("https://only.test/h")


def test_deliver_4xx_is_not_retried_and_escalation_goes_to_level_contact() -> None:
    hosts: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        hosts.append(req.url.host)
        return httpx.Response(400 if req.url.host == "level1.test" else 200)

    ev = alert("p1", 1, action="escalated", escalation_level=1)

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await deliver(ev, mock_routing(), c, DispatcherMetrics(CollectorRegistry()))

    res = run(go())
    assert hosts == ["level1.test", "primary.test"]  # 400: no retry, next contact
    assert res.outcome == "failover_delivered"


def test_deliver_gives_up_within_budget() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    retry = {"max_attempts": 50, "base_backoff_s": 0.2, "max_backoff_s": 0.2, "total_budget_s": 0.5}

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await deliver(alert("p1", 1), mock_routing(retry), c, DispatcherMetrics(CollectorRegistry()))

    t0 = time.monotonic()
    res = run(go())
    assert res.outcome == "deadlettered" and time.monotonic() - t0 < 2.0
    assert any("budget" in r for r in res.reasons) and res.attempts < 20
