"""Settings: one frozen dataclass per process, built once from ``CARDIOWATCH_*`` at the edge.

Nothing else in the code base reads ``os.environ``; processes build their settings here
and pass them on explicitly. Every error names the offending key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.errors import CardiowatchError
from streaming.kafka_security import KafkaSecurity, KafkaSecurityError

__all__ = [
    "SettingsError",
    "Topics",
    "TopicSettings",
    "KafkaSettings",
    "kafka_security_from_env",
    "without_kafka_security",
    "KAFKA_SECURITY_KEYS",
    "WorkerSettings",
    "DispatcherSettings",
    "ConsoleSettings",
    "SimulatorSettings",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_HR_MODEL_DIR",
    "RUNTIMES",
    "REPO_ROOT",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "pretrained" / "ecg-lstm-ae"
DEFAULT_HR_MODEL_DIR = REPO_ROOT / "models" / "pretrained" / "hr-lstm-ae"
RUNTIMES = ("keras", "tflite", "tflite-int8")


class SettingsError(CardiowatchError, ValueError):
    """A setting is missing or has a bad value; the message names the key."""


def _get(env: Mapping[str, str], key: str, default: str) -> str:
    return env.get(key, default)


def _int(env: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{key} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{key} must be in [{lo}, {hi}], got {value}")
    return value


def _float(env: Mapping[str, str], key: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{key} must be in [{lo}, {hi}], got {value}")
    return value


@dataclass(frozen=True)
class Topics:
    """Kafka topic names. Raw topics are keyed by patient id."""

    ecg: str = "cardiowatch.ecg.raw"
    hr: str = "cardiowatch.hr.raw"
    scores: str = "cardiowatch.scores"
    alerts: str = "cardiowatch.alerts"
    deadletter: str = "cardiowatch.deadletter"
    alerts_deadletter: str = "cardiowatch.alerts.deadletter"
    acks: str = "cardiowatch.acks"
    # the dispatcher's compacted alert state (key = alert id, latest state; see services.alert_state)
    alert_state: str = "cardiowatch.alerts.state"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Topics:
        d = cls()
        return cls(
            ecg=_get(env, "CARDIOWATCH_TOPIC_ECG", d.ecg),
            hr=_get(env, "CARDIOWATCH_TOPIC_HR", d.hr),
            scores=_get(env, "CARDIOWATCH_TOPIC_SCORES", d.scores),
            alerts=_get(env, "CARDIOWATCH_TOPIC_ALERTS", d.alerts),
            deadletter=_get(env, "CARDIOWATCH_TOPIC_DEADLETTER", d.deadletter),
            alerts_deadletter=_get(env, "CARDIOWATCH_TOPIC_ALERTS_DEADLETTER", d.alerts_deadletter),
            acks=_get(env, "CARDIOWATCH_TOPIC_ACKS", d.acks),
            alert_state=_get(env, "CARDIOWATCH_TOPIC_ALERT_STATE", d.alert_state),
        )

    def all(self) -> list[str]:
        return [self.ecg, self.hr, self.scores, self.alerts, self.deadletter,
                self.alerts_deadletter, self.acks, self.alert_state]


# --- Kafka security (TLS, mutual TLS, SASL) ------------------------------------------
# KafkaSecurity field -> the setting that fills it; errors from KafkaSecurity name a
# field and are re-raised here naming the key.
KAFKA_SECURITY_KEYS: dict[str, str] = {
    "protocol": "CARDIOWATCH_KAFKA_SECURITY_PROTOCOL",
    "ssl_cafile": "CARDIOWATCH_KAFKA_SSL_CAFILE",
    "ssl_certfile": "CARDIOWATCH_KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "CARDIOWATCH_KAFKA_SSL_KEYFILE",
    "ssl_key_password": "CARDIOWATCH_KAFKA_SSL_KEY_PASSWORD",
    "ssl_check_hostname": "CARDIOWATCH_KAFKA_SSL_CHECK_HOSTNAME",
    "sasl_mechanism": "CARDIOWATCH_KAFKA_SASL_MECHANISM",
    "sasl_username": "CARDIOWATCH_KAFKA_SASL_USERNAME",
    "sasl_password": "CARDIOWATCH_KAFKA_SASL_PASSWORD",
}
_SASL_PASSWORD_FILE = "CARDIOWATCH_KAFKA_SASL_PASSWORD_FILE"
_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def _keys_named(message: str) -> str:
    """``message`` with the KafkaSecurity field names replaced by their setting keys."""
    return re.sub(r"\b(" + "|".join(KAFKA_SECURITY_KEYS) + r")\b",
                  lambda m: KAFKA_SECURITY_KEYS[m.group(1)], message)


def without_kafka_security(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less every Kafka security setting: the environment of a child process
    that talks to a plaintext broker of its parent's own (demo, bench)."""
    drop = {*KAFKA_SECURITY_KEYS.values(), _SASL_PASSWORD_FILE}
    return {k: v for k, v in env.items() if k not in drop}


