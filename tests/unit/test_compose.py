"""docker-compose.yml agrees with services/settings.py, Prometheus and the local broker pin,
and shows the product: the simulator injects events, the routing file covers its patients,
every webhook has a listener, the console acknowledges with a hashed token, one partition count."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.access import AckPrincipal, TokenBook
from services.routing import Endpoint, RoutingConfig, is_loopback_host, load_routing
from services.settings import ConsoleSettings, DispatcherSettings, KafkaSettings, Topics, WorkerSettings
from services.signing import WebhookSecret
from services.topics import plan

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("worker", "dispatcher", "console", "simulator", "receiver")
KAFKA_CLIENTS = ("worker", "dispatcher", "console", "simulator")  # every app service but the receiver


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _settings_keys() -> set[str]:
    source = (REPO_ROOT / "services" / "settings.py").read_text()
    return set(re.findall(r'"(CARDIOWATCH_[A-Z0-9_]+)"', source))


def _internal_bootstrap(kafka: dict[str, Any]) -> str:
    """host:port of the listener that other containers use (the inter-broker one)."""
    env = _env(kafka)
    name = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    assert name in listeners, f"{name} is advertised but not a listener"
    host, port = advertised[name].rsplit(":", 1)
    assert listeners[name].rsplit(":", 1)[1] == port
    return f"{host}:{port}"


def test_every_cardiowatch_variable_is_read_by_settings(services: dict[str, dict[str, Any]]) -> None:
    known = _settings_keys()
    assert "CARDIOWATCH_BOOTSTRAP" in known  # the grep itself works
    used = {(name, key) for name, svc in services.items() for key in _env(svc)
            if key.startswith("CARDIOWATCH_")}
    assert used, "compose sets no CARDIOWATCH_* variables"
    unknown = sorted(f"{name}: {key}" for name, key in used if key not in known)
    assert unknown == [], f"not read by services/settings.py: {unknown}"


def test_init_service_applies_the_topic_plan_the_worker_and_dispatcher_check(
        services: dict[str, dict[str, Any]]) -> None:
    init = services["kafka-init"]
    assert init["command"] == ["cardiowatch", "topics", "apply"]
    assert init["build"]["dockerfile"] == "deploy/Dockerfile"
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    env = _env(init)
    init_kafka = KafkaSettings.from_env(env)
    assert init_kafka.bootstrap == _internal_bootstrap(services["kafka"])
    # What kafka-init creates is exactly the plan of the worker's and dispatcher's own settings.
    worker = WorkerSettings.from_env(_env(services["worker"]))
    dispatcher = DispatcherSettings.from_env(_env(services["dispatcher"]))
    planned = plan(init_kafka, WorkerSettings.from_env(env).app_id)
    assert planned == plan(worker.kafka, worker.app_id)
    assert [s for s in planned if "dispatcher" in s.used_by] == \
        [s for s in plan(dispatcher.kafka) if "dispatcher" in s.used_by]
    names = [s.name for s in planned]
    assert names[:len(Topics().all())] == Topics().all()
    assert f"{worker.app_id}-ecg-state-changelog" in names
    assert {s.partitions for s in planned if s.role != "internal"} == {KafkaSettings().partitions}
    # one broker: replication 1; the worker may not declare topics, as on a production cluster
    assert {s.replication_factor for s in planned} == {1}
    assert worker.kafka.topic_settings.allow_declare is False


def test_app_services_point_at_the_kafka_internal_listener(services: dict[str, dict[str, Any]]) -> None:
    bootstrap = _internal_bootstrap(services["kafka"])
    assert bootstrap == "kafka:19092"
    for name in KAFKA_CLIENTS:
        env = _env(services[name])
        assert env["CARDIOWATCH_BOOTSTRAP"] == bootstrap, name
        assert KafkaSettings.from_env(env).bootstrap == bootstrap
        assert KafkaSettings.from_env(env).partitions == KafkaSettings().partitions
    # The kafka service really is reachable under that host name.
    assert services["kafka"].get("hostname", "kafka") == bootstrap.split(":")[0]


def test_metrics_ports_match_prometheus_and_settings_defaults(
        services: dict[str, dict[str, Any]]) -> None:
    prom = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    worker = WorkerSettings.from_env(_env(services["worker"]))
    dispatcher = DispatcherSettings.from_env(_env(services["dispatcher"]))
    assert targets == {f"worker:{worker.metrics_port}", f"dispatcher:{dispatcher.metrics_port}"}
    # The compose values are the defaults, so a bare `cardiowatch worker` agrees too.
    assert worker.metrics_port == WorkerSettings(kafka=KafkaSettings()).metrics_port == 9108
    assert dispatcher.metrics_port == 9109
    assert dispatcher.metrics_port == DispatcherSettings(
        kafka=KafkaSettings(), routing_file=Path("x")).metrics_port
    assert str(worker.metrics_port) in services["worker"]["expose"]
    assert str(dispatcher.metrics_port) in services["dispatcher"]["expose"]
    mount = services["prometheus"]["volumes"][0].split(":")
    assert mount[0] == "./deploy/prometheus/prometheus.yml"


def test_app_services_run_the_cli_from_the_project_image(
        services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "worker": ["cardiowatch", "worker"],
        "dispatcher": ["cardiowatch", "dispatch"],
        "console": ["cardiowatch", "console"],
        "simulator": ["cardiowatch", "simulate", "--patients", "20", "--synthetic", "--preset", "demo"],
        "receiver": ["cardiowatch", "receiver"],
    }
    for name, argv in expected.items():
        svc = services[name]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (REPO_ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["command"][:len(argv)] == argv, name
    for name in KAFKA_CLIENTS:
        assert services[name]["depends_on"]["kafka-init"]["condition"] == \
            "service_completed_successfully"
    for name in ("dispatcher", "console"):
        routing = _env(services[name])["CARDIOWATCH_ROUTING_FILE"]
        assert routing.startswith("/app/")
        assert (REPO_ROOT / routing.removeprefix("/app/")).is_file(), routing


# --- what the stack shows: events, routing, listeners, the console, one partition count ---
def _routing(services: dict[str, dict[str, Any]]) -> RoutingConfig:
    """The dispatcher's routing file (the image's /app is the repository root)."""
    path = _env(services["dispatcher"])["CARDIOWATCH_ROUTING_FILE"]
    return load_routing(REPO_ROOT / path.removeprefix("/app/"))


def _simulated(services: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """patient id -> injected events, exactly as the simulator service's command builds them."""
    from services.simulator import build_wearables, parse_args

    command = services["simulator"]["command"]
    assert command[:2] == ["cardiowatch", "simulate"]
    args = parse_args(command[2:])
    assert args.records is None, "the compose simulator streams synthetic patients"
    _, truth = build_wearables(args, 0)
    return truth


