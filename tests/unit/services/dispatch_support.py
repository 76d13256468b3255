"""Shared pieces of the dispatcher's unit tests: alerts, endpoints and a routing over
``httpx.MockTransport`` hosts (``primary.test``, ``failover.test``, ``level1.test``)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable
from typing import Any

from services.routing import RoutingConfig, parse_routing
from streaming.events import AlertEvent

SECRET = "whsec_" + base64.b64encode(b"integration-secret-0123456789").decode()
FAST_RETRY = {"max_attempts": 3, "base_backoff_s": 0.05, "max_backoff_s": 0.2, "total_budget_s": 5}


def alert(patient: str, seq: int, priority: str = "high", **kw: Any) -> AlertEvent:
    onset = 1_700_000_000_000 + seq * 1000
    base: dict[str, Any] = dict(
        alert_id=f"{patient}:vt:{onset}", revision=1, action="raised", patient_id=patient,
        device_id=f"dev-{patient}", condition="ventricular_tachycardia", category="physiological",
        priority=priority, onset_ts_ms=onset, detected_ts_ms=onset + 500, rule="test",
        score=0.9, threshold=0.5, model_version="t/1", signal_quality=1.0,
        produced_wall_ms=int(time.time() * 1000), details={"seq": seq})
    base.update(kw)
    return AlertEvent(**base)


def ep(url: str, timeout_s: float = 1.0, **kw: Any) -> dict[str, Any]:
    return {"url": url, "secret": SECRET, "timeout_s": timeout_s, **kw}


def mock_routing(fast: dict[str, Any] | None = None) -> RoutingConfig:
    return parse_routing({
        "default_team": "t", "teams": {"t": {"retry": fast or FAST_RETRY, "routes": {"default": {
            "primary": ep("https://primary.test/h"), "failover": ep("https://failover.test/h", format="fhir"),
            "escalation": [ep("https://level1.test/h")]}}}}})


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]
