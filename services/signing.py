"""Delivery stage: Standard Webhooks signing and verification (HMAC-SHA256, ``v1``).

Implements https://www.standardwebhooks.com/ ourselves: a message is signed as
``base64(HMAC-SHA256(key, f"{webhook_id}.{timestamp_s}.{body}"))`` and sent in the
``webhook-signature`` header as ``v1,<sig>`` together with ``webhook-id`` and
``webhook-timestamp`` (whole seconds since the epoch). Secrets are ``whsec_`` + base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from models.errors import CardiowatchError

__all__ = [
    "SignatureError",
    "WebhookSecret",
    "DEFAULT_TOLERANCE_S",
    "sign",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
# Standard Webhooks recommends rejecting timestamps more than five minutes off.
DEFAULT_TOLERANCE_S = 300


class SignatureError(CardiowatchError, ValueError):
    """A webhook's headers are missing, malformed, stale, or its signature does not match."""


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """A symmetric signing key, parsed from ``whsec_<base64>``."""

    key: bytes

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("webhook secret key must not be empty")

    @classmethod
    def parse(cls, secret: str) -> WebhookSecret:
        """Parse ``whsec_<base64>``; raises ``ValueError`` naming the problem."""
        if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
            raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}, got {_redact(secret)!r}")
        raw = secret[len(SECRET_PREFIX):]
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"webhook secret is not valid base64 after {SECRET_PREFIX!r}: "
                             f"{_redact(secret)!r}") from None
        if len(key) < 16:
            raise ValueError(f"webhook secret must decode to at least 16 bytes, got {len(key)}")
        return cls(key)

    def __repr__(self) -> str:  # never print key material
        return f"WebhookSecret(<{len(self.key)} bytes>)"


def _redact(secret: object) -> str:
    """Describe a bad secret without any of its characters (messages end up in logs)."""
    if not isinstance(secret, str):
        return f"<{type(secret).__name__}>"
    return f"<{len(secret)} characters>"


def _as_secret(secret: WebhookSecret | str) -> WebhookSecret:
    return secret if isinstance(secret, WebhookSecret) else WebhookSecret.parse(secret)


def sign(secret: WebhookSecret | str, webhook_id: str, timestamp_s: int, body: bytes) -> str:
    """Return the ``v1,<base64 signature>`` value for one message.

    Parameters
    ----------
    secret : WebhookSecret or str
        The endpoint's key (``whsec_...``).
    webhook_id : str
        Unique message id; identical across retries so receivers can deduplicate.
    timestamp_s : int
        Send time in whole seconds since the epoch.
    body : bytes
        The exact request body.
    """
    key = _as_secret(secret).key
    msg = f"{webhook_id}.{int(timestamp_s)}.".encode() + body
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(secret: WebhookSecret | str, webhook_id: str, timestamp_s: int,
                      body: bytes) -> dict[str, str]:
    """Headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for a body."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp_s)),
        "webhook-signature": sign(secret, webhook_id, timestamp_s, body),
    }


def verify(secret: WebhookSecret | str, body: bytes, headers: dict[str, str], *,
           now_s: float, tolerance_s: int = DEFAULT_TOLERANCE_S) -> str:
    """Check a received webhook; return its ``webhook-id``.

    Parameters
    ----------
    secret : WebhookSecret or str
        The shared key.
    body : bytes
        Raw request body as received.
    headers : dict
        Request headers (any case).
    now_s : float
        Receiver's current time in seconds since the epoch (injected, for tests).
    tolerance_s : int
        Largest accepted distance between ``webhook-timestamp`` and ``now_s``.

    Raises
    ------
    SignatureError
        Missing headers, a bad timestamp, or no ``v1`` signature that matches.
    """
    h = {k.lower(): v for k, v in headers.items()}
    wid, ts, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    missing = [n for n, v in (("webhook-id", wid), ("webhook-timestamp", ts),
                              ("webhook-signature", sigs)) if not v]
    if missing:
        raise SignatureError(f"missing webhook headers: {', '.join(missing)}")
    assert wid is not None and ts is not None and sigs is not None
    try:
        ts_s = int(ts)
    except ValueError:
        raise SignatureError(f"webhook-timestamp must be integer seconds, got {ts!r}") from None
    if abs(now_s - ts_s) > tolerance_s:
        raise SignatureError(f"webhook-timestamp {ts_s} is more than {tolerance_s} s from now ({int(now_s)})")
    expected = sign(secret, wid, ts_s, body).split(",", 1)[1].encode()
    for candidate in sigs.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode()):
            return wid
    raise SignatureError(f"no matching v1 signature for webhook-id {wid!r}")
