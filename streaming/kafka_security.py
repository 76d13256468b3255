"""Kafka client security: TLS, mutual TLS and SASL arguments for every client library.

One frozen :class:`KafkaSecurity` describes how a process talks to the brokers; this
module turns it into what each library takes, so no client builds its own:

- :meth:`KafkaSecurity.aiokafka_kwargs` for ``AIOKafkaProducer`` / ``AIOKafkaConsumer``
  (the dispatcher, the log reader, the benches);
- :meth:`KafkaSecurity.kafka_python_kwargs` for kafka-python's ``KafkaProducer``,
  ``KafkaConsumer`` and ``KafkaAdminClient`` (the simulator, the broker admin calls);
- :meth:`KafkaSecurity.faust_credentials` for ``faust.App(broker_credentials=...)``.

All three share one :class:`ssl.SSLContext` per object (server verification against the
CA file, hostname check on, TLS 1.2 or later, an optional client certificate).

:func:`check_connection` is the start-up probe: it connects to each bootstrap server
with these settings once, and turns what went wrong into one error that names the
cause (untrusted certificate, failed authentication, refused connection, no answer)
instead of the clients' own endless reconnect loops.

The settings themselves are read from ``CARDIOWATCH_KAFKA_*`` by
``services.settings.KafkaSecurity`` users; errors here name the field (``ssl_cafile``)
and the settings layer maps it to its key.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args

from models.errors import CardiowatchError

__all__ = [
    "KafkaSecurity",
    "KafkaSecurityError",
    "KafkaConnectError",
    "KafkaTLSError",
    "KafkaAuthError",
    "SecurityProtocol",
    "SaslMechanism",
    "PROTOCOLS",
    "MECHANISMS",
    "check_connection",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)


class KafkaSecurityError(CardiowatchError, ValueError):
    """Kafka security settings that are missing, contradictory or unreadable.

    ``field`` names the :class:`KafkaSecurity` field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.detail = message


class KafkaConnectError(CardiowatchError, ConnectionError):
    """The start-up probe could not reach or talk to any bootstrap server."""


class KafkaTLSError(KafkaConnectError):
    """The TLS handshake failed: an untrusted or mismatched broker certificate, or a
    broker that refused ours."""


