"""Fuzz the routing and policy loaders: the example files mutated, arbitrary documents,
arbitrary file text.

Property: a config whose every route and limit can be used, or the loader's typed error
(:class:`RoutingConfigError`, :class:`PolicyConfigError`) naming the problem; never
another exception."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from fuzz_support import REPO_ROOT, fuzz_settings, json_values, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from services.routing import RoutingConfig, RoutingConfigError, load_routing, parse_routing
from streaming.errors import PolicyConfigError
from streaming.policy import PolicyConfig, load_policy_config

ROUTING_DOC: dict[str, Any] = yaml.safe_load((REPO_ROOT / "deploy" / "routing.example.yaml").read_text())
POLICY_DOC: dict[str, Any] = yaml.safe_load((REPO_ROOT / "deploy" / "policy.example.yaml").read_text())
_TMP = Path(tempfile.mkdtemp(prefix="cardiowatch-fuzz-"))
atexit.register(shutil.rmtree, _TMP, True)  # the hypothesis tests share it; removed when pytest exits
# YAML that PyYAML's safe loader turns into ValueError or RecursionError, not YAMLError
yaml_traps = st.sampled_from(["a: " + "9" * 5000, "[" * 5000, "a: !!int xyz", "a: !!float xyz",
                              "a: !!timestamp 2020-99-99", "a: &a [*a]", "teams: &t {c: *t}", "? [1]\n: 2"])
ROUTING_KEYS = ("secret_file", "ca_file", "allow_insecure_http", "tokens", "failover", "escalation",
                "timeout_s", "retry", "patients", "ops_team", "format", "url")


def _usable(cfg: RoutingConfig) -> None:
    for team in cfg.teams.values():
        for key in ("high", "medium", "low", "technical", "default"):
            route = team.route(key)
            for ep in (*route.endpoints(), *route.escalation):
                assert ep.url.startswith(("http://", "https://")) and ep.timeout_s > 0
            assert route.retry.max_attempts >= 1 and route.retry.backoff_cap_s(3) >= 0
            route.escalation_endpoint(cfg.escalation.max_level)
    cfg.team_for("anyone")
    cfg.ops_route()


@fuzz_settings(300)
@given(doc=st.one_of(json_values, mutated(ROUTING_DOC, ROUTING_KEYS)))
@example(doc={**ROUTING_DOC, "teams": {"cardiology": {**ROUTING_DOC["teams"]["cardiology"],
                                                       "routes": {"default": {"primary": {
                                                           "url": "https://x.test/h", "secret_file": "a\x00b"}}}}}})
@example(doc={**ROUTING_DOC, "teams": {"cardiology": {**ROUTING_DOC["teams"]["cardiology"],
                                                       "routes": {"default": {"primary": {
                                                           "url": "https://x.test/h", "ca_file": "a\x00b",
                                                           "secret": ROUTING_DOC["teams"]["ops"]["routes"]["default"]["primary"]["secret"]}}}}}})
@example(doc={**ROUTING_DOC, "teams": {"cardiology": {**ROUTING_DOC["teams"]["cardiology"],
                                                       "routes": {"default": {"primary": {
                                                           "url": "https://[::1/h", "secret": "x"}}}}}})
def test_routing_loader(doc: Any) -> None:
    try:
        cfg = parse_routing(doc, base_dir=_TMP)
    except RoutingConfigError as e:
        assert e.path and str(e)
        return
    _usable(cfg)


@fuzz_settings(150)
@given(text=st.one_of(st.text(max_size=300), yaml_traps,
                     st.builds(yaml.safe_dump, mutated(ROUTING_DOC, ROUTING_KEYS))))
@example(text="teams: !!python/object:os.system {}")
@example(text="a: &a [*a]")
def test_routing_file_loader(text: str) -> None:
    path = _TMP / "routing.yaml"
    path.write_text(text)
    try:
        cfg = load_routing(path)
    except RoutingConfigError as e:
        assert str(e)
        return
    _usable(cfg)


def _usable_policy(cfg: PolicyConfig) -> None:
    for pid in ("anyone", *cfg.patient_limits):
        lo, brady, tachy, hi = cfg.limits_for(pid)
        assert lo <= brady <= tachy <= hi
    assert 0.0 <= cfg.signal.min_quality <= 1.0


@fuzz_settings(300)
@given(doc=st.one_of(st.dictionaries(st.text(max_size=10), json_values, max_size=4), mutated(POLICY_DOC)))
@example(doc={"patient_limits": {"p": {"hr_high_bpm": "fast"}}})
@example(doc={"patient_limits": {"p": {"hr_high_bpm": 10**400}}})
@example(doc={"alarms": {"cooldown_s": 10**400}})
def test_policy_loader(doc: dict[str, Any]) -> None:
    try:
        cfg = PolicyConfig.from_mapping(doc)
    except PolicyConfigError as e:
        assert str(e)
        return
    _usable_policy(cfg)


@fuzz_settings(150)
@given(text=st.one_of(st.text(max_size=300), yaml_traps, st.builds(yaml.safe_dump, mutated(POLICY_DOC))))
def test_policy_file_loader(text: str) -> None:
    path = _TMP / "policy.yaml"
    path.write_text(text)
    try:
        cfg = load_policy_config(path)
    except PolicyConfigError as e:
        assert str(e)
        return
    _usable_policy(cfg)
