"""Kafka client security: the settings that are refused, and the arguments each library gets."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from services.broker import KAFKA_SH
from services.settings import KafkaSettings, SettingsError, kafka_security_from_env
from streaming.kafka_security import KafkaConnectError, KafkaSecurity, KafkaSecurityError, check_connection

P = "CARDIOWATCH_KAFKA_"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a client certificate + key made by ``deploy/kafka.sh certs`` (openssl, keytool)."""
    d = tmp_path_factory.mktemp("kafka-tls") / "tls"
    subprocess.run(["bash", str(KAFKA_SH), "certs", "--dir", str(d)], check=True, capture_output=True,
                   timeout=60)
    return d


def _sasl_ssl(tls: Path, **over: str) -> dict[str, str]:
    env = {f"{P}SECURITY_PROTOCOL": "SASL_SSL", f"{P}SSL_CAFILE": str(tls / "ca.pem"),
           f"{P}SASL_MECHANISM": "SCRAM-SHA-512", f"{P}SASL_USERNAME": "cardiowatch",
           f"{P}SASL_PASSWORD": "s3cret-pw"}
    env.update(over)
    return {k: v for k, v in env.items() if v != "<unset>"}


def test_plaintext_by_default_for_every_library() -> None:
    sec = KafkaSettings.from_env({}).security
    assert sec == KafkaSecurity()
    assert sec.aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert sec.kafka_python_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert sec.faust_credentials() is None
    assert sec.ssl_context is None


