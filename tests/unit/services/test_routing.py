"""Routing config: YAML to frozen dataclasses, errors naming the key path."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest

from services.routing import (
    RetryPolicy,
    RoutingConfigError,
    load_routing,
    parse_routing,
    route_key_for,
)
from services.settings import REPO_ROOT

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()


def _ep(port: int, **kw: Any) -> dict[str, Any]:
    return {"url": f"http://127.0.0.1:{port}/h", "secret": SECRET, **kw}


def _doc() -> dict[str, Any]:
    return {
        "default_team": "cardiology",
        "ops_team": "ops",
        "teams": {
            "cardiology": {
                "retry": {"max_attempts": 3, "base_backoff_s": 0.1, "max_backoff_s": 1, "total_budget_s": 5},
                "routes": {
                    "high": {"primary": _ep(1, format="fhir"), "failover": _ep(2),
                             "escalation": [_ep(3), _ep(4)],
                             "retry": {"max_attempts": 7}},
                    "default": {"primary": _ep(5, timeout_s=0.5)},
                },
            },
            "ops": {"routes": {"default": {"primary": _ep(9, format="alertmanager")}}},
        },
        "patients": {"p1": "cardiology", "p2": "ops"},
    }


def test_parses_routes_and_inherits_team_retry() -> None:
    cfg = parse_routing(_doc())
    high = cfg.route_for("p1", "high")
    assert high.primary.format == "fhir" and high.primary.url.endswith(":1/h")
    assert high.failover is not None and high.failover.url.endswith(":2/h")
    assert [e.url[-4:] for e in high.escalation] == [":3/h", ":4/h"]
    assert high.retry == RetryPolicy(7, 0.1, 1.0, 5.0)
    low = cfg.route_for("p1", "low")  # falls back to default
    assert low.primary.timeout_s == 0.5 and low.failover is None and low.retry.max_attempts == 3
    assert cfg.route_for("unknown", "high") is high  # default team
    assert cfg.route_for("p2", "high").primary.format == "alertmanager"
    assert cfg.ops_route().primary.url.endswith(":9/h")
    assert high.primary.name == "teams.cardiology.routes.high.primary"


def test_escalation_levels_repeat_last_contact() -> None:
    high = parse_routing(_doc()).route_for("p1", "high")
    assert high.escalation_endpoint(0) is None
    assert high.escalation_endpoint(1).url.endswith(":3/h")  # type: ignore[union-attr]
    assert high.escalation_endpoint(5).url.endswith(":4/h")  # type: ignore[union-attr]


def test_backoff_cap_grows_and_saturates() -> None:
    r = RetryPolicy(10, 0.5, 3.0, 60)
    assert [r.backoff_cap_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_route_key_for_technical() -> None:
    assert route_key_for("technical", "low") == "technical"
    assert route_key_for("physiological", "high") == "high"


def _set(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(d)
    keys = path.split(".")
    cur: Any = d
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    if value is KeyError:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return d


@pytest.mark.parametrize("path,value,expected", [
    ("teams.cardiology.routes.high.primary.url", "ftp://x", "teams.cardiology.routes.high.primary.url"),
    ("teams.cardiology.routes.high.primary.url", KeyError, "teams.cardiology.routes.high.primary.url"),
    ("teams.cardiology.routes.high.failover.secret", "nope", "teams.cardiology.routes.high.failover.secret"),
    ("teams.cardiology.routes.high.primary.format", "xml", "teams.cardiology.routes.high.primary.format"),
    ("teams.cardiology.routes.high.escalation.1.timeout_s", -1, "teams.cardiology.routes.high.escalation.1.timeout_s"),
    ("teams.cardiology.routes.high.retry.max_attempts", 0, "teams.cardiology.routes.high.retry.max_attempts"),
    ("teams.cardiology.retry.max_backoff_s", 0.01, "teams.cardiology.retry.max_backoff_s"),
    ("teams.cardiology.routes.urgent", {"primary": _ep(1)}, "teams.cardiology.routes.urgent"),
    ("teams.cardiology.routes.default", KeyError, "teams.cardiology.routes.default"),
    ("teams.cardiology.routes.high.primary.colour", "red", "teams.cardiology.routes.high.primary.colour"),
    ("default_team", "nobody", "default_team"),
    ("ops_team", "nobody", "ops_team"),
    ("patients.p1", "nobody", "patients.p1"),
    ("teams", {}, "teams"),
    ("escalation", {"escalate_after_s": {"urgent": 5}}, "escalation.escalate_after_s.urgent"),
    ("escalation", {"max_level": -1}, "escalation.max_level"),
])
def test_errors_name_the_key_path(path: str, value: Any, expected: str) -> None:
    with pytest.raises(RoutingConfigError) as info:
        parse_routing(_set(_doc(), path, value))
    assert info.value.path == expected
    assert expected in str(info.value)


def test_secret_inline_and_file_are_exclusive_and_file_is_relative(tmp_path: Path) -> None:
    (tmp_path / "k.secret").write_text(SECRET + "\n")
    doc = _set(_doc(), "teams.ops.routes.default.primary", {"url": "http://127.0.0.1:9/h", "secret_file": "k.secret"})
    cfg = parse_routing(doc, base_dir=tmp_path)
    assert cfg.ops_route().primary.secret.key == b"k" * 24
    with pytest.raises(RoutingConfigError, match="secret_file"):
        parse_routing(doc, base_dir=tmp_path / "elsewhere")
    both = _set(doc, "teams.ops.routes.default.primary.secret", SECRET)
    with pytest.raises(RoutingConfigError, match="exactly one"):
        parse_routing(both, base_dir=tmp_path)


def test_example_file_loads() -> None:
    cfg = load_routing(REPO_ROOT / "deploy" / "routing.example.yaml")
    assert cfg.route_for("sim-000", "high").failover is not None
    assert cfg.ops_route().primary.format == "alertmanager"
    assert cfg.escalation.escalate_after_s["high"] == 120 and cfg.escalation.max_level == 2


def test_bad_yaml_names_file(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("teams: [unclosed")
    with pytest.raises(RoutingConfigError, match="not valid YAML"):
        load_routing(p)


def test_escalation_block_without_timing_keeps_the_default_timing():
    from services.routing import EscalationPolicy, _escalation

    pol = _escalation({"max_level": 3})
    assert pol.max_level == 3
    assert dict(pol.escalate_after_s) == dict(EscalationPolicy().escalate_after_s)
    assert pol.escalate_after_s["high"] == 120.0