def test_simulator_injects_the_demo_events_after_the_worker_has_started(
        services: dict[str, dict[str, Any]]) -> None:
    truth = _simulated(services)
    kinds = {pid: [e["kind"] for e in t["events"]] for pid, t in truth.items() if t["events"]}
    # the demo preset: a ventricular run, a pause and sustained tachycardia, each alerting
    assert sorted(k for evs in kinds.values() for k in evs) == ["pause", "tachy", "vrun"], kinds
    assert len(truth) == 20
    assert services["simulator"]["depends_on"]["worker"]["condition"] == "service_started"
    onset_s = min(e["onset_ts_ms"] - t["start_ts_ms"] for t in truth.values() for e in t["events"]) / 1000
    assert onset_s >= 30, f"events {onset_s:.0f} s in: the worker may still be loading its model"


def test_routing_file_covers_exactly_the_simulators_patients(services: dict[str, dict[str, Any]]) -> None:
    routing = _routing(services)
    truth = _simulated(services)
    assert sorted(routing.patients) == sorted(truth), "routing patients != the simulator's patients"
    team = _env(services["console"])["CARDIOWATCH_CONSOLE_TEAM"]
    assert {routing.team_for(pid).name for pid in truth} == {team}, "the console shows every simulated patient"
    for pid, t in truth.items():  # every alert an injected event raises has a route
        for key in ("high", "medium", "low", "technical"):
            assert routing.route_for(pid, key).primary.url