def kafka_security_from_env(env: Mapping[str, str]) -> KafkaSecurity:
    """The Kafka client security settings from ``CARDIOWATCH_KAFKA_*`` (plaintext when
    none is set).

    The TLS files are loaded here once, so a process with a bad CA, certificate or key
    refuses to start instead of failing on its first connection.

    Raises
    ------
    SettingsError
        Missing, contradictory or unreadable settings, naming the key.
    """
    def opt(key: str) -> str | None:
        value = env.get(key, "").strip()
        return value or None

    k = KAFKA_SECURITY_KEYS
    password = env.get(k["sasl_password"]) or None
    password_file = opt(_SASL_PASSWORD_FILE)
    if password_file is not None:
        if password is not None:
            raise SettingsError(f"set one of {k['sasl_password']} and {_SASL_PASSWORD_FILE}, not both")
        try:
            password = Path(password_file).read_text().rstrip("\r\n") or None
        except OSError as exc:
            raise SettingsError(f"{_SASL_PASSWORD_FILE} {password_file!r} cannot be read: "
                                f"{exc.strerror}") from None
        if password is None:
            raise SettingsError(f"{_SASL_PASSWORD_FILE} {password_file!r} is empty")
    check_raw = (opt(k["ssl_check_hostname"]) or "true").lower()
    if check_raw not in _BOOLS:
        raise SettingsError(f"{k['ssl_check_hostname']} must be true or false, got {check_raw!r}")

    def path(key: str) -> Path | None:
        value = opt(key)
        return Path(value) if value else None

    protocol = (opt(k["protocol"]) or "PLAINTEXT").upper()
    mechanism = opt(k["sasl_mechanism"])
    try:
        sec = KafkaSecurity(
            protocol=protocol,  # type: ignore[arg-type]  # checked by KafkaSecurity
            ssl_cafile=path(k["ssl_cafile"]),
            ssl_certfile=path(k["ssl_certfile"]),
            ssl_keyfile=path(k["ssl_keyfile"]),
            ssl_key_password=env.get(k["ssl_key_password"]) or None,
            ssl_check_hostname=_BOOLS[check_raw],
            sasl_mechanism=mechanism.upper() if mechanism else None,  # type: ignore[arg-type]
            sasl_username=opt(k["sasl_username"]),
            sasl_password=password,
        )
        sec.ssl_context  # load the files now: refuse to start on a bad one
    except KafkaSecurityError as exc:
        hint = f" (or {_SASL_PASSWORD_FILE})" if exc.field == "sasl_password" else ""
        raise SettingsError(_keys_named(exc.detail) + hint) from None
    return sec
def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None:
        return default
    value = _BOOLS.get(raw.strip().lower())
    if value is None:
        raise SettingsError(f"{key} must be one of 1/0/true/false/yes/no/on/off, got {raw!r}")
    return value


