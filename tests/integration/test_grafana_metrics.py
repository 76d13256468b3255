"""The Grafana dashboard against a real worker and dispatcher: every metric a panel
queries is on their /metrics pages after a short stream with an alert delivered."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from models.synthetic import Event, SyntheticPatient
from services.receiver import WebhookReceiver
from services.settings import REPO_ROOT
from services.simulator import Wearable
from tests.grafana_metrics import exposed_series, queried_metrics
from worker_harness import WorkerProcess, produce

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"grafana-metrics-secret-0123456789").decode()
T0 = 1_767_225_600_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_every_dashboard_metric_is_on_the_real_worker_and_dispatcher_pages(kafka_broker, make_topics, tmp_path):
    topics = make_topics(partitions=4)  # the worker harness runs with CARDIOWATCH_PARTITIONS=4
    w = Wearable("p-graf", "dev-graf", SyntheticPatient("p-graf", 250, events=[Event("vrun", 20, 6)]), T0)
    records = []
    for _ in range(40):
        e, h = w.step()
        records.append((topics.ecg, b"p-graf", e))
        if h is not None:
            records.append((topics.hr, b"p-graf", h))
    records.append((topics.ecg, b"p-graf", b"{not json"))  # a dead letter, by reason
    worker = WorkerProcess(kafka_broker.bootstrap, topics, tmp_path / "w", f"graf-{uuid.uuid4().hex[:8]}").start()

    async def go() -> tuple[str, str]:
        async with WebhookReceiver(SECRET) as rec:
            routing = tmp_path / "routing.yaml"
            routing.write_text(yaml.safe_dump({"default_team": "c", "teams": {"c": {
                "routes": {"default": {"primary": {"url": rec.url, "secret": SECRET}}}}}}))
            port = _free_port()
            env = {**os.environ, "CARDIOWATCH_BOOTSTRAP": kafka_broker.bootstrap,
                   "CARDIOWATCH_ROUTING_FILE": str(routing),
                   "CARDIOWATCH_DISPATCHER_GROUP": f"g-{topics.alerts}",
                   "CARDIOWATCH_DISPATCHER_METRICS_PORT": str(port), "CARDIOWATCH_ACK_PORT": "0",
                   "CARDIOWATCH_TOPIC_ALERTS": topics.alerts, "CARDIOWATCH_TOPIC_ACKS": topics.acks,
                   "CARDIOWATCH_TOPIC_ALERTS_DEADLETTER": topics.alerts_deadletter,
                   "CARDIOWATCH_TOPIC_ALERT_STATE": topics.alert_state,
                   "PYTHONPATH": str(REPO_ROOT)}
            proc = subprocess.Popen([sys.executable, "-m", "services.dispatcher", "--log-level", "WARNING"],
                                    cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL)
            try:
                produce(kafka_broker.bootstrap, records)
                deadline = time.monotonic() + 180
                while not rec.received:
                    assert time.monotonic() < deadline, f"no alert delivered:\n{worker.log_tail()}"
                    await asyncio.sleep(0.5)
                return worker.metrics(), _scrape(port)
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    try:
        worker_page, dispatcher_page = asyncio.run(go())
    finally:
        worker.stop()
    exposed = exposed_series(worker_page) | exposed_series(dispatcher_page)
    missing = queried_metrics() - exposed
    assert not missing, f"panels query metrics neither process exports: {sorted(missing)}"
    # and the stream really went through both, so the panels have data
    assert "cardiowatch_beats_scored_total" in exposed_series(worker_page)
    assert 'outcome="delivered"' in dispatcher_page and 'reason="malformed_json"' in worker_page