@pytest.mark.parametrize("env, keys", [
    ({f"{P}SECURITY_PROTOCOL": "SASL_SSL"}, [f"{P}SSL_CAFILE"]),
    ({f"{P}SECURITY_PROTOCOL": "SSL"}, [f"{P}SSL_CAFILE"]),
    ({f"{P}SASL_MECHANISM": "PLAIN"}, [f"{P}SASL_MECHANISM", f"{P}SECURITY_PROTOCOL"]),
    ({f"{P}SASL_PASSWORD": "x"}, [f"{P}SASL_PASSWORD", f"{P}SECURITY_PROTOCOL"]),
    ({f"{P}SSL_CAFILE": "/etc/hostname"}, [f"{P}SSL_CAFILE", f"{P}SECURITY_PROTOCOL"]),
    ({f"{P}SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, [f"{P}SASL_MECHANISM"]),
    ({f"{P}SECURITY_PROTOCOL": "SASL_PLAINTEXT", f"{P}SASL_MECHANISM": "SCRAM-SHA-512",
      f"{P}SASL_USERNAME": "u"}, [f"{P}SASL_PASSWORD", f"{P}SASL_PASSWORD_FILE"]),
    ({f"{P}SECURITY_PROTOCOL": "SASL_PLAINTEXT", f"{P}SASL_MECHANISM": "PLAIN",
      f"{P}SASL_PASSWORD": "p"}, [f"{P}SASL_USERNAME"]),
    ({f"{P}SECURITY_PROTOCOL": "TLS"}, [f"{P}SECURITY_PROTOCOL", "'TLS'"]),
    ({f"{P}SECURITY_PROTOCOL": "SASL_PLAINTEXT", f"{P}SASL_MECHANISM": "GSSAPI"},
     [f"{P}SASL_MECHANISM", "'GSSAPI'"]),
    ({f"{P}SSL_CHECK_HOSTNAME": "maybe"}, [f"{P}SSL_CHECK_HOSTNAME", "'maybe'"]),
])
def test_half_configured_settings_are_refused_naming_the_keys(env: dict[str, str], keys: list[str]) -> None:
    with pytest.raises(SettingsError) as e:
        KafkaSettings.from_env(env)
    for key in keys:
        assert key in str(e.value)


def test_tls_settings_refused_naming_the_key_and_file(tls: Path, tmp_path: Path) -> None:
    cases = [
        (_sasl_ssl(tls, **{f"{P}SSL_CAFILE": str(tmp_path / "nope.pem")}), [f"{P}SSL_CAFILE", "nope.pem"]),
        (_sasl_ssl(tls, **{f"{P}SSL_CAFILE": str(tls / "secrets.env")}),
         [f"{P}SSL_CAFILE", "no usable PEM"]),
        (_sasl_ssl(tls, **{f"{P}SSL_CERTFILE": str(tls / "client.pem")}), [f"{P}SSL_KEYFILE"]),
        (_sasl_ssl(tls, **{f"{P}SSL_KEYFILE": str(tls / "client.key")}), [f"{P}SSL_CERTFILE"]),
        (_sasl_ssl(tls, **{f"{P}SSL_KEY_PASSWORD": "x"}), [f"{P}SSL_KEY_PASSWORD", f"{P}SSL_KEYFILE"]),
        # a key that is not the certificate's
        (_sasl_ssl(tls, **{f"{P}SSL_CERTFILE": str(tls / "client.pem"), f"{P}SSL_KEYFILE": str(tls / "ca.key")}),
         [f"{P}SSL_KEYFILE", "client.pem"]),
    ]
    for env, keys in cases:
        with pytest.raises(SettingsError) as e:
            kafka_security_from_env(env)
        for key in keys:
            assert key in str(e.value), (env, str(e.value))


def test_password_from_a_file_but_not_from_both(tls: Path, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    env = _sasl_ssl(tls, **{f"{P}SASL_PASSWORD": "<unset>", f"{P}SASL_PASSWORD_FILE": str(pw)})
    assert kafka_security_from_env(env).sasl_password == "from-file"
    with pytest.raises(SettingsError, match=f"{P}SASL_PASSWORD and {P}SASL_PASSWORD_FILE"):
        kafka_security_from_env({**env, f"{P}SASL_PASSWORD": "x"})
    pw.write_text("")
    with pytest.raises(SettingsError, match="is empty"):
        kafka_security_from_env(env)
    with pytest.raises(SettingsError, match=f"{P}SASL_PASSWORD_FILE .*cannot be read"):
        kafka_security_from_env({**env, f"{P}SASL_PASSWORD_FILE": str(tmp_path / "missing")})


def test_sasl_ssl_with_mutual_tls_gives_each_library_the_same_verified_context(tls: Path) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sec = kafka_security_from_env(_sasl_ssl(tls, **{f"{P}SSL_CERTFILE": str(tls / "client.pem"),
                                                    f"{P}SSL_KEYFILE": str(tls / "client.key"),
                                                    f"{P}SASL_MECHANISM": "scram-sha-512"}))
    ctx = sec.ssl_context
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert any(c["subject"] == ((("commonName", "cardiowatch local CA"),),) for c in ctx.get_ca_certs())
    expected = {"security_protocol": "SASL_SSL", "ssl_context": ctx, "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "cardiowatch", "sasl_plain_password": "s3cret-pw"}
    assert sec.aiokafka_kwargs() == expected
    assert sec.kafka_python_kwargs() == {**expected, "ssl_check_hostname": True}
    # what Faust hands to aiokafka for its consumer, producer and topic admin
    assert credentials_to_aiokafka_auth(sec.faust_credentials()) == expected


def test_tls_without_sasl_and_hostname_check_off(tls: Path) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sec = kafka_security_from_env({f"{P}SECURITY_PROTOCOL": "ssl", f"{P}SSL_CAFILE": str(tls / "ca.pem"),
                                   f"{P}SSL_CHECK_HOSTNAME": "false"})
    assert sec.protocol == "SSL" and sec.ssl_context is not None
    assert not sec.ssl_context.check_hostname and sec.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert credentials_to_aiokafka_auth(sec.faust_credentials()) == {
        "security_protocol": "SSL", "ssl_context": sec.ssl_context}
    assert "sasl_mechanism" not in sec.aiokafka_kwargs()


def test_secrets_never_in_repr_or_description(tls: Path) -> None:
    sec = kafka_security_from_env(_sasl_ssl(tls))
    assert "s3cret-pw" not in repr(sec) and "s3cret-pw" not in sec.describe()
    assert "s3cret-pw" not in repr(KafkaSettings(security=sec))
    assert sec.describe() == f"SASL_SSL ca={tls / 'ca.pem'} SCRAM-SHA-512 user=cardiowatch"


def test_security_error_names_the_field() -> None:
    with pytest.raises(KafkaSecurityError) as e:
        KafkaSecurity(protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u")
    assert e.value.field == "sasl_password"
    assert isinstance(e.value, ValueError)


def test_probe_of_a_closed_port_fails_at_once_naming_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    with pytest.raises(KafkaConnectError, match=f"127.0.0.1:{port} refused the connection"):
        asyncio.run(check_connection(f"127.0.0.1:{port}", KafkaSecurity(), timeout_s=5))
    assert time.monotonic() - t < 5


def test_probe_of_a_silent_server_times_out_within_its_bound() -> None:
    """A listener that accepts and never answers (a TLS client on a port that waits for
    something else): the probe gives up at its timeout, naming it."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        t = time.monotonic()
        with pytest.raises(KafkaConnectError, match=r"no answer in 1 s"):
            asyncio.run(check_connection(f"127.0.0.1:{port}", KafkaSecurity(), timeout_s=1))
        assert time.monotonic() - t < 4


def test_encrypted_client_key_needs_its_password(tls: Path, tmp_path: Path) -> None:
    enc = tmp_path / "client-enc.key"
    subprocess.run(["openssl", "pkcs8", "-topk8", "-in", str(tls / "client.key"), "-out", str(enc),
                    "-passout", "pass:keypw"], check=True, capture_output=True, timeout=30)
    env = _sasl_ssl(tls, **{f"{P}SSL_CERTFILE": str(tls / "client.pem"), f"{P}SSL_KEYFILE": str(enc)})
    assert kafka_security_from_env({**env, f"{P}SSL_KEY_PASSWORD": "keypw"}).ssl_context is not None
    with pytest.raises(SettingsError, match=f"{P}SSL_KEY_PASSWORD"):
        kafka_security_from_env({**env, f"{P}SSL_KEY_PASSWORD": "wrong"})
    with pytest.raises(SettingsError, match=f"{P}SSL_KEYFILE"):  # refused, never a password prompt
        kafka_security_from_env(env)


def test_child_environment_without_kafka_security(tls: Path, tmp_path: Path) -> None:
    from services.settings import without_kafka_security

    pw = tmp_path / "pw"
    pw.write_text("x")
    env = {**_sasl_ssl(tls), f"{P}SASL_PASSWORD_FILE": str(pw), "CARDIOWATCH_BOOTSTRAP": "h:1", "PATH": "/bin"}
    child = without_kafka_security(env)
    assert child == {"CARDIOWATCH_BOOTSTRAP": "h:1", "PATH": "/bin"}
    assert KafkaSettings.from_env(child).security == KafkaSecurity()