def _endpoints(routing: RoutingConfig) -> list[Endpoint]:
    out: list[Endpoint] = []
    for team in routing.teams.values():
        for route in team.routes.values():
            out += [route.primary, *([route.failover] if route.failover else []), *route.escalation]
    return out


def _receivers(services: dict[str, dict[str, Any]]) -> dict[int, tuple[str, str]]:
    """port -> (receiver service, its --secret) for receivers in the dispatcher's network."""
    out = {}
    for name, svc in services.items():
        command = svc.get("command") or []
        if command[:2] != ["cardiowatch", "receiver"]:
            continue
        assert svc.get("network_mode") == "service:dispatcher", \
            f"{name}: a webhook to 127.0.0.1 reaches only a receiver in the dispatcher's network"
        opts = dict(zip(command[2::2], command[3::2]))
        assert opts.get("--host", "127.0.0.1") in ("127.0.0.1", "0.0.0.0"), name
        out[int(opts.get("--port", "8801"))] = (name, opts["--secret"])
    return out


def test_every_webhook_the_routing_file_names_has_a_listener_with_its_secret(
        services: dict[str, dict[str, Any]]) -> None:
    from urllib.parse import urlparse

    listeners = _receivers(services)
    assert listeners, "no receiver service"
    endpoints = _endpoints(_routing(services))
    assert len(endpoints) >= 3
    for ep in endpoints:
        u = urlparse(ep.url)
        assert is_loopback_host(u.hostname), f"{ep.name}: {ep.url} is not the dispatcher's own network"
        assert u.port in listeners, f"{ep.name}: nothing listens on port {u.port} ({ep.url})"
        assert ep.secret.key == WebhookSecret.parse(listeners[u.port][1]).key, \
            f"{ep.name}: signed with another secret than {listeners[u.port][0]} verifies with"


def test_the_receivers_command_accepts_what_the_dispatcher_signs_for_each_route(
        services: dict[str, dict[str, Any]]) -> None:
    """The same receiver, started here as the compose service starts it (on a free port)."""
    import asyncio
    import json
    import time
    from urllib.parse import urlparse

    import aiohttp

    from services.receiver import WebhookReceiver
    from services.signing import signature_headers

    listeners = _receivers(services)
    endpoints = _endpoints(_routing(services))

    async def deliver_all() -> list[tuple[str, int]]:
        statuses = []
        for port, (_, secret) in listeners.items():
            async with WebhookReceiver(secret, port=0) as rec, aiohttp.ClientSession() as http:
                for i, ep in enumerate(e for e in endpoints if urlparse(e.url).port == port):
                    body = json.dumps({"patient_id": "p-0002", "condition": "ventricular_run"}).encode()
                    headers = signature_headers(ep.secret, f"msg_{i}", int(time.time()), body)
                    url = f"http://127.0.0.1:{rec.port}{urlparse(ep.url).path}"
                    async with http.post(url, data=body, headers={**headers, "content-type": "application/json"},
                                         timeout=aiohttp.ClientTimeout(total=10)) as r:
                        statuses.append((ep.name, r.status))
                assert rec.rejected == 0
        return statuses

    statuses = asyncio.run(deliver_all())
    assert len(statuses) == len(endpoints)
    assert [s for s in statuses if s[1] != 200] == []


def _documented_token(text: str) -> tuple[str, str]:
    """(user, token) from docker-compose.yml's header: 'Acknowledge as USER with the token TOKEN'."""
    flat = re.sub(r"\n#\s*", " ", text)
    m = re.search(r"Acknowledge as (\S+) with the token (\S+?)[:;,.]?\s", flat)
    assert m, "docker-compose.yml does not say which token to acknowledge with"
    return m.group(1), m.group(2)


