"""The metric names the Grafana dashboard queries, and the names a /metrics page exposes
(parsed with prometheus_client's own text parser). Shared by the unit test of the dashboard
and the integration tests that scrape a real worker and dispatcher."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "cardiowatch.json"
_METRIC = re.compile(r"\bcardiowatch_[a-z0-9_]+")


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of every panel."""
    doc = json.loads(path.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def queried_metrics(path: Path = DASHBOARD) -> set[str]:
    """Series names the panels query (``_bucket`` kept: it is what Prometheus stores)."""
    return {m for e in dashboard_queries(path) for m in _METRIC.findall(e)}


def exposed_series(text: str) -> set[str]:
    """Series names a Prometheus text page defines: samples, and for families without
    samples yet (labelled metrics nothing has touched) the names their type gives."""
    from prometheus_client.parser import text_string_to_metric_families

    out: set[str] = set()
    for fam in text_string_to_metric_families(text):
        out |= {s.name for s in fam.samples}
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "summary": ("_sum", "_count")}.get(fam.type, ("",))
        out |= {fam.name + s for s in suffixes}
    return out
