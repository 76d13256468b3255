"""Delivery stage, transport: signed webhook requests over HTTP (aiohttp or an injected httpx client).

The dispatcher sees HTTP only through :class:`WebhookPoster`: one POST, a status code
back, or :class:`DeliveryTimeout` / :class:`DeliveryTransportError` when no response
came. :func:`webhook_headers` signs each attempt (Standard Webhooks, ``services.signing``);
:func:`scrub` keeps an endpoint's credentials out of every message that leaves here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx

from models.errors import CardiowatchError
from services.routing import Endpoint, redact_url
from services.signing import signature_headers

__all__ = [
    "USER_AGENT",
    "DeliveryTransportError",
    "DeliveryTimeout",
    "WebhookPoster",
    "HttpxPoster",
    "AiohttpPoster",
    "as_poster",
    "scrub",
    "webhook_headers",
]

USER_AGENT = "cardiowatch-dispatcher/0.1"


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


def as_poster(client: httpx.AsyncClient | WebhookPoster) -> WebhookPoster:
    """``client`` as a :class:`WebhookPoster` (an ``httpx.AsyncClient`` is wrapped)."""
    return HttpxPoster(client) if isinstance(client, httpx.AsyncClient) else client


def webhook_headers(ep: Endpoint, event_id: str, body: bytes, content_type: str) -> dict[str, str]:
    """Headers of one attempt: signed now (``webhook-timestamp``), with ``event_id`` as the
    ``webhook-id`` so every retry and redelivery of an event carries the same one."""
    headers = signature_headers(ep.secret, event_id, int(time.time()), body)
    headers.update({"content-type": content_type, "user-agent": USER_AGENT})
    return headers
