"""Write deploy/grafana/dashboards/cardiowatch.json, the operations dashboard.

Run ``python deploy/grafana/make_dashboard.py`` after changing a panel; the JSON is kept
in the repository (Grafana provisions it as is) and tests/unit/test_grafana.py checks
that it is this script's output and that every metric it queries is one the worker or
the dispatcher exports.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "cardiowatch-prometheus"}
OUT = Path(__file__).parent / "dashboards" / "cardiowatch.json"


def quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    """p50, p95 and p99 of a histogram over 5 minutes (``by``: extra grouping labels)."""
    grp = f"le{', ' + by if by else ''}"
    leg = f"{{{{{by}}}}} " if by else ""
    return [(f"histogram_quantile({q}, sum by ({grp}) (rate({metric}_bucket[5m])))", f"{leg}p{int(q * 100)}")
            for q in (0.5, 0.95, 0.99)]


# (title, unit, targets [(expr, legend)], description)
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]] = [
    ("Throughput and lag", [
        ("Messages in / s", "ops", [("sum by (stream) (rate(cardiowatch_messages_in_total[1m]))", "{{stream}}")],
         "Raw ECG and heart-rate messages consumed."),
        ("Scored / s", "ops", [("rate(cardiowatch_beats_scored_total[1m])", "beats"),
                               ("rate(cardiowatch_hr_windows_scored_total[1m])", "heart-rate windows")],
         "Beats and heart-rate windows scored by the models."),
        ("Consumer lag (messages)", "short", [("sum by (topic) (cardiowatch_consumer_lag_messages)", "{{topic}}")],
         "Messages behind the log end, summed over workers. Growing lag: add workers (and partitions)."),
        ("Partitions owned", "short", [("cardiowatch_assigned_partitions", "{{instance}} {{topic}}"),
                                       ("cardiowatch_dispatch_assigned_partitions", "{{instance}} alerts")],
         "Partitions each worker and dispatcher owns (scale-out, rebalances)."),
    ]),
    ("Latency", [
        ("Event to score (s)", "s", quantiles("cardiowatch_event_to_score_latency_seconds"),
         "R peak (event time) to its score produced."),
        ("Event to alert (s)", "s", quantiles("cardiowatch_event_to_alert_latency_seconds"),
         "Alert onset (event time) to the alert produced."),
        ("Chunk to output (s)", "s", quantiles("cardiowatch_chunk_to_output_latency_seconds"),
         "End of an ECG chunk to its beats' scores and alerts delivered to Kafka."),
        ("Alert to webhook 2xx (s)", "s", quantiles("cardiowatch_delivery_latency_seconds"),
         "Alert produced to the care team's webhook answering 2xx."),
        ("Stage time per batch (s, p95)", "s", quantiles("cardiowatch_stage_latency_seconds", "stage")[1:2],
         "Wall time per batch in each stage of the worker."),
        ("Model call (s)", "s", quantiles("cardiowatch_inference_latency_seconds"),
         "One batched model call."),
    ]),
    ("Data quality", [
        ("Dead letters / s by reason", "ops",
         [("sum by (stream, reason) (rate(cardiowatch_invalid_messages_total[5m]))", "{{stream}} {{reason}}"),
          ("sum by (outcome) (rate(cardiowatch_deliveries_total{outcome=~\"deadlettered|undecodable\"}[5m]))",
           "alerts {{outcome}}")],
         "Messages rejected at validation (by reason) and alerts the dispatcher could not deliver."),
        ("Stream events / s", "ops",
         [("sum by (stream) (rate(cardiowatch_sequence_gaps_total[5m]))", "gaps {{stream}}"),
          ("sum by (stream) (rate(cardiowatch_device_restarts_total[5m]))", "restarts {{stream}}"),
          ("sum(rate(cardiowatch_device_clock_jumps_total[5m]))", "clock jumps"),
          ("sum by (stream) (rate(cardiowatch_redelivered_messages_total[5m]))", "redelivered {{stream}}"),
          ("sum by (stream) (rate(cardiowatch_records_read_back_total[5m]))", "read back {{stream}}")],
         "Sequence gaps, device restarts and clock jumps, redeliveries after restarts, records read back."),
        ("Errors / s", "ops", [("rate(cardiowatch_send_failures_total[5m])", "Kafka send failures"),
                               ("rate(cardiowatch_tick_errors_total[5m])", "tick errors")],
         "Failed output deliveries to Kafka (retried) and failed periodic checks."),
    ]),
    ("Alerts", [
        ("Alerts raised / min by priority", "short",
         [("sum by (priority) (rate(cardiowatch_alerts_total{action=\"raised\"}[5m])) * 60", "{{priority}}")],
         "New alerts produced by the workers."),
        ("Open alerts", "short", [("sum by (priority) (cardiowatch_open_alerts)", "{{priority}}")],
         "Alerts raised and not yet resolved (dispatcher)."),
        ("Unacknowledged alerts", "short", [("sum by (priority) (cardiowatch_unacknowledged_alerts)", "{{priority}}")],
         "Open alerts nobody has acknowledged."),
        ("Alarm burden (alerts per patient-day)", "short", [("cardiowatch_alerts_per_patient_day", "{{instance}}")],
         "Physiological alerts per patient-day observed: the care team's load."),
        ("Webhook delivery / s", "ops",
         [("sum by (outcome) (rate(cardiowatch_deliveries_total[5m]))", "{{outcome}}"),
          ("rate(cardiowatch_delivery_retries_total[5m])", "retries"),
          ("rate(cardiowatch_delivery_failovers_total[5m])", "failovers"),
          ("rate(cardiowatch_delivery_circuit_skips_total[5m])", "circuit skips")],
         "Outcomes, retries, failovers to the next endpoint, circuit-breaker skips."),
        ("Dispatcher backlog", "short", [("cardiowatch_dispatch_in_flight_messages", "in flight"),
                                         ("cardiowatch_delivery_circuits_open", "circuits open"),
                                         ("rate(cardiowatch_dispatch_parked_total[5m])", "parked / s")],
         "Alert records in flight, webhook endpoints held open by the breaker, records parked."),
    ]),
]


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row in ROWS:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, (title, unit, targets, desc) in enumerate(row):
            panels.append({
                "type": "timeseries", "title": title, "id": pid, "description": desc, "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": 8 * (i % 3), "y": y + 8 * (i // 3)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [{"refId": chr(65 + k), "datasource": DS, "expr": e, "legendFormat": leg}
                            for k, (e, leg) in enumerate(targets)],
            })
            pid += 1
        y += 8 * ((len(row) + 2) // 3)
    return {"uid": "cardiowatch-ops", "title": "cardiowatch operations", "schemaVersion": 39, "version": 1,
            "editable": False, "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
            "tags": ["cardiowatch"], "timezone": "utc", "panels": panels}


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
