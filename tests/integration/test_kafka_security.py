"""Kafka security on a real SASL_SSL broker: the worker end to end, and fast, named failures.

One secured broker for the module (``LocalBroker(secure=True, mtls=True)``: TLS made at
start-up by ``deploy/kafka.sh``, SCRAM users created on the broker, an extra listener
that requires a client certificate), on free ports, with a small JVM heap.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.broker import LocalBroker
from services.settings import REPO_ROOT, KafkaSettings, Topics
from streaming.kafka_security import (
    KafkaAuthError,
    KafkaConnectError,
    KafkaSecurity,
    KafkaTLSError,
    check_connection,
)
from worker_harness import WorkerProcess, read_until

pytestmark = pytest.mark.integration

FAIL_FAST_S = 30.0  # a wrong password or certificate must end a start within this
T0 = 1_767_225_600_000


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[LocalBroker]:
    old = os.environ.get("KAFKA_HEAP_OPTS")
    os.environ["KAFKA_HEAP_OPTS"] = "-Xms64m -Xmx256m"  # a second JVM beside the session's
    try:
        broker = LocalBroker(partitions=2, secure=True, mtls=True).start()
    finally:
        if old is None:
            os.environ.pop("KAFKA_HEAP_OPTS", None)
        else:
            os.environ["KAFKA_HEAP_OPTS"] = old
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA that docker-compose.secure.yml's ``compose-certs.sh`` makes (keytool only):
    a real CA, unrelated to the secure broker's."""
    d = tmp_path_factory.mktemp("compose-certs")
    subprocess.run(["bash", str(REPO_ROOT / "deploy" / "kafka" / "compose-certs.sh"), str(d / "broker"),
                    str(d / "client")], check=True, capture_output=True, timeout=120)
    return d / "client" / "ca.pem"


def test_compose_certs_make_a_broker_chain_for_host_kafka(foreign_ca: Path) -> None:
    broker = foreign_ca.parent.parent / "broker"
    pw = (broker / "keystore.password").read_text()
    cert = subprocess.run(["keytool", "-exportcert", "-rfc", "-alias", "broker", "-keystore",
                           str(broker / "broker.p12"), "-storepass", pw], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    (broker / "broker.pem").write_text(cert)
    v = subprocess.run(["openssl", "verify", "-CAfile", str(foreign_ca), "-purpose", "sslserver",
                        str(broker / "broker.pem")], capture_output=True, text=True, timeout=30)
    assert v.returncode == 0, v.stdout + v.stderr
    san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(broker / "broker.pem")],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    assert "DNS:kafka" in san and "IP Address:127.0.0.1" in san
    assert KafkaSecurity(protocol="SSL", ssl_cafile=foreign_ca).ssl_context is not None
    assert "password=" in (broker / "kafka_server_jaas.conf").read_text()
    assert oct((foreign_ca.parent / "client.password").stat().st_mode & 0o777) == "0o644"
    assert oct((broker / "admin.password").stat().st_mode & 0o777) == "0o600"


def _probe(bootstrap: str, sec: KafkaSecurity) -> tuple[str | BaseException, float]:
    t = time.monotonic()
    try:
        got: str | BaseException = asyncio.run(check_connection(bootstrap, sec, timeout_s=10))
    except KafkaConnectError as exc:
        got = exc
    return got, time.monotonic() - t