@dataclass(frozen=True)
class TopicSettings:
    """How the project's topics are laid out on the cluster (``cardiowatch topics``).

    The defaults fit the single local broker (``cardiowatch broker``, the demo, the
    tests); a production cluster sets replication 3, min ISR 2 and
    ``CARDIOWATCH_TOPIC_ALLOW_DECLARE=0`` (topics are created by ``cardiowatch topics
    apply``, or by the platform team from ``cardiowatch topics plan``).
    """

    replication_factor: int = 1
    min_insync_replicas: int = 1
    # delete-policy topics (raw, outputs, dead letters, acks); state changelogs are compacted
    retention_hours: int = 168
    # may the worker create missing topics itself (and Faust declare its internal ones)?
    allow_declare: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TopicSettings:
        rf = _int(env, "CARDIOWATCH_REPLICATION_FACTOR", cls.replication_factor, 1, 32)
        min_isr = _int(env, "CARDIOWATCH_MIN_INSYNC_REPLICAS", cls.min_insync_replicas, 1, 32)
        if min_isr > rf:
            raise SettingsError(f"CARDIOWATCH_MIN_INSYNC_REPLICAS must be <= CARDIOWATCH_REPLICATION_FACTOR "
                                f"({rf}), got {min_isr}")
        return cls(
            replication_factor=rf,
            min_insync_replicas=min_isr,
            retention_hours=_int(env, "CARDIOWATCH_RETENTION_HOURS", cls.retention_hours, 1, 87_600),
            allow_declare=_bool(env, "CARDIOWATCH_TOPIC_ALLOW_DECLARE", cls.allow_declare),
        )


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:9092"
    partitions: int = 8
    topics: Topics = field(default_factory=Topics)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # the start-up probe's bound (services call streaming.kafka_security.check_connection)
    connect_timeout_s: float = 15.0
    topic_settings: TopicSettings = field(default_factory=TopicSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        env = os.environ if env is None else env
        bootstrap = _get(env, "CARDIOWATCH_BOOTSTRAP", cls.bootstrap)
        if not bootstrap or any(":" not in hp for hp in bootstrap.split(",")):
            raise SettingsError(f"CARDIOWATCH_BOOTSTRAP must be host:port[,host:port], got {bootstrap!r}")
        return cls(
            bootstrap=bootstrap,
            partitions=_int(env, "CARDIOWATCH_PARTITIONS", cls.partitions, 1, 1024),
            topics=Topics.from_env(env),
            security=kafka_security_from_env(env),
            connect_timeout_s=_float(env, "CARDIOWATCH_KAFKA_CONNECT_TIMEOUT_S", cls.connect_timeout_s,
                                     1.0, 600.0),
            topic_settings=TopicSettings.from_env(env),
        )


@dataclass(frozen=True)
class WorkerSettings:
    kafka: KafkaSettings
    model_dir: Path = DEFAULT_MODEL_DIR
    app_id: str = "cardiowatch-worker"
    data_dir: Path = Path(".cache/worker")
    metrics_port: int = 9108
    batch_max: int = 512
    batch_within_s: float = 0.2
    policy_file: Path | None = None
    hr_model_dir: Path | None = DEFAULT_HR_MODEL_DIR
    runtime: str = "keras"
    web_bind: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        model_dir = Path(_get(env, "CARDIOWATCH_MODEL_DIR", str(DEFAULT_MODEL_DIR)))
        policy = env.get("CARDIOWATCH_POLICY_FILE")
        hr_dir = env.get("CARDIOWATCH_HR_MODEL_DIR", str(DEFAULT_HR_MODEL_DIR))
        runtime = _get(env, "CARDIOWATCH_RUNTIME", cls.runtime)
        if runtime not in RUNTIMES:
            raise SettingsError(f"CARDIOWATCH_RUNTIME must be one of {RUNTIMES}, got {runtime!r}")
        return cls(
            kafka=KafkaSettings.from_env(env),
            model_dir=model_dir,
            app_id=_get(env, "CARDIOWATCH_APP_ID", cls.app_id),
            data_dir=Path(_get(env, "CARDIOWATCH_DATA_DIR", str(cls.data_dir))),
            metrics_port=_int(env, "CARDIOWATCH_METRICS_PORT", cls.metrics_port, 0, 65535),
            batch_max=_int(env, "CARDIOWATCH_BATCH_MAX", cls.batch_max, 1, 100_000),
            batch_within_s=_float(env, "CARDIOWATCH_BATCH_WITHIN_S", cls.batch_within_s, 0.001, 10.0),
            policy_file=Path(policy) if policy else None,
            hr_model_dir=Path(hr_dir) if hr_dir else None,
            runtime=runtime,
            web_bind=_get(env, "CARDIOWATCH_WEB_BIND", cls.web_bind),
        )


@dataclass(frozen=True)
class DispatcherSettings:
    kafka: KafkaSettings
    routing_file: Path
    group_id: str = "cardiowatch-dispatcher"
    metrics_port: int = 9109
    ack_port: int = 8088
    ack_tokens_file: Path | None = None
    bind_host: str = "127.0.0.1"
    # memory bounds: alert bytes held while waiting (past it they are parked as offsets),
    # and unfinished records before fetching pauses
    held_mib: int = 64
    max_in_flight: int = 200_000
    # circuit breaker: failures in a row that open an endpoint, and for how long
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    # a finished alert (resolved, or acknowledged and cleared) is forgotten this long after
    # it finished; open and unacknowledged alerts never are
    alert_retention_hours: float = 24.0
    # the start-up rebuild must reach the end of what it reads in this time, or start-up fails
    rebuild_timeout_s: float = 30.0
    # ... and the whole-log replay (a cluster without alert state yet) may hold at most this many records
    rebuild_max_records: int = 1_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DispatcherSettings:
        env = os.environ if env is None else env
        routing = env.get("CARDIOWATCH_ROUTING_FILE")
        if not routing:
            raise SettingsError("CARDIOWATCH_ROUTING_FILE must name the routing YAML file, got nothing")
        tokens = env.get("CARDIOWATCH_ACK_TOKENS_FILE")
        return cls(
            kafka=KafkaSettings.from_env(env),
            routing_file=Path(routing),
            group_id=_get(env, "CARDIOWATCH_DISPATCHER_GROUP", cls.group_id),
            metrics_port=_int(env, "CARDIOWATCH_DISPATCHER_METRICS_PORT", cls.metrics_port, 0, 65535),
            ack_port=_int(env, "CARDIOWATCH_ACK_PORT", cls.ack_port, 0, 65535),
            ack_tokens_file=Path(tokens) if tokens else None,
            bind_host=_get(env, "CARDIOWATCH_DISPATCHER_BIND", cls.bind_host),
            held_mib=_int(env, "CARDIOWATCH_DISPATCH_HELD_MIB", cls.held_mib, 1, 1_000_000),
            max_in_flight=_int(env, "CARDIOWATCH_DISPATCH_MAX_IN_FLIGHT", cls.max_in_flight, 1, 100_000_000),
            breaker_failures=_int(env, "CARDIOWATCH_DISPATCH_BREAKER_FAILURES", cls.breaker_failures, 1, 1000),
            breaker_cooldown_s=_float(env, "CARDIOWATCH_DISPATCH_BREAKER_COOLDOWN_S", cls.breaker_cooldown_s,
                                      0.1, 86_400.0),
            alert_retention_hours=_float(env, "CARDIOWATCH_ALERT_RETENTION_HOURS", cls.alert_retention_hours,
                                         0.001, 87_600.0),
            rebuild_timeout_s=_float(env, "CARDIOWATCH_DISPATCH_REBUILD_TIMEOUT_S", cls.rebuild_timeout_s,
                                     0.1, 3600.0),
            rebuild_max_records=_int(env, "CARDIOWATCH_DISPATCH_REBUILD_MAX_RECORDS", cls.rebuild_max_records,
                                     1, 100_000_000),
        )


@dataclass(frozen=True)
class ConsoleSettings:
    """``cardiowatch console``: where it listens, which ack API its buttons go through,
    and how far back it reads the scores topic when it starts."""

    kafka: KafkaSettings
    # the dispatcher's acknowledgement API (CARDIOWATCH_ACK_PORT of the dispatcher)
    ack_api_url: str = "http://127.0.0.1:8088"
    port: int = 8090
    bind_host: str = "127.0.0.1"
    # scores read back on start: at least this far, and back to the earliest open alert's
    # strip (so its beats are marked again), but never further than scores_replay_max_s
    scores_lookback_s: float = 300.0
    scores_replay_max_s: float = 21_600.0
    rebuild_timeout_s: float = 60.0
    ack_timeout_s: float = 5.0
    # a ward's console: only the patients (and ops alerts) the routing file gives this team
    team: str | None = None
    routing_file: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsoleSettings:
        env = os.environ if env is None else env
        url = _get(env, "CARDIOWATCH_ACK_API_URL", cls.ack_api_url).rstrip("/")
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", url):
            raise SettingsError(f"CARDIOWATCH_ACK_API_URL must be an http(s)://host:port URL, got {url!r}")
        lookback = _float(env, "CARDIOWATCH_CONSOLE_SCORES_LOOKBACK_S", cls.scores_lookback_s, 0.0, 604_800.0)
        replay_max = _float(env, "CARDIOWATCH_CONSOLE_SCORES_REPLAY_MAX_S", cls.scores_replay_max_s,
                            0.0, 604_800.0)
        if replay_max < lookback:
            raise SettingsError(f"CARDIOWATCH_CONSOLE_SCORES_REPLAY_MAX_S must be >= "
                                f"CARDIOWATCH_CONSOLE_SCORES_LOOKBACK_S ({lookback:g}), got {replay_max:g}")
        team = env.get("CARDIOWATCH_CONSOLE_TEAM") or None
        routing = env.get("CARDIOWATCH_ROUTING_FILE") or None
        if team is not None and routing is None:
            raise SettingsError(f"CARDIOWATCH_CONSOLE_TEAM ({team!r}) needs CARDIOWATCH_ROUTING_FILE, "
                                "the routing file that says which patients are the team's; got nothing")
        return cls(
            kafka=KafkaSettings.from_env(env),
            ack_api_url=url,
            port=_int(env, "CARDIOWATCH_CONSOLE_PORT", cls.port, 0, 65535),
            bind_host=_get(env, "CARDIOWATCH_CONSOLE_BIND", cls.bind_host),
            scores_lookback_s=lookback,
            scores_replay_max_s=replay_max,
            rebuild_timeout_s=_float(env, "CARDIOWATCH_CONSOLE_REBUILD_TIMEOUT_S", cls.rebuild_timeout_s,
                                     1.0, 3600.0),
            ack_timeout_s=_float(env, "CARDIOWATCH_CONSOLE_ACK_TIMEOUT_S", cls.ack_timeout_s, 0.1, 120.0),
            team=team,
            routing_file=Path(routing) if routing else None,
        )


@dataclass(frozen=True)
class SimulatorSettings:
    kafka: KafkaSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SimulatorSettings:
        env = os.environ if env is None else env
        return cls(kafka=KafkaSettings.from_env(env))