class KafkaAuthError(KafkaConnectError):
    """The broker rejected the SASL mechanism or the credentials."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How a client connects to Kafka; the default is plaintext without authentication.

    Parameters
    ----------
    protocol : {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        Kafka's ``security.protocol``.
    ssl_cafile : Path, optional
        PEM file of the CA(s) that signed the brokers' certificates; required with TLS
        (the brokers are always verified, there is no "trust anything").
    ssl_certfile, ssl_keyfile : Path, optional
        PEM client certificate (chain) and its private key, for mutual TLS; both or none.
    ssl_key_password : str, optional
        Password of an encrypted ``ssl_keyfile``.
    ssl_check_hostname : bool
        Check that the broker's certificate names the host connected to (default on).
    sasl_mechanism : {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}, optional
        Required with the SASL protocols, refused without them.
    sasl_username, sasl_password : str, optional
        Both required with a SASL mechanism. Never shown by ``repr``.

    Raises
    ------
    KafkaSecurityError
        Half-configured or contradictory settings, naming the field.
    """

    protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        p = self.protocol
        if p not in PROTOCOLS:
            raise KafkaSecurityError("protocol", f"protocol must be one of {PROTOCOLS}, got {p!r}")
        if self.uses_tls:
            if self.ssl_cafile is None:
                raise KafkaSecurityError(
                    "ssl_cafile", f"protocol {p} needs ssl_cafile, the CA file that verifies the brokers")
            if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
                have, missing = (("ssl_certfile", "ssl_keyfile") if self.ssl_keyfile is None
                                 else ("ssl_keyfile", "ssl_certfile"))
                raise KafkaSecurityError(missing, f"mutual TLS needs both ssl_certfile and ssl_keyfile; "
                                                  f"{have} is set but {missing} is not")
            if self.ssl_key_password is not None and self.ssl_keyfile is None:
                raise KafkaSecurityError("ssl_key_password", "ssl_key_password is set but ssl_keyfile is not")
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = getattr(self, name)
                if path is not None and not Path(path).is_file():
                    raise KafkaSecurityError(name, f"{name} {str(path)!r} is not a readable file")
        else:
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password"):
                if getattr(self, name) is not None:
                    raise KafkaSecurityError(name, f"{name} is set but protocol {p} does not use TLS "
                                                   f"(use SSL or SASL_SSL)")
        if self.uses_sasl:
            m = self.sasl_mechanism
            if m is None:
                raise KafkaSecurityError("sasl_mechanism", f"protocol {p} needs sasl_mechanism, one of {MECHANISMS}")
            if m not in MECHANISMS:
                raise KafkaSecurityError("sasl_mechanism", f"sasl_mechanism must be one of {MECHANISMS}, got {m!r}")
            for name in ("sasl_username", "sasl_password"):
                if not getattr(self, name):
                    raise KafkaSecurityError(name, f"sasl_mechanism {m} needs {name}, got nothing")
        else:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is not None:
                    raise KafkaSecurityError(name, f"{name} is set but protocol {p} does not use SASL "
                                                   f"(use SASL_SSL or SASL_PLAINTEXT)")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """One line for logs, without secrets."""
        parts: list[str] = [self.protocol]
        if self.uses_tls:
            parts.append(f"ca={self.ssl_cafile}")
            if self.ssl_certfile is not None:
                parts.append(f"client-cert={self.ssl_certfile}")
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} user={self.sasl_username}")
        return " ".join(parts)

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The one TLS context for every client (None without TLS).

        Raises
        ------
        KafkaSecurityError
            A CA, certificate or key file that cannot be loaded, naming the field."""
        if not self.uses_tls:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode=CERT_REQUIRED
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.ssl_check_hostname
        try:
            ctx.load_verify_locations(cafile=str(self.ssl_cafile))
        except (ssl.SSLError, OSError) as exc:
            raise KafkaSecurityError("ssl_cafile", f"ssl_cafile {str(self.ssl_cafile)!r} holds no usable "
                                                   f"PEM CA certificate: {exc}") from None
        if self.ssl_certfile is not None:
            try:
                # "" rather than None: OpenSSL would otherwise ask a terminal for the
                # password of an encrypted key
                ctx.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile),
                                    password=self.ssl_key_password or "")
            except (ssl.SSLError, OSError) as exc:
                raise KafkaSecurityError(
                    "ssl_keyfile", f"ssl_certfile {str(self.ssl_certfile)!r} with ssl_keyfile "
                                   f"{str(self.ssl_keyfile)!r} cannot be loaded (not PEM, a key that "
                                   f"is not the certificate's, or a wrong ssl_key_password): {exc}") from None
        return ctx

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            kw["ssl_context"] = self.ssl_context
        if self.uses_sasl:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        return kw

    def kafka_python_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's producer, consumer and admin client.

        kafka-python takes a ready ``ssl_context`` (it then ignores its ``ssl_*`` file
        options) and the same ``sasl_*`` names as aiokafka."""
        kw: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            kw["ssl_context"] = self.ssl_context
            kw["ssl_check_hostname"] = self.ssl_check_hostname
        if self.uses_sasl:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        return kw

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for ``faust.App`` (None for plaintext).

        Faust hands them to aiokafka for its consumer, producer and topic admin."""
        import faust

        if self.uses_sasl:
            return faust.SASLCredentials(username=self.sasl_username, password=self.sasl_password,
                                         mechanism=self.sasl_mechanism, ssl_context=self.ssl_context)
        if self.uses_tls:
            return faust.SSLCredentials(self.ssl_context)
        return None


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for hp in bootstrap.split(","):
        host, _, port = hp.strip().rpartition(":")
        out.append((host, int(port)))
    return out


def _explain(exc: BaseException, where: str, sec: KafkaSecurity, timeout_s: float) -> KafkaConnectError:
    """One error naming the cause of a failed probe of ``where``."""
    from aiokafka.errors import (
        AuthenticationFailedError,
        AuthenticationMethodNotSupported,
        IllegalSaslStateError,
        KafkaConnectionError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    if isinstance(exc, ssl.SSLCertVerificationError):
        return KafkaTLSError(
            f"TLS to {where}: the broker's certificate is not trusted: {exc.verify_message} "
            f"(verified against ssl_cafile {str(sec.ssl_cafile)!r}"
            f"{', hostname checked' if sec.ssl_check_hostname else ''})")
    if isinstance(exc, ssl.SSLError):
        hint = ("; the broker may require a client certificate (ssl_certfile, ssl_keyfile)"
                if sec.ssl_certfile is None else "; the broker may not trust the client certificate")
        return KafkaTLSError(f"TLS handshake with {where} failed: {exc.reason or exc}{hint}")
    if isinstance(exc, (SaslAuthenticationFailed, AuthenticationFailedError)):
        return KafkaAuthError(f"SASL {sec.sasl_mechanism} authentication of user {sec.sasl_username!r} "
                              f"at {where} failed (wrong username or password): {exc}")
    if isinstance(exc, (UnsupportedSaslMechanismError, IllegalSaslStateError,
                        AuthenticationMethodNotSupported)):
        return KafkaAuthError(f"{where} does not accept SASL mechanism {sec.sasl_mechanism}: {exc}")
    if isinstance(exc, asyncio.TimeoutError):
        return KafkaConnectError(f"{where} gave no answer in {timeout_s:.0f} s with protocol {sec.protocol} "
                                 f"(a listener of another protocol, or a filtered port?)")
    if isinstance(exc, ConnectionRefusedError):
        return KafkaConnectError(f"{where} refused the connection (no broker listening there)")
    if isinstance(exc, (KafkaConnectionError, ConnectionError)):
        if sec.uses_tls and sec.ssl_certfile is None:
            hint = (f"; a TLS listener closes like this when it requires a client certificate "
                    f"(ssl_certfile, ssl_keyfile), or does that listener not speak {sec.protocol}?")
        else:
            hint = f"; does that listener speak {sec.protocol}?"
        return KafkaConnectError(f"{where} closed the connection during set-up with protocol "
                                 f"{sec.protocol}: {exc}{hint}")
    return KafkaConnectError(f"connecting to {where} with protocol {sec.protocol} failed: {exc!r}")


async def check_connection(bootstrap: str, security: KafkaSecurity, timeout_s: float = 15.0) -> str:
    """Connect once to the bootstrap servers with ``security``; the first that answers.

    Each server gets one attempt, TLS handshake, SASL authentication and a metadata
    request included, within ``timeout_s``. A certificate or authentication failure
    stops at once (another server of the same cluster would answer the same).

    Raises
    ------
    KafkaTLSError, KafkaAuthError
        The broker's certificate was not trusted, the handshake was refused, or the
        credentials or mechanism were rejected.
    KafkaConnectError
        No server answered (each server's cause in the message).
    """
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    kw = security.aiokafka_kwargs()
    causes: list[str] = []
    for host, port in _hosts(bootstrap):
        where = f"{host}:{port}"
        conn = None
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(host, port, request_timeout_ms=int(timeout_s * 1000),
                                         client_id="cardiowatch-probe", **kw)
                await conn.send(MetadataRequest([]))
            return where
        except Exception as exc:  # classified below; nothing is retried
            err = _explain(exc, where, security, timeout_s)
            if isinstance(err, (KafkaTLSError, KafkaAuthError)):
                raise err from exc
            causes.append(str(err))
        finally:
            if conn is not None:
                conn.close()
    raise KafkaConnectError("no Kafka bootstrap server answered: " + "; ".join(causes))