def test_broker_has_no_plaintext_client_listener(secure_broker: LocalBroker) -> None:
    got, took = _probe(secure_broker.bootstrap, KafkaSecurity())
    assert isinstance(got, KafkaConnectError) and not isinstance(got, (KafkaTLSError, KafkaAuthError)), got
    assert "PLAINTEXT" in str(got) and secure_broker.bootstrap in str(got)
    assert took < FAIL_FAST_S


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_every_mechanism_authenticates_and_carries_records(secure_broker: LocalBroker, mechanism: str) -> None:
    from aiokafka import TopicPartition
    from kafka import KafkaProducer

    from streaming.logread import LogReader

    sec = replace(secure_broker.security, sasl_mechanism=mechanism)  # type: ignore[arg-type]
    assert _probe(secure_broker.bootstrap, sec)[0] == secure_broker.bootstrap
    topic = f"test.sec.{mechanism.lower()}.{uuid.uuid4().hex[:8]}"
    secure_broker.create_topics([topic], 1)
    # kafka-python in, aiokafka (the log reader, with its kafka-python admin) out
    p = KafkaProducer(bootstrap_servers=secure_broker.bootstrap, acks="all", **sec.kafka_python_kwargs())
    for i in range(3):
        p.send(topic, key=b"k", value=f"v{i}".encode())
    p.flush(30)
    p.close()

    async def read() -> list[bytes]:
        r = LogReader(secure_broker.bootstrap, security=sec)
        try:
            return [rec.value for rec in await r.read_range(TopicPartition(topic, 0), 0, 2)]
        finally:
            await r.stop()

    assert asyncio.run(read()) == [b"v0", b"v1", b"v2"]


def test_wrong_password_fails_fast_naming_authentication(secure_broker: LocalBroker) -> None:
    sec = replace(secure_broker.security, sasl_password="not-the-password")
    got, took = _probe(secure_broker.bootstrap, sec)
    assert isinstance(got, KafkaAuthError), got
    assert "authentication" in str(got) and "'cardiowatch'" in str(got) and "not-the-password" not in str(got)
    assert took < FAIL_FAST_S


def test_unknown_user_fails_fast(secure_broker: LocalBroker) -> None:
    got, took = _probe(secure_broker.bootstrap, replace(secure_broker.security, sasl_username="mallory"))
    assert isinstance(got, KafkaAuthError) and "'mallory'" in str(got), got
    assert took < FAIL_FAST_S


def test_untrusted_certificate_fails_fast_naming_the_ca(secure_broker: LocalBroker, foreign_ca: Path) -> None:
    got, took = _probe(secure_broker.bootstrap, replace(secure_broker.security, ssl_cafile=foreign_ca))
    assert isinstance(got, KafkaTLSError), got
    assert "not trusted" in str(got) and str(foreign_ca) in str(got)
    assert took < FAIL_FAST_S


def test_mutual_tls_listener_needs_the_client_certificate(secure_broker: LocalBroker) -> None:
    tls = secure_broker.tls_dir
    with_cert = KafkaSecurity(protocol="SSL", ssl_cafile=tls / "ca.pem", ssl_certfile=tls / "client.pem",
                              ssl_keyfile=tls / "client.key")
    assert _probe(secure_broker.mtls_bootstrap, with_cert)[0] == secure_broker.mtls_bootstrap
    got, took = _probe(secure_broker.mtls_bootstrap, KafkaSecurity(protocol="SSL", ssl_cafile=tls / "ca.pem"))
    assert isinstance(got, KafkaConnectError), got
    assert "client certificate" in str(got), got
    assert took < FAIL_FAST_S


def _env_of(broker: LocalBroker, topics: Topics, **over: str) -> dict[str, str]:
    t = topics
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDIOWATCH_KAFKA_")}
    env.update(broker.client_env, CARDIOWATCH_BOOTSTRAP=broker.bootstrap, CARDIOWATCH_PARTITIONS="2",
               CARDIOWATCH_TOPIC_ECG=t.ecg, CARDIOWATCH_TOPIC_HR=t.hr, CARDIOWATCH_TOPIC_SCORES=t.scores,
               CARDIOWATCH_TOPIC_ALERTS=t.alerts, CARDIOWATCH_TOPIC_DEADLETTER=t.deadletter,
               CARDIOWATCH_TOPIC_ALERTS_DEADLETTER=t.alerts_deadletter, CARDIOWATCH_TOPIC_ACKS=t.acks,
               CARDIOWATCH_TOPIC_ALERT_STATE=t.alert_state,
               PYTHONUNBUFFERED="1", **over)
    return env


def _fresh_topics(broker: LocalBroker) -> Topics:
    prefix = f"test.sec.{uuid.uuid4().hex[:8]}"
    d = Topics()
    topics = Topics(**{f: f"{prefix}.{getattr(d, f)}" for f in d.__dataclass_fields__})
    broker.create_topics(topics.all(), 2)
    return topics


