"""Worker: the composition root of ``cardiowatch worker`` (settings -> bundle -> pipelines -> Faust)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from streaming.metrics import WorkerMetrics

from services.pipelines import build_ecg_pipeline, build_hr_pipeline, build_policy, load_ecg_bundle
from services.settings import KafkaSettings, WorkerSettings
from services.topics import TopicLayoutError, check_topics
from models.cli_help import HelpFormatter

__all__ = ["main", "run"]

log = logging.getLogger("cardiowatch.worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cardiowatch worker", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: CARDIOWATCH_BOOTSTRAP)")
    p.add_argument("--model", type=Path, help="ECG model bundle folder (default: the shipped bundle)")
    p.add_argument("--web-port", type=int, help="port of /metrics (default: CARDIOWATCH_METRICS_PORT)")
    p.add_argument("--data-dir", type=Path, help="Faust data folder")
    p.add_argument("--app-id", help="Faust app id / consumer group")
    p.add_argument("--loglevel", default="info", help="Faust worker log level (debug, info, warning, error)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = WorkerSettings.from_env()
    if args.bootstrap:
        settings = replace(settings, kafka=replace(settings.kafka, bootstrap=args.bootstrap))
    if args.model:
        settings = replace(settings, model_dir=args.model)
    if args.web_port is not None:
        settings = replace(settings, metrics_port=args.web_port)
    if args.data_dir:
        settings = replace(settings, data_dir=args.data_dir)
    if args.app_id:
        settings = replace(settings, app_id=args.app_id)
    try:
        return run(settings, loglevel=args.loglevel)
    except TopicLayoutError as exc:
        print(f"cardiowatch worker: error: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG: a restart will not help until the topics or settings change


def run(settings: WorkerSettings, loglevel: str = "info") -> int:
    import asyncio

    import faust

    from streaming.app import AppConfig, create_app
    from streaming.kafka_security import check_connection

    k: KafkaSettings = settings.kafka
    # Before loading models or starting Faust: a bad certificate or password ends the
    # start here with one error naming it (raises KafkaConnectError), not in Faust's
    # reconnect loop.
    print(f"[worker] kafka {k.bootstrap} via {k.security.describe()}", file=sys.stderr, flush=True)
    asyncio.run(check_connection(k.bootstrap, k.security, k.connect_timeout_s))

    # Before loading any model: a cluster that does not fit the settings is refused at once.
    for d in check_topics(settings.kafka, "worker", settings.app_id):
        log.warning("%s; starting anyway (`cardiowatch topics apply` lists every difference)",
                    d.describe())
    policy = build_policy(settings.policy_file)
    ecg = build_ecg_pipeline(load_ecg_bundle(settings.model_dir, settings.runtime), policy)
    hr = build_hr_pipeline(settings.hr_model_dir, policy,
                           runtime="keras" if settings.runtime == "keras" else "tflite")
    cfg = AppConfig(
        app_id=settings.app_id, bootstrap=k.bootstrap, partitions=k.partitions,
        topic_ecg=k.topics.ecg, topic_hr=k.topics.hr, topic_scores=k.topics.scores,
        topic_alerts=k.topics.alerts, topic_deadletter=k.topics.deadletter,
        data_dir=settings.data_dir, web_port=settings.metrics_port, web_bind=settings.web_bind,
        batch_max=settings.batch_max, batch_within_s=settings.batch_within_s,
        security=k.security,
        replication_factor=k.topic_settings.replication_factor, allow_declare=k.topic_settings.allow_declare,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(cfg, ecg, hr, WorkerMetrics(CollectorRegistry()))
    worker = faust.Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
