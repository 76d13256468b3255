"""Topics on the real broker: ``topics apply``, and the worker and dispatcher refusing a
cluster whose topics do not fit their settings (one test per refusal), and the
production path (topics applied first, the worker not allowed to declare any) working.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from services.dispatcher import DispatchOptions, run_dispatcher
from services.routing import parse_routing
from services.settings import REPO_ROOT, DispatcherSettings, KafkaSettings, TopicSettings
from services.topics import TopicLayoutError, apply, observe, plan
from test_worker import reference, stream_for
from worker_harness import WorkerProcess, produce, read_until

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"integration-secret-0123456789").decode()


def _app_id() -> str:
    return f"test-topics-{uuid.uuid4().hex[:8]}"


def _worker(kafka_broker, topics, tmp_path: Path, app_id: str, partitions: int = 4,
            **env: str) -> WorkerProcess:
    return WorkerProcess(kafka_broker.bootstrap, topics, tmp_path / "w", app_id, partitions=partitions,
                         extra_env=env)


def _refused(w: WorkerProcess) -> str:
    """Start ``w``, require it to exit with EX_CONFIG (78), and return its log."""
    with pytest.raises(RuntimeError, match="worker exited with 78") as err:
        w.start(timeout_s=120)
    return str(err.value)


def test_apply_creates_the_missing_topics_and_reports_without_changing_the_rest(
        kafka_broker, make_topics) -> None:
    topics = make_topics(partitions=4)  # the project topics exist, made without any config
    app_id = _app_id()
    k = KafkaSettings(bootstrap=kafka_broker.bootstrap, partitions=4, topics=topics)
    specs = plan(k, app_id)
    first = apply(k, specs)
    internal = {s.name for s in specs if s.role in ("changelog", "internal")}
    assert set(first.created) == internal
    # broker.create_topics set no retention: the broker's 24 h differs from the plan's 168 h
    # (but for the compacted alert-state topic, which has none)
    assert {d.topic for d in first.differing} == set(topics.all()) - {topics.alert_state}
    assert {d.setting for d in first.differing} == {"retention.ms"}
    seen = observe(k, [s.name for s in specs])
    assert seen[f"{app_id}-ecg-state-changelog"].configs["cleanup.policy"] == "compact"
    assert seen[f"{app_id}-ecg-state-changelog"].partitions == 4
    assert seen[f"{app_id}-__assignor-__leader"].partitions == 1
    # nothing was altered, and a second apply creates nothing
    again = apply(k, specs)
    assert again.created == ()
    assert set(again.unchanged) == internal | {topics.alert_state}  # made compacted, as planned
    assert again.differing == first.differing
    assert observe(k, topics.all())[topics.ecg].configs["retention.ms"] == "86400000"


def test_apply_cli_exits_3_when_something_differs_and_0_when_all_is_as_planned(
        kafka_broker, make_topics, tmp_path: Path) -> None:
    topics = make_topics(partitions=2)
    w = _worker(kafka_broker, topics, tmp_path, _app_id(), partitions=2)
    env = dict(w.env(), CARDIOWATCH_RETENTION_HOURS="24")  # the local broker's retention
    run = [sys.executable, "-m", "services.cli", "topics", "apply"]
    r = subprocess.run(run, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("created ") == 3 and r.stdout.count("as planned ") == len(topics.all())
    # a plan asking for a week differs from every topic, and nothing is changed
    env["CARDIOWATCH_RETENTION_HOURS"] = "168"
    for _ in range(2):
        r = subprocess.run(run, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 3, r.stdout + r.stderr
        # every topic, less the compacted alert state, plus the leader topic (changelogs are compacted)
        assert r.stdout.count("DIFFERS ") == len(topics.all()) - 1 + 1
        assert f"topic {topics.ecg!r}: retention.ms is 86400000, the plan says 604800000" in r.stdout


def test_worker_refuses_raw_topics_with_other_partitions_than_the_setting(
        kafka_broker, make_topics, tmp_path: Path) -> None:
    # the case: raw topics made with 12 partitions, the worker left at 8
    topics = make_topics(partitions=12)
    text = _refused(_worker(kafka_broker, topics, tmp_path, _app_id(), partitions=8))
    assert f"raw topic {topics.ecg!r} has 12 partitions but CARDIOWATCH_PARTITIONS is 8" in text
    assert f"raw topic {topics.hr!r} has 12 partitions but CARDIOWATCH_PARTITIONS is 8" in text


def test_worker_refuses_a_changelog_with_other_partitions_than_its_raw_topic(
        kafka_broker, make_topics, tmp_path: Path) -> None:
    topics = make_topics(partitions=4)
    app_id = _app_id()
    changelog = f"{app_id}-ecg-state-changelog"
    kafka_broker.create_topics([changelog], 2)  # left over from a run with 2 partitions
    text = _refused(_worker(kafka_broker, topics, tmp_path, app_id, partitions=4))
    assert f"changelog topic {changelog!r} has 2 partitions but its raw topic {topics.ecg!r} has 4" in text


def test_worker_refuses_missing_topics_it_may_not_create(kafka_broker, make_topics, tmp_path: Path) -> None:
    topics = make_topics(partitions=4)
    app_id = _app_id()
    text = _refused(_worker(kafka_broker, topics, tmp_path, app_id, CARDIOWATCH_TOPIC_ALLOW_DECLARE="0"))
    for name in (f"{app_id}-ecg-state-changelog", f"{app_id}-hr-state-changelog",
                 f"{app_id}-__assignor-__leader"):
        assert f"topic {name!r}" in text and "does not exist and may not be created" in text
    # and it created none of them
    assert observe(KafkaSettings(bootstrap=kafka_broker.bootstrap), [f"{app_id}-ecg-state-changelog"]) == {}


def test_worker_refuses_a_replication_factor_below_the_setting(
        kafka_broker, make_topics, tmp_path: Path) -> None:
    topics = make_topics(partitions=4)
    text = _refused(_worker(kafka_broker, topics, tmp_path, _app_id(), CARDIOWATCH_REPLICATION_FACTOR="2"))
    assert f"topic {topics.ecg!r} has replication factor 1 but CARDIOWATCH_REPLICATION_FACTOR is 2" in text


def _dispatcher_settings(kafka_broker, topics, tmp_path: Path, **ts: int) -> DispatcherSettings:
    kafka = KafkaSettings(bootstrap=kafka_broker.bootstrap, topics=topics,
                          topic_settings=replace(TopicSettings(), **ts))
    return DispatcherSettings(kafka=kafka, routing_file=tmp_path / "unused.yaml",
                              group_id=f"g-{uuid.uuid4().hex[:6]}")


def _run_dispatcher(settings: DispatcherSettings) -> None:
    routing = parse_routing({"default_team": "t", "teams": {"t": {"routes": {"default": {
        "primary": {"url": "http://127.0.0.1:9/h", "secret": SECRET}}}}}})
    stop = asyncio.Event()
    stop.set()  # a dispatcher that got past its checks stops at once
    asyncio.run(run_dispatcher(settings, routing, stop=stop, options=DispatchOptions(serve_ack_api=False)))


def test_dispatcher_refuses_a_missing_topic(kafka_broker, make_topics, tmp_path: Path) -> None:
    topics = replace(make_topics(partitions=2), acks=f"missing.{uuid.uuid4().hex[:8]}")
    with pytest.raises(TopicLayoutError, match="dispatcher refuses to start") as err:
        _run_dispatcher(_dispatcher_settings(kafka_broker, topics, tmp_path))
    assert err.value.problems == (
        f"topic {topics.acks!r} (acks) does not exist and may not be created here "
        "(CARDIOWATCH_TOPIC_ALLOW_DECLARE=0, or a process that never creates topics); "
        "create it with `cardiowatch topics apply`",)


def test_dispatcher_refuses_a_replication_factor_below_the_setting(
        kafka_broker, make_topics, tmp_path: Path) -> None:
    topics = make_topics(partitions=2)
    with pytest.raises(TopicLayoutError) as err:
        _run_dispatcher(_dispatcher_settings(kafka_broker, topics, tmp_path, replication_factor=3))
    assert sorted(err.value.problems) == sorted(
        f"topic {name!r} has replication factor 1 but CARDIOWATCH_REPLICATION_FACTOR is 3"
        for name in (topics.alerts, topics.acks, topics.alerts_deadletter, topics.alert_state))
    # the same topics with the default setting pass the check (and the dispatcher stops)
    _run_dispatcher(_dispatcher_settings(kafka_broker, topics, tmp_path))


def test_production_path_topics_applied_first_worker_not_allowed_to_declare(
        kafka_broker, make_topics, tmp_path: Path) -> None:
    topics = make_topics(partitions=4)
    app_id = _app_id()
    k = KafkaSettings(bootstrap=kafka_broker.bootstrap, partitions=4, topics=topics)
    apply(k, plan(k, app_id))
    w = _worker(kafka_broker, topics, tmp_path, app_id, partitions=4, CARDIOWATCH_TOPIC_ALLOW_DECLARE="0")
    try:
        w.start()
        msgs = stream_for({"p-prod-a": [], "p-prod-b": []}, seconds=20)
        produce(kafka_broker.bootstrap, [(topics.ecg, pid.encode(), e) for pid, e, _ in msgs])
        want, _, _ = reference([(pid, e) for pid, e, _ in msgs])
        got = read_until(kafka_broker.bootstrap, topics.scores,
                         lambda recs: {r["beat_id"] for _, r in recs} >= want, timeout_s=120)
        assert {r["beat_id"] for _, r in got} == want
    finally:
        w.stop()
