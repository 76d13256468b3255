"""Delivery stage: who may use the acknowledgement API: hashed team tokens and a bad-token limit.

A care team's tokens live in the routing file as ``sha256:<64 hex>`` digests, never in
plain text (``cardiowatch token hash`` makes one). A token identifies an
:class:`AckPrincipal` (a user in a team); the ack API answers that principal only for
alerts routed to its team.

Why SHA-256 and not a slow hash: the tokens this project hands out carry 256 random bits
(``cardiowatch token hash --new``), so a preimage search is hopeless with or without key
stretching, while an unsalted digest lets a request be checked with one hash and one
dictionary lookup instead of one slow hash per stored token (which a stream of bad
tokens would turn into a denial of service). Low-entropy tokens (under 16 characters)
are refused by the command.

Repeated bad tokens from one client address are answered ``429`` with ``Retry-After``
(:class:`BadTokenLimiter`, a token bucket per address), before the token is even looked
at, so guessing runs at ``refill_per_s`` at most.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from models.errors import CardiowatchError
from models.cli_help import HelpFormatter

__all__ = [
    "TOKEN_HASH_PREFIX",
    "MIN_TOKEN_CHARS",
    "AccessConfigError",
    "AckPrincipal",
    "TokenEntry",
    "TokenBook",
    "BadTokenLimiter",
    "hash_token",
    "parse_token_hash",
    "main",
]

TOKEN_HASH_PREFIX = "sha256:"
MIN_TOKEN_CHARS = 16


class AccessConfigError(CardiowatchError, ValueError):
    """A token hash or the ack API's access configuration is invalid."""


