"""Ack API access: hashed team tokens in the routing file, the bad-token limiter, the hash command."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import pytest

from services.access import (
    AccessConfigError,
    AckPrincipal,
    BadTokenLimiter,
    TokenBook,
    TokenEntry,
    hash_token,
    main,
    parse_token_hash,
)
from services.routing import RoutingConfigError, load_routing, parse_routing
from services.settings import REPO_ROOT

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()
TOKEN = "nurse-token-0123456789abcdef"


def _doc(**team_extra: object) -> dict[str, object]:
    ep = {"url": "http://127.0.0.1:1/h", "secret": SECRET}
    return {"default_team": "a", "teams": {
        "a": {"routes": {"default": {"primary": ep}}, **team_extra},
        "b": {"routes": {"default": {"primary": ep}},
              "tokens": [{"user": "dr.b", "token_hash": hash_token("b-token-0123456789abcdef")}]}}}


def test_hash_is_sha256_hex_and_round_trips() -> None:
    h = hash_token(TOKEN)
    assert h.startswith("sha256:") and len(h) == 7 + 64
    assert parse_token_hash(h) == bytes.fromhex(h[7:])
    with pytest.raises(AccessConfigError, match="at least 16"):
        hash_token("short")
    with pytest.raises(AccessConfigError, match="whitespace"):
        hash_token(" " + TOKEN)


def test_routing_tokens_identify_user_and_team() -> None:
    cfg = parse_routing(_doc(tokens=[{"user": "nurse.a", "token_hash": hash_token(TOKEN)}]))
    book = TokenBook(cfg.tokens)
    assert book.lookup(TOKEN) == AckPrincipal("nurse.a", "a")
    assert book.lookup("b-token-0123456789abcdef") == AckPrincipal("dr.b", "b")
    assert book.lookup(TOKEN + "x") is None and book.lookup("") is None
    assert book.lookup(hash_token(TOKEN)) is None  # the stored hash is not itself a token


@pytest.mark.parametrize("value", [TOKEN, "sha256:abc", "sha256:" + "zz" * 32, 12345, None])
def test_a_bad_token_hash_names_the_key_and_never_echoes_the_value(value: object) -> None:
    with pytest.raises(RoutingConfigError) as e:
        parse_routing(_doc(tokens=[{"user": "nurse.a", "token_hash": value}]))
    assert e.value.path == "teams.a.tokens.0.token_hash"
    assert TOKEN not in str(e.value) and "zz" not in str(e.value)


def test_routing_refuses_a_token_shared_by_two_users() -> None:
    h = hash_token("b-token-0123456789abcdef")
    with pytest.raises(RoutingConfigError, match="same token"):
        parse_routing(_doc(tokens=[{"user": "nurse.a", "token_hash": h}]))
    with pytest.raises(RoutingConfigError, match="tokens.0.user"):
        parse_routing(_doc(tokens=[{"user": "", "token_hash": hash_token(TOKEN)}]))
    with pytest.raises(RoutingConfigError, match="must be a list"):
        parse_routing(_doc(tokens={TOKEN: "nurse.a"}))
    with pytest.raises(AccessConfigError, match="same token"):
        TokenBook([TokenEntry(b"x" * 32, AckPrincipal("u", "a")), TokenEntry(b"x" * 32, AckPrincipal("v", "b"))])


def test_example_routing_file_tokens() -> None:
    cfg = load_routing(REPO_ROOT / "deploy" / "routing.example.yaml")
    book = TokenBook(cfg.tokens)
    assert book.lookup("nurse.a-token-0123456789abcdef") == AckPrincipal("nurse.a", "cardiology")
    assert book.lookup("ops.c-token-0123456789abcdef") == AckPrincipal("ops.c", "ops")


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_limiter_allows_a_burst_then_one_per_refill() -> None:
    clock = _Clock()
    lim = BadTokenLimiter(burst=3, refill_per_s=0.5, clock=clock)
    for _ in range(3):
        assert lim.retry_after_s("1.2.3.4") == 0
        lim.failed("1.2.3.4")
    assert lim.retry_after_s("1.2.3.4") == 2  # one allowance back in 1 / 0.5 s
    assert lim.retry_after_s("5.6.7.8") == 0  # other addresses are not affected
    clock.t += 1.0
    assert lim.retry_after_s("1.2.3.4") == 1
    clock.t += 1.0
    assert lim.retry_after_s("1.2.3.4") == 0
    lim.failed("1.2.3.4")
    assert lim.retry_after_s("1.2.3.4") == 2
    clock.t += 100
    assert lim.retry_after_s("1.2.3.4") == 0


def test_limiter_memory_is_bounded() -> None:
    lim = BadTokenLimiter(burst=1, max_clients=10, clock=_Clock())
    for i in range(100):
        lim.failed(f"10.0.0.{i}")
    assert len(lim) == 10 and lim.retry_after_s("10.0.0.99") > 0
    with pytest.raises(ValueError, match="burst"):
        BadTokenLimiter(burst=0)


def test_token_hash_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                            tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(TOKEN + "\n"))
    assert main([]) == 0
    assert capsys.readouterr().out.strip() == hash_token(TOKEN)
    assert main(["--new"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[0].rsplit(" ", 1)[1]
    assert len(token) >= 43 and out[1].rsplit(" ", 1)[1] == hash_token(token)
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main([]) == 2
    assert "at least 16" in capsys.readouterr().err
    old = tmp_path / "tokens.yaml"
    old.write_text(f"{TOKEN}: nurse.a\n")
    assert main(["--from-tokens-file", str(old), "--team", "a"]) == 0
    block = capsys.readouterr().out
    assert TOKEN not in block
    import yaml
    cfg = parse_routing(_doc(**yaml.safe_load(block)))
    assert TokenBook(cfg.tokens).lookup(TOKEN) == AckPrincipal("nurse.a", "a")