def test_console_acknowledges_through_the_dispatchers_ack_api_with_a_hashed_token(
        services: dict[str, dict[str, Any]]) -> None:
    console_env = _env(services["console"])
    dispatcher_env = _env(services["dispatcher"])
    console = ConsoleSettings.from_env(console_env)
    dispatcher = DispatcherSettings.from_env(dispatcher_env)
    # the buttons reach the ack API: the dispatcher's service name and ack port, on all interfaces
    assert console.ack_api_url == f"http://dispatcher:{dispatcher.ack_port}"
    assert dispatcher.bind_host == "0.0.0.0"
    assert services["console"]["depends_on"]["dispatcher"]["condition"] == "service_started"
    # one routing file: the dispatcher checks tokens with it, the console picks its ward by it
    assert console.routing_file == dispatcher.routing_file
    # the page is published on the host's loopback only
    assert console.bind_host == "0.0.0.0"
    assert services["console"]["ports"] == [f"127.0.0.1:{console.port}:{console.port}"]
    # the documented demo token is stored hashed, for the console's team
    routing = _routing(services)
    user, token = _documented_token((REPO_ROOT / "docker-compose.yml").read_text())
    assert TokenBook(routing.tokens).lookup(token) == AckPrincipal(user, console.team or "")
    routing_text = (REPO_ROOT / str(dispatcher.routing_file).removeprefix("/app/")).read_text()
    assert token not in routing_text, "the routing file must hold the token's hash only"
    # the old plain token file is refused at start
    assert all("CARDIOWATCH_ACK_TOKENS_FILE" not in _env(svc) for svc in services.values())