@dataclass(frozen=True, slots=True)
class AckPrincipal:
    """Who called the ack API: a user name and the care team the token belongs to."""

    user: str
    team: str


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One stored token: its SHA-256 digest (32 bytes) and whom it identifies."""

    digest: bytes
    principal: AckPrincipal

    def __repr__(self) -> str:  # the digest is not secret, but logs need not carry it
        return f"TokenEntry(user={self.principal.user!r}, team={self.principal.team!r})"


def hash_token(token: str) -> str:
    """The routing-file form of a token: ``sha256:<64 lowercase hex>``.

    Raises
    ------
    AccessConfigError
        The token is shorter than :data:`MIN_TOKEN_CHARS` or has surrounding whitespace.
    """
    if len(token) < MIN_TOKEN_CHARS:
        raise AccessConfigError(f"a token must have at least {MIN_TOKEN_CHARS} characters, "
                                f"got {len(token)}")
    if token != token.strip():
        raise AccessConfigError("a token must not start or end with whitespace")
    return TOKEN_HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def parse_token_hash(text: object) -> bytes:
    """Digest bytes of ``sha256:<64 hex>``; ``ValueError`` naming the problem otherwise.

    The message never repeats the value: a plain token pasted here by mistake must not
    end up in a log.
    """
    if not isinstance(text, str):
        raise AccessConfigError(f"must be a string '{TOKEN_HASH_PREFIX}<64 hex>', got {type(text).__name__}")
    if not text.startswith(TOKEN_HASH_PREFIX):
        raise AccessConfigError(f"must start with {TOKEN_HASH_PREFIX!r} (store the hash from "
                                "'cardiowatch token hash', never the token)")
    hexpart = text[len(TOKEN_HASH_PREFIX):]
    if len(hexpart) != 64:
        raise AccessConfigError(f"must have 64 hex digits after {TOKEN_HASH_PREFIX!r}, got {len(hexpart)}")
    try:
        return bytes.fromhex(hexpart)
    except ValueError:
        raise AccessConfigError(f"must have 64 hex digits after {TOKEN_HASH_PREFIX!r}") from None


class TokenBook:
    """Bearer token -> :class:`AckPrincipal`, from stored digests.

    A lookup hashes the presented token once and looks the digest up; the timing of a
    dictionary lookup on a SHA-256 digest tells a caller nothing about any stored token.
    """

    def __init__(self, entries: Iterable[TokenEntry] = ()) -> None:
        self._by_digest: dict[bytes, AckPrincipal] = {}
        for e in entries:
            if len(e.digest) != 32:
                raise AccessConfigError(f"token digest for {e.principal.user!r} must be 32 bytes, "
                                        f"got {len(e.digest)}")
            if e.digest in self._by_digest:
                raise AccessConfigError(f"the same token is given to {self._by_digest[e.digest].user!r} "
                                        f"and {e.principal.user!r}; each user needs their own")
            self._by_digest[e.digest] = e.principal

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, token: str) -> AckPrincipal | None:
        """The principal a presented token identifies, or ``None``."""
        if not token:
            return None
        return self._by_digest.get(hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest())


class BadTokenLimiter:
    """Token bucket per client address, drained by bad tokens.

    Each address starts with ``burst`` allowances; a bad token spends one, and one comes
    back every ``1 / refill_per_s`` seconds. An address with none left is refused
    (:meth:`retry_after_s` > 0) until one comes back. At most ``max_clients`` addresses
    are remembered (the least recently failing are forgotten first), so memory stays
    bounded under a spray from many addresses.
    """

    def __init__(self, burst: int = 5, refill_per_s: float = 0.1, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or not refill_per_s > 0 or max_clients < 1:
            raise ValueError(f"need burst >= 1, refill_per_s > 0, max_clients >= 1, got "
                             f"{burst}, {refill_per_s}, {max_clients}")
        self.burst, self.refill_per_s, self.max_clients = burst, refill_per_s, max_clients
        self._clock = clock
        self._level: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (allowance, at)

    def _allowance(self, client: str, now: float) -> float:
        got = self._level.get(client)
        if got is None:
            return float(self.burst)
        level, at = got
        return min(float(self.burst), level + (now - at) * self.refill_per_s)

    def retry_after_s(self, client: str) -> int:
        """Whole seconds until ``client`` may try again; 0 when it may now."""
        now = self._clock()
        level = self._allowance(client, now)
        if level >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - level) / self.refill_per_s))

    def failed(self, client: str) -> None:
        """``client`` presented a bad token."""
        now = self._clock()
        level = max(0.0, self._allowance(client, now) - 1.0)
        self._level[client] = (level, now)
        self._level.move_to_end(client)
        while len(self._level) > self.max_clients:
            self._level.popitem(last=False)

    def __len__(self) -> int:
        return len(self._level)


def _tokens_block(team: str, pairs: Iterable[tuple[str, str]]) -> str:
    lines = [f"# paste under teams.{team} in the routing file", "tokens:"]
    for user, token in pairs:
        lines += [f"  - user: {user}", f"    token_hash: {hash_token(token)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``cardiowatch token hash``: print the routing-file hash of an ack token.

    The token is read from stdin (never from the command line, where ``ps`` and shell
    history would keep it); ``--new`` makes a fresh 256-bit token and prints it once,
    with its hash; ``--from-tokens-file`` converts an old plain ``token: user`` file.
    """
    p = argparse.ArgumentParser(prog="cardiowatch token hash", description=(main.__doc__ or "").splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--new", action="store_true", help="generate a new token and print it with its hash")
    p.add_argument("--from-tokens-file", metavar="FILE",
                   help="old plain 'token: user' YAML/JSON file to convert into a routing 'tokens:' block")
    p.add_argument("--team", help="team name for --from-tokens-file output")
    args = p.parse_args(argv)
    try:
        if args.from_tokens_file:
            from services.ack_api import load_tokens
            if not args.team:
                p.error("--from-tokens-file needs --team")
            tokens = load_tokens(args.from_tokens_file)
            print(_tokens_block(args.team, ((user, tok) for tok, user in tokens.items())))
            return 0
        if args.new:
            token = secrets.token_urlsafe(32)
            print(f"token (give it to its user; it is not stored): {token}")
            print(f"token_hash (put it in the routing file):        {hash_token(token)}")
            return 0
        text = sys.stdin.readline().rstrip("\r\n")
        print(hash_token(text))
        return 0
    except CardiowatchError as e:
        print(f"cardiowatch token hash: {e}", file=sys.stderr)
        return 2
