"""The topic plan, its comparison with what a cluster shows, and the start-up refusals (pure)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.settings import KafkaSettings, SettingsError, TopicSettings, Topics
from services.topics import ObservedTopic, TopicSpec, differences, format_plan, main, plan, refusals
from streaming.app import TABLES, changelog_topic, leader_topic

PROD_ENV = {"CARDIOWATCH_PARTITIONS": "12", "CARDIOWATCH_REPLICATION_FACTOR": "3",
            "CARDIOWATCH_MIN_INSYNC_REPLICAS": "2", "CARDIOWATCH_RETENTION_HOURS": "720",
            "CARDIOWATCH_TOPIC_ALLOW_DECLARE": "0"}


def _seen(spec: TopicSpec, **over: object) -> ObservedTopic:
    """What a cluster shows for a topic created exactly from ``spec``, with overrides."""
    base = ObservedTopic(spec.name, spec.partitions, spec.replication_factor, spec.configs())
    return replace(base, **over)  # type: ignore[arg-type]


def _by_name(specs: tuple[TopicSpec, ...]) -> dict[str, TopicSpec]:
    return {s.name: s for s in specs}


def test_settings_default_to_the_local_single_broker() -> None:
    ts = KafkaSettings.from_env({}).topic_settings
    assert ts == TopicSettings(replication_factor=1, min_insync_replicas=1, retention_hours=168,
                               allow_declare=True)


def test_settings_read_a_production_cluster() -> None:
    k = KafkaSettings.from_env(PROD_ENV)
    assert k.partitions == 12
    assert k.topic_settings == TopicSettings(3, 2, 720, False)


@pytest.mark.parametrize("env, key, value", [
    ({"CARDIOWATCH_REPLICATION_FACTOR": "0"}, "CARDIOWATCH_REPLICATION_FACTOR", "0"),
    ({"CARDIOWATCH_REPLICATION_FACTOR": "three"}, "CARDIOWATCH_REPLICATION_FACTOR", "three"),
    ({"CARDIOWATCH_REPLICATION_FACTOR": "2", "CARDIOWATCH_MIN_INSYNC_REPLICAS": "3"},
     "CARDIOWATCH_MIN_INSYNC_REPLICAS", "3"),
    ({"CARDIOWATCH_RETENTION_HOURS": "0"}, "CARDIOWATCH_RETENTION_HOURS", "0"),
    ({"CARDIOWATCH_TOPIC_ALLOW_DECLARE": "maybe"}, "CARDIOWATCH_TOPIC_ALLOW_DECLARE", "maybe"),
])
def test_bad_topic_settings_name_the_key_and_the_value(env: dict[str, str], key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=key) as err:
        KafkaSettings.from_env(env)
    assert value in str(err.value)


@pytest.mark.parametrize("raw, want", [("1", True), ("true", True), ("ON", True),
                                       ("0", False), ("no", False), ("False", False)])
def test_allow_declare_reads_the_usual_spellings(raw: str, want: bool) -> None:
    env = {"CARDIOWATCH_TOPIC_ALLOW_DECLARE": raw}
    assert KafkaSettings.from_env(env).topic_settings.allow_declare is want


def test_plan_names_every_topic_the_system_uses() -> None:
    k = KafkaSettings.from_env(PROD_ENV)
    specs = plan(k, app_id="cw-prod")
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    changelogs = [changelog_topic("cw-prod", t) for t, _ in TABLES]
    assert names == [*Topics().all(), *changelogs, leader_topic("cw-prod")]
    assert changelogs == ["cw-prod-ecg-state-changelog", "cw-prod-hr-state-changelog"]
    for s in specs:
        assert s.replication_factor == 3 and s.min_insync_replicas == 2, s
        assert s.partitions == (1 if s.role == "internal" else 12), s


def test_state_is_compacted_and_everything_else_kept_for_the_retention() -> None:
    specs = _by_name(plan(KafkaSettings.from_env(PROD_ENV), "cw"))
    for name, s in specs.items():
        if s.role in ("changelog", "state"):
            assert s.cleanup_policy == "compact" and s.retention_ms is None
            assert "retention.ms" not in s.configs()
        else:
            assert s.cleanup_policy == "delete" and s.retention_ms == 720 * 3_600_000, name
            assert s.configs()["retention.ms"] == str(720 * 3_600_000)
        assert s.configs()["min.insync.replicas"] == "2"


def test_each_changelog_mirrors_its_raw_topic() -> None:
    t = Topics()
    specs = _by_name(plan(KafkaSettings(), "cw"))
    assert specs["cw-ecg-state-changelog"].source == t.ecg
    assert specs["cw-hr-state-changelog"].source == t.hr
    assert {s.source for s in specs.values() if s.role != "changelog"} == {None}


def test_who_uses_what() -> None:
    t = Topics()
    specs = _by_name(plan(KafkaSettings(), "cw"))
    dispatcher = {n for n, s in specs.items() if "dispatcher" in s.used_by}
    assert dispatcher == {t.alerts, t.acks, t.alerts_deadletter, t.alert_state}
    assert specs[t.alert_state].role == "state" and specs[t.alert_state].cleanup_policy == "compact"
    worker = {n for n, s in specs.items() if "worker" in s.used_by}
    assert worker == {t.ecg, t.hr, t.scores, t.alerts, t.deadletter, "cw-ecg-state-changelog",
                      "cw-hr-state-changelog", "cw-__assignor-__leader"}


def test_a_topic_made_from_the_plan_shows_no_difference() -> None:
    for s in plan(KafkaSettings.from_env(PROD_ENV), "cw"):
        assert differences(s, _seen(s)) == []


def test_differences_name_the_setting_and_both_values() -> None:
    s = plan(KafkaSettings.from_env(PROD_ENV), "cw")[0]
    seen = _seen(s, partitions=8, replication_factor=1,
                 configs={"cleanup.policy": "delete", "retention.ms": "86400000", "min.insync.replicas": "1"})
    got = {d.setting: (d.planned, d.actual) for d in differences(s, seen)}
    assert got == {"partitions": ("12", "8"), "replication factor": ("3", "1"),
                   "retention.ms": (str(720 * 3_600_000), "86400000"), "min.insync.replicas": ("2", "1")}
    text = differences(s, seen)[0].describe()
    assert s.name in text and "12" in text and "8" in text


def test_configs_not_read_are_not_reported_as_differences() -> None:
    s = plan(KafkaSettings(), "cw")[0]
    assert differences(s, _seen(s, configs={})) == []


def test_a_cluster_made_from_the_plan_is_accepted() -> None:
    k = KafkaSettings.from_env(PROD_ENV)
    specs = plan(k, "cw")
    assert refusals(specs, {s.name: _seen(s) for s in specs}, k, may_create=False) == []


def test_a_raw_topic_with_other_partitions_than_the_setting_is_refused() -> None:
    k = KafkaSettings()  # 8 partitions
    specs = plan(k, "cw")
    seen = {s.name: _seen(s) for s in specs}
    # the case: raw topics made with 12, worker left at the default 8
    seen[k.topics.ecg] = replace(seen[k.topics.ecg], partitions=12)
    problems = refusals(specs, seen, k, may_create=False)
    assert any(k.topics.ecg in p and "12 partitions" in p and "CARDIOWATCH_PARTITIONS is 8" in p
               for p in problems), problems


def test_a_changelog_with_other_partitions_than_its_raw_topic_is_refused() -> None:
    k = KafkaSettings()
    specs = plan(k, "cw")
    seen = {s.name: _seen(s) for s in specs}
    cl = "cw-hr-state-changelog"
    seen[cl] = replace(seen[cl], partitions=4)
    problems = refusals(specs, seen, k, may_create=False)
    assert problems == [f"changelog topic {cl!r} has 4 partitions but its raw topic "
                        f"{k.topics.hr!r} has 8"]


def test_a_missing_topic_is_refused_only_where_it_may_not_be_created() -> None:
    k = KafkaSettings()
    specs = plan(k, "cw")
    seen = {s.name: _seen(s) for s in specs if s.role != "changelog"}
    problems = refusals(specs, seen, k, may_create=False)
    assert len(problems) == 2
    assert all("does not exist" in p and "cardiowatch topics apply" in p for p in problems)
    assert refusals(specs, seen, k, may_create=True) == []


def test_a_replication_factor_below_the_setting_is_refused_above_it_is_not() -> None:
    k = KafkaSettings.from_env(PROD_ENV)
    specs = plan(k, "cw")
    seen = {s.name: _seen(s) for s in specs}
    seen[k.topics.alerts] = replace(seen[k.topics.alerts], replication_factor=2)
    seen[k.topics.acks] = replace(seen[k.topics.acks], replication_factor=4)
    problems = refusals(specs, seen, k, may_create=False)
    assert problems == [f"topic {k.topics.alerts!r} has replication factor 2 but "
                        "CARDIOWATCH_REPLICATION_FACTOR is 3"]


def test_plan_table_has_one_row_per_topic_with_its_numbers() -> None:
    specs = plan(KafkaSettings.from_env(PROD_ENV), "cw")
    lines = format_plan(specs).splitlines()
    assert len(lines) == 1 + len(specs)
    assert lines[0].split()[:4] == ["topic", "role", "partitions", "replicas"]
    row = lines[1].split()
    assert row[:6] == [Topics().ecg, "raw", "12", "3", "delete", "720"]


def test_cli_plan_prints_json_lines_from_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--json", "--app-id", "cw"], env=PROD_ENV) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["name"] for d in docs] == [s.name for s in plan(KafkaSettings.from_env(PROD_ENV), "cw")]
    assert docs[0]["partitions"] == 12 and docs[0]["replication_factor"] == 3


def test_cli_refuses_bad_settings_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"], env={"CARDIOWATCH_PARTITIONS": "0"}) == 1
    assert "CARDIOWATCH_PARTITIONS" in capsys.readouterr().err