def test_the_partition_count_is_one_setting_for_every_service(
        compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    assert len(re.findall(r"^\s*CARDIOWATCH_PARTITIONS:", text, flags=re.MULTILINE)) == 1, \
        "CARDIOWATCH_PARTITIONS must be set once (x-kafka-env), not per service"
    shared = compose["x-kafka-env"]["CARDIOWATCH_PARTITIONS"]
    users = [n for n, svc in services.items() if (svc.get("command") or [None])[0] == "cardiowatch"
             and svc["command"][1] != "receiver"]
    assert set(users) == {"kafka-init", *KAFKA_CLIENTS}
    for name in users:
        assert _env(services[name]).get("CARDIOWATCH_PARTITIONS") == shared, name
        assert KafkaSettings.from_env(_env(services[name])).partitions == int(shared), name
    assert "CARDIOWATCH_PARTITIONS" not in (REPO_ROOT / "docker-compose.secure.yml").read_text()


def test_kafka_image_matches_the_local_broker_pin(services: dict[str, dict[str, Any]]) -> None:
    pom = (REPO_ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    assert services["kafka"]["image"] == f"apache/kafka:{version}"
    env = _env(services["kafka"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_dockerfile_installs_the_repo_with_the_lock() -> None:
    text = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, flags=re.MULTILINE)
    assert re.search(r"pip install -c requirements\.lock \.", text)
    assert "COPY pyproject.toml requirements.lock" in text


# --- the secured variant: docker-compose.secure.yml on top of docker-compose.yml ----------
@pytest.fixture(scope="module")
def secure() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.secure.yml").read_text())["services"]


def _listeners(env: dict[str, str], key: str) -> dict[str, str]:
    return dict(item.split("://", 1) for item in env[key].split(","))


def test_secure_variant_services_log_in_with_settings_keys(
        services: dict[str, dict[str, Any]], secure: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    import subprocess

    # a real CA file and password file where the containers would have theirs
    ca, pw = tmp_path / "ca.pem", tmp_path / "client.password"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=t",
                    "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)], check=True, capture_output=True)
    pw.write_text("pw\n")
    known = _settings_keys()
    clients = [n for n, svc in services.items() if "CARDIOWATCH_BOOTSTRAP" in _env(svc) and n != "kafka-init"]
    assert sorted(clients) == sorted(KAFKA_CLIENTS)
    for name in clients:
        assert name in secure, f"{name} talks to Kafka but docker-compose.secure.yml leaves it plaintext"
        env = {**_env(services[name]), **_env(secure[name])}  # compose merges environment by key
        unknown = [k for k in env if k.startswith("CARDIOWATCH_") and k not in known]
        assert unknown == [], (name, unknown)
        mounts = {v.split(":")[1]: v.split(":")[0] for v in secure[name]["volumes"]}
        for key in ("CARDIOWATCH_KAFKA_SSL_CAFILE", "CARDIOWATCH_KAFKA_SASL_PASSWORD_FILE"):
            assert mounts.get(str(Path(env[key]).parent)) == "kafka-client-tls", (name, key)
        env["CARDIOWATCH_KAFKA_SSL_CAFILE"], env["CARDIOWATCH_KAFKA_SASL_PASSWORD_FILE"] = str(ca), str(pw)
        k = KafkaSettings.from_env(env)
        assert k.bootstrap == _internal_bootstrap(services["kafka"]) == "kafka:19092"
        sec = k.security
        assert (sec.protocol, sec.sasl_mechanism, sec.sasl_username, sec.sasl_password) == \
            ("SASL_SSL", "SCRAM-SHA-512", "cardiowatch", "pw")
        assert sec.ssl_check_hostname


def test_secure_variant_broker_has_no_plaintext_client_listener(
        services: dict[str, dict[str, Any]], secure: dict[str, dict[str, Any]]) -> None:
    env = {**_env(services["kafka"]), **_env(secure["kafka"])}
    listeners = _listeners(env, "KAFKA_LISTENERS")
    advertised = _listeners(env, "KAFKA_ADVERTISED_LISTENERS")
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols)
    assert {n: p for n, p in protocols.items() if p != "SASL_SSL"} == {env["KAFKA_CONTROLLER_LISTENER_NAMES"]:
                                                                       "PLAINTEXT"}
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    inter = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert advertised[inter] == "kafka:19092" and listeners[inter].endswith(":19092")
    # the image loads the keystore only when an advertised listener reads "...SSL://"
    assert all(f"{n}://" in env["KAFKA_ADVERTISED_LISTENERS"] and n.endswith("SSL") for n in advertised)
    assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] in env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    assert "SCRAM-SHA-512" in env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    # every file the broker is told about is one compose-certs.sh writes
    script = (REPO_ROOT / "deploy" / "kafka" / "compose-certs.sh").read_text()
    for f in (env["KAFKA_SSL_KEYSTORE_FILENAME"], env["KAFKA_SSL_KEYSTORE_CREDENTIALS"],
              Path(env["KAFKA_OPTS"].split("=", 1)[1]).name, Path(env["KAFKA_SSL_TRUSTSTORE_LOCATION"]).name):
        assert f in script, f
    certs = secure["kafka-certs"]
    assert certs["image"] == services["kafka"]["image"]
    assert (REPO_ROOT / certs["volumes"][0].split(":")[0]).is_file()
    assert secure["kafka"]["depends_on"]["kafka-certs"]["condition"] == "service_completed_successfully"


def test_secure_variant_creates_the_scram_user_then_applies_the_plan_over_sasl_ssl(
        services: dict[str, dict[str, Any]], secure: dict[str, dict[str, Any]]) -> None:
    users = secure["kafka-users"]
    assert users["image"] == services["kafka"]["image"]  # the Kafka CLI lives there
    script = "\n".join(users["command"])
    user = _env(secure["worker"])["CARDIOWATCH_KAFKA_SASL_USERNAME"]
    mech = _env(secure["worker"])["CARDIOWATCH_KAFKA_SASL_MECHANISM"]
    assert f"--entity-type users --entity-name {user}" in script
    assert f"{mech}=[password=$$(cat /etc/kafka/client/client.password)]" in script
    assert "--command-config /etc/kafka/secrets/admin.properties" in script
    init = secure["kafka-init"]
    assert "command" not in init, "kafka-init keeps the base file's `cardiowatch topics apply`"
    assert services["kafka-init"]["command"] == ["cardiowatch", "topics", "apply"]
    assert init["depends_on"]["kafka-users"]["condition"] == "service_completed_successfully"
    assert _env(init) == _env(secure["worker"]) and init["volumes"] == secure["worker"]["volumes"]