@pytest.mark.parametrize("fault", ["wrong_password", "untrusted_ca"])
def test_worker_and_simulator_refuse_to_start_with_a_named_cause(secure_broker: LocalBroker, foreign_ca: Path,
                                                                 tmp_path: Path, fault: str) -> None:
    """The real processes: one error line naming the cause, a non-zero exit, well within
    the bound (no reconnect loop, no model loaded first)."""
    topics = _fresh_topics(secure_broker)
    over = ({"CARDIOWATCH_KAFKA_SASL_PASSWORD": "wrong"} if fault == "wrong_password"
            else {"CARDIOWATCH_KAFKA_SSL_CAFILE": str(foreign_ca)})
    expected = "authentication" if fault == "wrong_password" else "not trusted"
    for argv in (["worker", "--data-dir", str(tmp_path / "w")],
                 ["simulate", "--patients", "1", "--seconds", "5", "--speed", "0"]):
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "services.cli", *argv], env=_env_of(secure_broker, topics, **over),
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=FAIL_FAST_S + 30)
        took = time.monotonic() - t
        out = r.stdout + r.stderr
        assert r.returncode == 3, (argv, r.returncode, out[-3000:])
        assert expected in out, (argv, out[-3000:])
        assert "Traceback" not in out, (argv, out[-3000:])
        assert took < FAIL_FAST_S, (argv, took)
        print(f"{argv[0]} ({fault}, {took:.1f} s): {out.strip().splitlines()[-1]}")


def test_worker_end_to_end_over_sasl_ssl(secure_broker: LocalBroker, tmp_path: Path) -> None:
    """Simulated patients in through the simulator CLI, beats scored and a ventricular-run
    alert out of the worker, every hop over SASL_SSL with SCRAM-SHA-512."""
    topics = _fresh_topics(secure_broker)
    w = WorkerProcess(secure_broker.bootstrap, topics, tmp_path / "w", f"test-sec-{uuid.uuid4().hex[:8]}",
                      partitions=2, extra_env=secure_broker.client_env)
    w.start()
    try:
        sim = subprocess.run(
            [sys.executable, "-m", "services.cli", "simulate", "--patients", "3", "--synthetic", "--seconds", "120",
             "--speed", "0", "--start-ms", str(T0), "--events", "p-0001=vrun@60:6"],
            env=_env_of(secure_broker, topics), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert sim.returncode == 0, sim.stderr[-3000:]
        sec = secure_broker.security

        def vrun(recs: list) -> bool:
            return any(d["patient_id"] == "p-0001" and d["condition"] == "ventricular_run"
                       and d["action"] == "raised" for _, d in recs)

        alerts = read_until(secure_broker.bootstrap, topics.alerts, vrun, 120, security=sec)
        assert vrun(alerts), (alerts, w.log_tail())
        scores = read_until(secure_broker.bootstrap, topics.scores, lambda r: len(r) >= 200, 60, security=sec)
        assert len(scores) >= 200, (len(scores), w.log_tail())
        assert {d["patient_id"] for _, d in scores} == {"p-0001", "p-0002", "p-0003"}
        assert "SASL_SSL" in (tmp_path / "w" / "worker.log").read_text()
    finally:
        w.stop()


def test_dispatcher_refuses_a_wrong_password(secure_broker: LocalBroker, tmp_path: Path) -> None:
    from services.dispatcher import run_dispatcher
    from services.routing import parse_routing
    from services.settings import DispatcherSettings

    routing = parse_routing({"default_team": "t", "teams": {"t": {"routes": {"default": {
        "primary": {"url": "http://127.0.0.1:9/hook", "secret": "whsec_" + "A" * 32}}}}}})
    kafka = KafkaSettings(bootstrap=secure_broker.bootstrap, topics=_fresh_topics(secure_broker),
                          security=replace(secure_broker.security, sasl_password="wrong"))
    t = time.monotonic()
    with pytest.raises(KafkaAuthError, match="authentication"):
        asyncio.run(run_dispatcher(DispatcherSettings(kafka, routing_file=Path("x")), routing, tokens={}))
    assert time.monotonic() - t < FAIL_FAST_S
