"""``cardiowatch console`` settings: defaults, and errors that name the key."""

from __future__ import annotations

import pytest

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
