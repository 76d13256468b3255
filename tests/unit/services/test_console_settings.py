"""``cardiowatch console`` settings: defaults, and errors that name the key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from services.settings import ConsoleSettings, SettingsError


def test_defaults_point_at_the_dispatchers_default_ack_port() -> None:
    s = ConsoleSettings.from_env({})
    assert (s.ack_api_url, s.port, s.bind_host) == ("http://127.0.0.1:8088", 8090, "127.0.0.1")
    assert s.scores_lookback_s <= s.scores_replay_max_s


def test_values_from_the_environment() -> None:
    s = ConsoleSettings.from_env({"CARDIOWATCH_ACK_API_URL": "https://acks.ward.example:8443/",
                                  "CARDIOWATCH_CONSOLE_PORT": "0", "CARDIOWATCH_CONSOLE_BIND": "0.0.0.0",
                                  "CARDIOWATCH_CONSOLE_SCORES_LOOKBACK_S": "60",
                                  "CARDIOWATCH_TOPIC_SCORES": "s"})
    assert s.ack_api_url == "https://acks.ward.example:8443"  # no trailing slash: paths are appended
    assert (s.port, s.bind_host, s.scores_lookback_s, s.kafka.topics.scores) == (0, "0.0.0.0", 60.0, "s")


@pytest.mark.parametrize("env,key", [
    ({"CARDIOWATCH_ACK_API_URL": "127.0.0.1:8088"}, "CARDIOWATCH_ACK_API_URL"),
    ({"CARDIOWATCH_ACK_API_URL": "ftp://host:1"}, "CARDIOWATCH_ACK_API_URL"),
    ({"CARDIOWATCH_CONSOLE_PORT": "70000"}, "CARDIOWATCH_CONSOLE_PORT"),
    ({"CARDIOWATCH_CONSOLE_SCORES_LOOKBACK_S": "soon"}, "CARDIOWATCH_CONSOLE_SCORES_LOOKBACK_S"),
    ({"CARDIOWATCH_CONSOLE_SCORES_LOOKBACK_S": "600", "CARDIOWATCH_CONSOLE_SCORES_REPLAY_MAX_S": "60"},
     "CARDIOWATCH_CONSOLE_SCORES_REPLAY_MAX_S"),
    ({"CARDIOWATCH_CONSOLE_ACK_TIMEOUT_S": "0"}, "CARDIOWATCH_CONSOLE_ACK_TIMEOUT_S"),
])
def test_bad_values_name_their_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError, match=key):
        ConsoleSettings.from_env(env)


def test_a_team_needs_the_routing_file() -> None:
    with pytest.raises(SettingsError, match="CARDIOWATCH_CONSOLE_TEAM .* needs CARDIOWATCH_ROUTING_FILE"):
        ConsoleSettings.from_env({"CARDIOWATCH_CONSOLE_TEAM": "ward"})


def test_a_teams_console_admits_the_teams_patients_and_names_an_unknown_team(tmp_path: Path) -> None:
    from services.console import ConsoleServer

    routing = tmp_path / "routing.yaml"
    hook = {"url": "https://hooks.example/x", "secret": "whsec_" + base64.b64encode(b"0123456789abcdefghij").decode()}
    routing.write_text(yaml.safe_dump({"default_team": "ward", "ops_team": "ops", "teams": {
        "ward": {"routes": {"default": {"primary": hook}}},
        "icu": {"routes": {"default": {"primary": hook}}},
        "ops": {"routes": {"default": {"primary": hook}}}}, "patients": {"p-icu": "icu"}}))
    env = {"CARDIOWATCH_ROUTING_FILE": str(routing)}
    server = ConsoleServer(ConsoleSettings.from_env({**env, "CARDIOWATCH_CONSOLE_TEAM": "icu"}))
    admit = server.view._admit
    assert admit is not None
    assert admit("p-icu", "pause", "physiological") and not admit("p-other", "pause", "physiological")
    assert not admit("p-icu", "delivery_failure", "technical")  # the ops team's, not the ward's
    ops = ConsoleServer(ConsoleSettings.from_env({**env, "CARDIOWATCH_CONSOLE_TEAM": "ops"})).view._admit
    assert ops is not None and ops("p-icu", "delivery_failure", "technical")
    with pytest.raises(SettingsError, match="CARDIOWATCH_CONSOLE_TEAM must name a team .*icu, ops, ward.*'nope'"):
        ConsoleServer(ConsoleSettings.from_env({**env, "CARDIOWATCH_CONSOLE_TEAM": "nope"}))
    assert ConsoleServer(ConsoleSettings.from_env(env)).view._admit is None  # no team: everyone
