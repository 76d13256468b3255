"""Topics: every Kafka topic cardiowatch uses, as a plan a platform team can read and apply.

``cardiowatch topics plan`` prints the plan (raw streams, outputs, dead letters, acks,
the dispatcher's compacted alert state, and the worker's Faust changelogs and leader topic) with partitions, replication factor,
``cleanup.policy``, retention and ``min.insync.replicas``; ``cardiowatch topics apply``
creates what is missing and reports what differs, never altering an existing topic.

The worker and the dispatcher call :func:`check_topics` before they start: it reads the
cluster's topic metadata and refuses (:class:`TopicLayoutError`, naming the topic and
both numbers) when

* a raw topic's partition count differs from ``CARDIOWATCH_PARTITIONS`` (the worker
  computes each patient's partition from it: its resume point and tick ownership would
  be wrong), or from its changelog's (a state would be restored from another partition
  than the one its patient's records arrive on);
* a topic is missing and may not be created (``CARDIOWATCH_TOPIC_ALLOW_DECLARE=0``, or
  the dispatcher, which never creates topics);
* a topic's replication factor is below ``CARDIOWATCH_REPLICATION_FACTOR``.

The plan and the comparisons are pure functions (:func:`plan`, :func:`differences`,
:func:`refusals`); only :func:`observe`, :func:`apply` and :func:`check_topics` talk to
the cluster, through kafka-python's admin client.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from models.errors import CardiowatchError
from services.settings import KafkaSettings, SettingsError
from models.cli_help import HelpFormatter

__all__ = [
    "CONFIG_KEYS",
    "ApplyReport",
    "Difference",
    "ObservedTopic",
    "Role",
    "TopicLayoutError",
    "TopicSpec",
    "User",
    "apply",
    "check_topics",
    "differences",
    "format_plan",
    "main",
    "observe",
    "plan",
    "refusals",
]

log = logging.getLogger("cardiowatch.topics")

Role = Literal["raw", "output", "deadletter", "acks", "state", "changelog", "internal"]
User = Literal["worker", "dispatcher", "simulator"]
CleanupPolicy = Literal["delete", "compact"]
#: The topic configs the plan sets and :func:`differences` compares.
CONFIG_KEYS = ("cleanup.policy", "retention.ms", "min.insync.replicas")
_MS_PER_HOUR = 3_600_000
# Exit status of `topics apply` when an existing topic differs from the plan.
EXIT_DIFFERS = 3


class TopicLayoutError(CardiowatchError, RuntimeError):
    """The cluster's topics do not fit the settings; ``problems`` names each one."""

    def __init__(self, headline: str, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{headline}: {len(self.problems)} topic problem(s)\n{lines}\n"
                         "(`cardiowatch topics plan` shows what the settings ask for)")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One planned topic.

    ``source`` is, for a changelog, the raw topic whose partitions it must mirror.
    ``retention_ms`` is None for compacted topics (state is kept per key, not by age).
    """

    name: str
    role: Role
    partitions: int
    replication_factor: int
    cleanup_policy: CleanupPolicy
    retention_ms: int | None
    min_insync_replicas: int
    used_by: tuple[User, ...]
    source: str | None = None

    def configs(self) -> dict[str, str]:
        """The topic-level configs to create the topic with."""
        out = {"cleanup.policy": self.cleanup_policy, "min.insync.replicas": str(self.min_insync_replicas)}
        if self.retention_ms is not None:
            out["retention.ms"] = str(self.retention_ms)
        if self.role == "state":
            # the cleaner only compacts closed segments: roll hourly, so the dispatcher's
            # start-up read of it stays near one record per alert (the default rolls weekly)
            out["segment.ms"] = str(_MS_PER_HOUR)
        return out


@dataclass(frozen=True, slots=True)
class ObservedTopic:
    """A topic as the cluster reports it. ``replication_factor`` is the smallest over its
    partitions; ``configs`` holds the effective values of :data:`CONFIG_KEYS` (empty when
    they were not read)."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Difference:
    """An existing topic's setting that differs from the plan."""

    topic: str
    setting: str
    planned: str
    actual: str

    def describe(self) -> str:
        return f"topic {self.topic!r}: {self.setting} is {self.actual}, the plan says {self.planned}"


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What :func:`apply` did: topics created, left as they were, and what differs."""

    created: tuple[str, ...]
    unchanged: tuple[str, ...]
    differing: tuple[Difference, ...]


def plan(kafka: KafkaSettings, app_id: str = "cardiowatch-worker") -> tuple[TopicSpec, ...]:
    """Every topic the system uses, from the settings.

    Parameters
    ----------
    kafka : KafkaSettings
        Topic names, partitions, replication factor, min ISR and retention.
    app_id : str
        The worker's Faust app id (``CARDIOWATCH_APP_ID``): its changelog and leader
        topics are named after it.

    Returns
    -------
    tuple of TopicSpec
        Raw topics first, then outputs, dead letters, acks, the dispatcher's alert
        state, changelogs, internal.
    """
    from streaming.app import TABLES, changelog_topic, leader_topic

    ts, t, n = kafka.topic_settings, kafka.topics, kafka.partitions
    retention = ts.retention_hours * _MS_PER_HOUR

    def spec(name: str, role: Role, used_by: tuple[User, ...], partitions: int = n,
             compact: bool = False, source: str | None = None) -> TopicSpec:
        return TopicSpec(name, role, partitions, ts.replication_factor,
                         "compact" if compact else "delete", None if compact else retention,
                         ts.min_insync_replicas, used_by, source)

    raw = {"ecg": t.ecg, "hr": t.hr}
    return (
        spec(t.ecg, "raw", ("simulator", "worker")),
        spec(t.hr, "raw", ("simulator", "worker")),
        spec(t.scores, "output", ("worker",)),
        spec(t.alerts, "output", ("worker", "dispatcher")),
        spec(t.deadletter, "deadletter", ("worker",)),
        spec(t.alerts_deadletter, "deadletter", ("dispatcher",)),
        spec(t.acks, "acks", ("dispatcher",)),
        # the dispatcher's latest state per alert, tombstoned when forgotten (services.alert_state)
        spec(t.alert_state, "state", ("dispatcher",), compact=True),
        *(spec(changelog_topic(app_id, table), "changelog", ("worker",), compact=True, source=raw[stream])
          for table, stream in TABLES),
        # Faust's leader election: one partition, whatever CARDIOWATCH_PARTITIONS says.
        spec(leader_topic(app_id), "internal", ("worker",), partitions=1),
    )


def differences(spec: TopicSpec, seen: ObservedTopic) -> list[Difference]:
    """How an existing topic differs from its plan (configs only where they were read)."""
    out = []
    if seen.partitions != spec.partitions:
        out.append(Difference(spec.name, "partitions", str(spec.partitions), str(seen.partitions)))
    if seen.replication_factor != spec.replication_factor:
        out.append(Difference(spec.name, "replication factor", str(spec.replication_factor),
                              str(seen.replication_factor)))
    for key, want in spec.configs().items():
        got = seen.configs.get(key)
        if got is not None and got != want:
            out.append(Difference(spec.name, key, want, got))
    return out


def refusals(specs: Iterable[TopicSpec], seen: Mapping[str, ObservedTopic], kafka: KafkaSettings,
             may_create: bool) -> list[str]:
    """Why a process needing ``specs`` must not start on a cluster showing ``seen``.

    Empty when it may. ``may_create`` says whether a missing topic will be created by
    the caller (it then is no refusal)."""
    specs = list(specs)
    ts = kafka.topic_settings
    out = []
    for s in specs:
        got = seen.get(s.name)
        if got is None:
            if not may_create:
                out.append(f"topic {s.name!r} ({s.role}) does not exist and may not be created here "
                           "(CARDIOWATCH_TOPIC_ALLOW_DECLARE=0, or a process that never creates "
                           "topics); create it with `cardiowatch topics apply`")
            continue
        if s.role == "raw" and got.partitions != kafka.partitions:
            out.append(f"raw topic {s.name!r} has {got.partitions} partitions but CARDIOWATCH_PARTITIONS "
                       f"is {kafka.partitions}")
        if s.source is not None:
            src = seen.get(s.source)
            if src is not None and got.partitions != src.partitions:
                out.append(f"changelog topic {s.name!r} has {got.partitions} partitions but its raw topic "
                           f"{s.source!r} has {src.partitions}")
        if got.replication_factor < ts.replication_factor:
            out.append(f"topic {s.name!r} has replication factor {got.replication_factor} but "
                       f"CARDIOWATCH_REPLICATION_FACTOR is {ts.replication_factor}")
    return out


# -- the cluster ---------------------------------------------------------------------------
def _admin(kafka: KafkaSettings, timeout_s: float) -> KafkaAdminClient:
    timeout_ms = max(int(timeout_s * 1000), 1000)
    # the cluster's security settings (TLS, SASL) as every other client of the project
    return KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="cardiowatch-topics",
                            bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms,
                            **kafka.security.kafka_python_kwargs())


def _observe(admin: KafkaAdminClient, names: Iterable[str], configs: bool) -> dict[str, ObservedTopic]:
    # Only describe topics that exist: on a cluster with auto-creation on, a metadata
    # request for a missing topic could create it with the broker's defaults.
    existing = set(admin.list_topics())
    present = [n for n in dict.fromkeys(names) if n in existing]
    if not present:
        return {}
    read: dict[str, dict[str, str]] = {}
    if configs:
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in present], config_filter="all")
        for name, entries in found.get("topic", {}).items():
            read[name] = {k: str(v["value"]) for k, v in entries.items() if k in CONFIG_KEYS}
    out = {}
    for t in admin.describe_topics(present):
        if t.get("error_code", 0) != 0 or not t["partitions"]:
            continue
        rf = min(len(p["replica_nodes"]) for p in t["partitions"])
        out[t["name"]] = ObservedTopic(t["name"], len(t["partitions"]), rf, read.get(t["name"], {}))
    return out


def observe(kafka: KafkaSettings, names: Iterable[str], configs: bool = True,
            timeout_s: float = 30.0) -> dict[str, ObservedTopic]:
    """``{name: ObservedTopic}`` for those of ``names`` that exist on the cluster."""
    admin = _admin(kafka, timeout_s)
    try:
        return _observe(admin, names, configs)
    finally:
        admin.close()


def _create(admin: KafkaAdminClient, specs: Sequence[TopicSpec], timeout_s: float) -> list[str]:
    if not specs:
        return []
    response = admin.create_topics(
        {s.name: {"num_partitions": s.partitions, "replication_factor": s.replication_factor,
                  "configs": s.configs()} for s in specs},
        timeout_ms=int(timeout_s * 1000), raise_errors=False)
    created, failed = [], []
    for t in response["topics"]:
        if t["error_code"] == 0:
            created.append(t["name"])
        elif t["error_code"] != TopicAlreadyExistsError.errno:  # another creator won the race
            failed.append(f"creating topic {t['name']!r} failed: error {t['error_code']} "
                          f"{t.get('error_message') or ''}".rstrip())
    if failed:
        raise TopicLayoutError("the cluster refused to create topics", failed)
    if created:  # usable (a leader for every partition) before anyone is told it exists
        admin.wait_for_topics(created, timeout_ms=int(timeout_s * 1000))
    return created


def apply(kafka: KafkaSettings, specs: Sequence[TopicSpec], timeout_s: float = 30.0) -> ApplyReport:
    """Create the planned topics that are missing; compare, never alter, the others.

    Raises
    ------
    TopicLayoutError
        The cluster refused to create a topic (for example a replication factor above
        its broker count); the message carries the broker's error.
    """
    admin = _admin(kafka, timeout_s)
    try:
        seen = _observe(admin, (s.name for s in specs), configs=True)
        created = _create(admin, [s for s in specs if s.name not in seen], timeout_s)
    finally:
        admin.close()
    differing = tuple(d for s in specs if s.name in seen for d in differences(s, seen[s.name]))
    unchanged = tuple(s.name for s in specs
                      if s.name in seen and not any(d.topic == s.name for d in differing))
    return ApplyReport(tuple(created), unchanged, differing)


def check_topics(kafka: KafkaSettings, who: User, app_id: str = "cardiowatch-worker",
                 timeout_s: float = 30.0) -> list[Difference]:
    """Refuse to start ``who`` on a cluster whose topics do not fit the settings.

    The worker creates missing topics from the plan first when
    ``CARDIOWATCH_TOPIC_ALLOW_DECLARE`` allows it; the dispatcher never does.

    Returns
    -------
    list of Difference
        What differs from the plan without being a reason to refuse (retention, min ISR,
        a replication factor above the setting); the caller logs it.

    Raises
    ------
    TopicLayoutError
        Naming every problem: topic and both numbers.
    """
    specs = [s for s in plan(kafka, app_id) if who in s.used_by]
    may_create = who == "worker" and kafka.topic_settings.allow_declare
    admin = _admin(kafka, timeout_s)
    try:
        seen = _observe(admin, (s.name for s in specs), configs=True)
        # What exists is judged first: nothing is created on a cluster that is refused anyway.
        problems = refusals(specs, seen, kafka, may_create=may_create)
        if problems:
            raise TopicLayoutError(f"the {who} refuses to start", problems)
        missing = [s for s in specs if s.name not in seen]
        if missing:
            created = _create(admin, missing, timeout_s)
            log.info("created %d missing topic(s): %s", len(created), ", ".join(created))
            seen = _observe(admin, (s.name for s in specs), configs=True)
    finally:
        admin.close()
    problems = refusals(specs, seen, kafka, may_create=False)
    if problems:
        raise TopicLayoutError(f"the {who} refuses to start", problems)
    return [d for s in specs for d in differences(s, seen[s.name])]


# -- CLI: `cardiowatch topics plan|apply` --------------------------------------------------
def _retention_text(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms // _MS_PER_HOUR} h" if ms % _MS_PER_HOUR == 0 else f"{ms} ms"


def format_plan(specs: Sequence[TopicSpec]) -> str:
    """The plan as an aligned text table."""
    header = ("topic", "role", "partitions", "replicas", "cleanup.policy", "retention",
              "min.insync.replicas", "used by")
    rows = [header] + [(s.name, s.role, str(s.partitions), str(s.replication_factor), s.cleanup_policy,
                        _retention_text(s.retention_ms), str(s.min_insync_replicas), ",".join(s.used_by))
                       for s in specs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cardiowatch topics", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "print every topic the system uses, from CARDIOWATCH_* settings"),
                       ("apply", "create the missing topics; report (never change) the ones that differ")):
        sp = sub.add_parser(name, help=text, formatter_class=HelpFormatter)
        sp.add_argument("--bootstrap", help="Kafka bootstrap servers (default: CARDIOWATCH_BOOTSTRAP)")
        sp.add_argument("--app-id", default=None, help="the worker's app id (default: CARDIOWATCH_APP_ID)")
    sub.choices["plan"].add_argument("--json", action="store_true", help="one JSON object per topic")
    return p


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run ``cardiowatch topics {plan,apply}``.

    Returns
    -------
    int
        0; 1 on a settings or cluster error; 3 (``apply``) when an existing topic
        differs from the plan (it is left as it is).
    """
    from dataclasses import replace

    from services.settings import WorkerSettings

    args = _parser().parse_args(argv)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        worker = WorkerSettings.from_env(env)
        kafka = worker.kafka if not args.bootstrap else replace(worker.kafka, bootstrap=args.bootstrap)
        specs = plan(kafka, args.app_id or worker.app_id)
        if args.command == "plan":
            if args.json:
                for s in specs:
                    print(json.dumps(asdict(s)))
            else:
                print(format_plan(specs))
            return 0
        report = apply(kafka, specs)
    except (SettingsError, TopicLayoutError, KafkaError) as exc:
        print(f"cardiowatch topics: error: {exc}", file=sys.stderr)
        return 1
    for name in report.created:
        print(f"created    {name}")
    for name in report.unchanged:
        print(f"as planned {name}")
    for d in report.differing:
        print(f"DIFFERS    {d.describe()} (not changed)")
    print(f"{len(report.created)} created, {len(report.unchanged)} as planned, "
          f"{len({d.topic for d in report.differing})} differ from the plan (left as they are) "
          f"on {kafka.bootstrap}", file=sys.stderr)
    return EXIT_DIFFERS if report.differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
