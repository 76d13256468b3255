"""The Grafana provisioning in deploy/grafana: the dashboard is its generator's output,
names the provisioned data source, and queries only metrics the worker and the
dispatcher export (a real scrape checks the same in tests/integration)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from streaming.metrics import DispatcherMetrics, WorkerMetrics
from tests.grafana_metrics import DASHBOARD, dashboard_queries, exposed_series, queried_metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


def _exposed() -> set[str]:
    names: set[str] = set()
    for cls in (WorkerMetrics, DispatcherMetrics):
        reg = CollectorRegistry()
        cls(reg)
        names |= exposed_series(generate_latest(reg).decode())
    return names


def test_dashboard_is_the_generator_output():
    gen = runpy.run_path(str(GRAFANA / "make_dashboard.py"))
    assert DASHBOARD.read_text() == gen["render"](), "run python deploy/grafana/make_dashboard.py"


def test_every_queried_metric_is_exported_by_the_worker_or_the_dispatcher():
    missing = queried_metrics() - _exposed()
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"
    # and the dashboard covers what an operator must see
    q = " ".join(dashboard_queries())
    for must in ("cardiowatch_consumer_lag_messages", "cardiowatch_event_to_score_latency_seconds_bucket",
                 "cardiowatch_delivery_latency_seconds_bucket", "cardiowatch_invalid_messages_total",
                 "cardiowatch_alerts_total", "cardiowatch_alerts_per_patient_day", "cardiowatch_open_alerts",
                 "cardiowatch_unacknowledged_alerts", "histogram_quantile(0.99"):
        assert must in q, must


def test_panels_use_the_provisioned_data_source_and_unique_ids():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (src,) = ds["datasources"]
    assert src["type"] == "prometheus" and src["url"] == "http://prometheus:9090"
    doc = json.loads(DASHBOARD.read_text())
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == src["uid"] and p["targets"], p["title"]
        assert all(t["datasource"]["uid"] == src["uid"] for t in p["targets"])


def test_compose_runs_grafana_on_the_provisioning():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    g = compose["services"]["grafana"]
    assert ":" in g["image"] and not g["image"].endswith(":latest"), "pin the Grafana image"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in g["volumes"]}
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == (GRAFANA / "provisioning").resolve()
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cardiowatch.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    assert (ROOT / mounts[path]).resolve() == DASHBOARD.parent.resolve()
    assert "prometheus" in g["depends_on"]
