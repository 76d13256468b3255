"""Webhooks over HTTPS: delivery verifies the receiver against the route's CA file, fails
clearly against an untrusted certificate, and no secret reaches a log or an error.

Certificates come from the ``openssl`` command (a throwaway CA per test session). The
TLS tests need no broker; the log grep of a whole dispatcher run does."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.dispatcher import AiohttpPoster, deliver, delivery_failure_alert, log_behind, open_log_reader, \
    run_dispatcher
from services.receiver import WebhookReceiver
from services.routing import RoutingConfig, RoutingConfigError, parse_routing
from services.settings import DispatcherSettings, KafkaSettings, Topics
from streaming.events import AlertEvent
from streaming.metrics import DispatcherMetrics

KEY = b"tls-test-signing-key-0123456789"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
URL_SECRET = "T0SECRETPATHxyz987"  # a webhook URL's path is often itself the credential
PASSWORD = "pa55wordInUrl42"
FAST_RETRY = {"max_attempts": 2, "base_backoff_s": 0.01, "max_backoff_s": 0.05, "total_budget_s": 5}


@dataclass(frozen=True)
class Certs:
    ca: Path          # the CA that signed the server certificate
    other_ca: Path    # an unrelated CA
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        return ctx


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    _make_ca(d, "test-ca")
    _make_ca(d, "other-ca")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "test-ca.pem", "-CAkey", "test-ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return Certs(d / "test-ca.pem", d / "other-ca.pem", d / "server.pem", d / "server.key")


def _alert(patient: str = "p1", seq: int = 1) -> AlertEvent:
    onset = 1_700_000_000_000 + seq * 1000
    return AlertEvent(alert_id=f"{patient}:vt:{onset}", revision=1, action="raised", patient_id=patient,
                      device_id="d", condition="ventricular_tachycardia", category="physiological",
                      priority="high", onset_ts_ms=onset, detected_ts_ms=onset + 500, rule="test")


def _routing(url: str, **ep: Any) -> RoutingConfig:
    return parse_routing({"default_team": "c", "teams": {"c": {"retry": FAST_RETRY, "routes": {
        "default": {"primary": {"url": url, "secret": SECRET, "timeout_s": 2, **ep}}}}}})


def _secret_forms() -> list[str]:
    b64 = base64.b64encode(KEY).decode()
    return [SECRET, b64, b64.rstrip("="), KEY.hex(), KEY.decode(), URL_SECRET, PASSWORD]


def _assert_no_secret(text: str, where: str) -> None:
    for s in _secret_forms():
        assert s not in text, f"{where} carries a secret ({s[:4]}...): {text[:2000]}"


# ------------------------------------------------------------------- routing rules

@pytest.mark.parametrize("url", ["http://127.0.0.1:9/h", "http://localhost:9/h", "http://[::1]:9/h",
                                 "http://127.8.9.10/h", "https://hooks.example.org/h"])
def test_https_or_loopback_is_accepted(url: str) -> None:
    assert _routing(url).route_for("p", "high").primary.url == url


def test_plain_http_to_another_host_is_refused_unless_the_route_allows_it() -> None:
    url = f"http://hooks.example.org/{URL_SECRET}"
    with pytest.raises(RoutingConfigError) as e:
        _routing(url)
    assert e.value.path == "teams.c.routes.default.primary.url" and "allow_insecure_http" in str(e.value)
    assert URL_SECRET not in str(e.value) and "hooks.example.org" in str(e.value)
    assert _routing(url, allow_insecure_http=True).route_for("p", "x").primary.allow_insecure_http
    route_wide = parse_routing({"default_team": "c", "teams": {"c": {"routes": {"default": {
        "allow_insecure_http": True, "primary": {"url": url, "secret": SECRET},
        "escalation": [{"url": "http://pager.example.org/x", "secret": SECRET}]}}}}})
    assert route_wide.route_for("p", "x").escalation[0].allow_insecure_http
    with pytest.raises(RoutingConfigError, match="true or false"):
        _routing(url, allow_insecure_http="yes")


def test_ca_file_is_checked_when_the_routing_loads(certs: Certs, tmp_path: Path) -> None:
    ok = _routing("https://127.0.0.1:9/h", ca_file=str(certs.ca))
    assert ok.route_for("p", "x").primary.ca_file == certs.ca
    (tmp_path / "junk.pem").write_text("not a certificate")
    for bad in (tmp_path / "junk.pem", tmp_path / "missing.pem"):
        with pytest.raises(RoutingConfigError) as e:
            _routing("https://127.0.0.1:9/h", ca_file=str(bad))
        assert e.value.path == "teams.c.routes.default.primary.ca_file" and str(bad) in str(e.value)
    with pytest.raises(RoutingConfigError, match="https:// URLs only"):
        _routing("http://127.0.0.1:9/h", ca_file=str(certs.ca))


def test_bad_secret_errors_show_no_secret_characters() -> None:
    for bad in ("whsec_!!notbase64!!" + URL_SECRET, URL_SECRET + "-no-prefix", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(RoutingConfigError) as e:
            _routing("https://127.0.0.1:9/h", secret=bad)
        assert URL_SECRET[:4] not in str(e.value) and "!!" not in str(e.value)


# ------------------------------------------------------------------- TLS delivery

def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_delivery_verifies_against_the_routes_ca_file(certs: Certs) -> None:
    async def go() -> None:
        async with WebhookReceiver(SECRET, ssl_context=certs.server_context()) as rec:
            assert rec.url.startswith("https://")
            poster = AiohttpPoster()
            try:
                res = await deliver(_alert(), _routing(rec.url, ca_file=str(certs.ca)), poster,
                                    DispatcherMetrics(CollectorRegistry()))
            finally:
                await poster.aclose()
            assert res.outcome == "delivered", res.reasons
            assert [a.body["alert_id"] for a in rec.received] == [_alert().alert_id]  # signature verified
    _run(go())


@pytest.mark.parametrize("which", ["system store", "another CA"])
def test_delivery_fails_clearly_against_an_untrusted_certificate(certs: Certs, which: str) -> None:
    extra = {} if which == "system store" else {"ca_file": str(certs.other_ca)}

    async def go() -> None:
        async with WebhookReceiver(SECRET, ssl_context=certs.server_context()) as rec:
            poster = AiohttpPoster()
            try:
                res = await deliver(_alert(), _routing(rec.url, **extra), poster,
                                    DispatcherMetrics(CollectorRegistry()))
            finally:
                await poster.aclose()
            assert res.outcome == "deadlettered" and rec.received == []
            assert rec.requests == 0  # nothing was sent to the untrusted server
            assert all("TLS certificate not trusted" in r for r in res.reasons if "attempt" in r), res.reasons
            assert any("certificate verify failed" in r or "unable to get local issuer" in r
                       for r in res.reasons), res.reasons
    _run(go())


def test_no_secret_in_the_logs_or_reasons_of_failing_deliveries(
        certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    """Every failure path (untrusted TLS, refused connection, HTTP 500) with a secret in the
    URL path and user info: the logs at DEBUG, the reasons and the ops alert stay clean."""
    caplog.set_level(logging.DEBUG)

    async def go() -> list[str]:
        texts: list[str] = []
        async with WebhookReceiver(SECRET, ssl_context=certs.server_context()) as tls, \
                WebhookReceiver(SECRET, mode="500") as five, WebhookReceiver(SECRET, mode="down") as down:
            urls = [f"{tls.url}/{URL_SECRET}", f"{five.url}/{URL_SECRET}?token={URL_SECRET}",
                    f"http://user:{PASSWORD}@127.0.0.1:{down.port}/{URL_SECRET}"]
            for url in urls:
                poster = AiohttpPoster()
                try:
                    ev = _alert()
                    res = await deliver(ev, _routing(url), poster, DispatcherMetrics(CollectorRegistry()))
                finally:
                    await poster.aclose()
                assert res.outcome == "deadlettered"
                texts += list(res.reasons)
                texts.append(delivery_failure_alert(ev, res.reasons, 0).to_json().decode())
                texts.append(repr(_routing(url)))
        return texts

    texts = _run(go())
    assert any("HTTP 500" in t for t in texts) and any("not trusted" in t for t in texts)
    for t in texts:
        _assert_no_secret(t, "a delivery reason")
    _assert_no_secret(caplog.text, "the log")


def test_transport_errors_that_quote_the_url_or_key_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    """A transport whose errors quote the request URL (user info, secret path, query) and
    the key: the delivery reasons and the ops alert keep only scheme, host and port."""
    caplog.set_level(logging.DEBUG)
    url = f"https://user:{PASSWORD}@hooks.example.org:8443/{URL_SECRET}?sig={URL_SECRET}"

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {url} (key {base64.b64encode(KEY).decode()}, {KEY.hex()})",
                                 request=request)

    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await deliver(_alert(), _routing(url), client, DispatcherMetrics(CollectorRegistry()))

    res = _run(go())
    assert res.outcome == "deadlettered" and len(res.reasons) == 2
    assert all("https://hooks.example.org:8443/..." in r for r in res.reasons), res.reasons
    for t in [*res.reasons, delivery_failure_alert(_alert(), res.reasons, 0).to_json().decode(), caplog.text]:
        _assert_no_secret(t, "a delivery reason")


# ------------------------------------------------------------------- a dispatcher run

@pytest.mark.integration
def test_no_secret_in_the_logs_of_a_dispatcher_run(
        kafka_broker: Any, make_topics: Callable[..., Topics], certs: Certs,
        caplog: pytest.LogCaptureFixture) -> None:
    """A whole dispatcher run whose primary has an untrusted certificate and whose failover
    answers 500: the dead letter, the delivery_failure alert, and every log line at DEBUG
    (aiokafka's and aiohttp's included) are grepped for every form of every secret."""
    caplog.set_level(logging.DEBUG)
    topics = make_topics(1)

    async def go() -> tuple[list[bytes], list[bytes]]:
        async with WebhookReceiver(SECRET, ssl_context=certs.server_context()) as tls, \
                WebhookReceiver(SECRET, mode="500") as five, WebhookReceiver(SECRET) as ops:
            routing = parse_routing({"default_team": "c", "ops_team": "ops", "teams": {
                "c": {"retry": FAST_RETRY, "routes": {"default": {
                    "primary": {"url": f"{tls.url}/{URL_SECRET}", "secret": SECRET, "ca_file": str(certs.other_ca)},
                    "failover": {"url": f"http://u:{PASSWORD}@127.0.0.1:{five.port}/{URL_SECRET}",
                                 "secret": SECRET}}}},
                "ops": {"retry": FAST_RETRY, "routes": {"default": {"primary": {"url": ops.url, "secret": SECRET}}}}}})
            settings = DispatcherSettings(KafkaSettings(bootstrap=kafka_broker.bootstrap, topics=topics),
                                          routing_file=Path("unused"), group_id=f"g-{topics.alerts}", ack_port=0)
            stop, ready = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(run_dispatcher(settings, routing, stop=stop,
                                                      metrics=DispatcherMetrics(CollectorRegistry()),
                                                      on_ready=lambda _api: ready.set()))
            await asyncio.wait_for(ready.wait(), 60)
            p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
            await p.start()
            await p.send_and_wait(topics.alerts, _alert().to_json(), key=b"p1")
            await p.stop()
            deadline = time.monotonic() + 30
            while not ops.received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 30)
            assert ops.received and ops.received[0].body["condition"] == "delivery_failure"
            out: list[list[bytes]] = []
            for topic in (topics.alerts_deadletter, topics.alerts):
                reader, tps = await open_log_reader(kafka_broker.bootstrap, [topic])
                try:
                    end = await reader.end_offsets(tps)
                    vals: list[bytes] = []
                    while await log_behind(reader, end):
                        for rs in (await reader.getmany(timeout_ms=500)).values():
                            vals += [r.value for r in rs]
                finally:
                    await reader.stop()
                out.append(vals)
            return out[0], out[1]

    deadletters, alerts = _run(go())
    assert len(deadletters) == 1
    reasons = json.loads(deadletters[0])["reasons"]
    assert any("not trusted" in r for r in reasons) and any("HTTP 500" in r for r in reasons), reasons
    for v in deadletters + alerts:
        _assert_no_secret(v.decode(), "a record")
    for v in deadletters:  # the dead letter's copy of the alert is base64: look inside it too
        _assert_no_secret(base64.b64decode(json.loads(v)["raw_b64"]).decode(), "a dead letter's alert")
    assert "all routes failed" in caplog.text
    _assert_no_secret(caplog.text, "the dispatcher's log")
