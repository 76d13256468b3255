"""Metrics: every Prometheus metric of every process, built against an injected registry.

Names follow ``cardiowatch_<noun>_<unit>``; counters end in ``_total``; durations are
seconds. Labels are bounded (``stage``, ``reason``, ``priority``, ``outcome``...); a
patient id is never a label. Tests pass a fresh ``CollectorRegistry()``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics", "LATENCY_BUCKETS_S", "DispatcherMetrics"]

# Event-to-score latency is seconds-scale: chunks are ~1 s long and beats need the
# samples after the R peak, so buckets span 50 ms .. 60 s.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


class WorkerMetrics:
    """Metrics of the streaming worker (``cardiowatch worker``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages_in = Counter(
            "cardiowatch_messages_in_total", "Messages consumed from raw topics.",
            ["stream"], registry=registry)
        self.invalid = Counter(
            "cardiowatch_invalid_messages_total", "Messages rejected at validation, by reason.",
            ["stream", "reason"], registry=registry)
        self.gaps = Counter(
            "cardiowatch_sequence_gaps_total", "Sequence gaps seen in device streams.",
            ["stream"], registry=registry)
        self.redelivered = Counter(
            "cardiowatch_redelivered_messages_total",
            "Messages seen again after a restart and skipped (already in state).",
            ["stream"], registry=registry)
        self.clock_jumps = Counter(
            "cardiowatch_device_clock_jumps_total",
            "Device clock jumps: a stream re-anchored to the device's new time, or one "
            "message stamped off the stream's time and set aside, by direction.",
            ["stream", "direction"], registry=registry)
        self.restarts = Counter(
            "cardiowatch_device_restarts_total",
            "Device sequence restarts (reboots): each starts a new stream epoch.",
            ["stream"], registry=registry)
        self.read_back = Counter(
            "cardiowatch_records_read_back_total",
            "Records the consumer skipped over, read back from the log by offset.",
            ["stream"], registry=registry)
        self.beats_scored = Counter(
            "cardiowatch_beats_scored_total", "Beats scored by the ECG detector.",
            registry=registry)
        self.hr_scored = Counter(
            "cardiowatch_hr_windows_scored_total", "Heart-rate windows scored.",
            registry=registry)
        self.batch_size = Histogram(
            "cardiowatch_inference_batch_size", "Beats per model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=registry)
        self.inference_latency = Histogram(
            "cardiowatch_inference_latency_seconds", "Wall time of one batched model call.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry)
        self.event_to_score = Histogram(
            "cardiowatch_event_to_score_latency_seconds",
            "Wall time from a beat's R peak (event time) to its score being produced.",
            buckets=LATENCY_BUCKETS_S, registry=registry)
        self.event_to_alert = Histogram(
            "cardiowatch_event_to_alert_latency_seconds",
            "Wall time from an alert's onset (event time) to the alert being produced.",
            buckets=LATENCY_BUCKETS_S, registry=registry)
        self.chunk_to_output = Histogram(
            "cardiowatch_chunk_to_output_latency_seconds",
            "Wall time from the end of an ECG chunk (event time of its last sample) to its "
            "beats' scores and alerts being delivered to Kafka: the streaming overhead, "
            "without the beat window's wait for later samples.",
            buckets=LATENCY_BUCKETS_S, registry=registry)
        self.alerts = Counter(
            "cardiowatch_alerts_total", "Alert events produced, by priority and action.",
            ["priority", "action"], registry=registry)
        self.send_failures = Counter(
            "cardiowatch_send_failures_total",
            "Failed attempts to deliver a batch's outputs to Kafka (each is retried).",
            registry=registry)
        self.tick_errors = Counter(
            "cardiowatch_tick_errors_total",
            "Patients whose periodic check failed (logged and skipped).", registry=registry)
        self.consumer_lag = Gauge(
            "cardiowatch_consumer_lag_messages", "Messages behind the log end, by topic.",
            ["topic"], registry=registry)
        self.assigned_partitions = Gauge(
            "cardiowatch_assigned_partitions",
            "Partitions of each input topic this worker owns now (scale-out and rebalances).",
            ["topic"], registry=registry)
        self.stage_latency = Histogram(
            "cardiowatch_stage_latency_seconds", "Wall time spent per batch in each stage.",
            ["stage"], buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=registry)


class DispatcherMetrics:
    """Metrics of the alert dispatcher (``cardiowatch dispatch``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "cardiowatch_deliveries_total",
            "Alert events finished by the dispatcher, by outcome "
            "(delivered, failover_delivered, deadlettered, undecodable) and priority.",
            ["outcome", "priority"], registry=registry)
        self.delivery_latency = Histogram(
            "cardiowatch_delivery_latency_seconds",
            "Wall time from the alert being produced (produced_wall_ms) to a 2xx answer.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=registry)
        self.retries = Counter(
            "cardiowatch_delivery_retries_total",
            "Delivery attempts after the first on the same endpoint.", registry=registry)
        self.failovers = Counter(
            "cardiowatch_delivery_failovers_total",
            "Deliveries moved from an endpoint to the next one after it failed.", registry=registry)
        self.circuit_skips = Counter(
            "cardiowatch_delivery_circuit_skips_total",
            "Deliveries sent straight to the next endpoint because the circuit breaker held "
            "the endpoint before it open.", registry=registry)
        self.circuits_open = Gauge(
            "cardiowatch_delivery_circuits_open",
            "Webhook endpoints the circuit breaker holds open now.", registry=registry)
        self.open_alerts = Gauge(
            "cardiowatch_open_alerts", "Alerts raised and not yet resolved, by priority.",
            ["priority"], registry=registry)
        self.alerts_held = Gauge(
            "cardiowatch_dispatch_alerts_held",
            "Alerts the dispatcher holds in memory, by store (book: the ack API's alert book; "
            "tracker: escalation), open ones and finished ones not yet past the retention.",
            ["store"], registry=registry)
        self.unacknowledged = Gauge(
            "cardiowatch_unacknowledged_alerts", "Open alerts nobody has acknowledged, by priority.",
            ["priority"], registry=registry)
        self.alerts_per_patient_day = Gauge(
            "cardiowatch_alerts_per_patient_day",
            "Alert burden: physiological alerts raised divided by patient-days observed, where "
            "a patient's observed time is the event-time span from their first alert onset to "
            "their latest alert detection, counted as at least one hour per patient.",
            registry=registry)
        self.in_flight = Gauge(
            "cardiowatch_dispatch_in_flight_messages",
            "Alert records consumed and not yet delivered or dead-lettered.", registry=registry)
        self.assigned_partitions = Gauge(
            "cardiowatch_dispatch_assigned_partitions",
            "Partitions of the alerts topic this dispatcher owns now (several dispatchers "
            "in one group share them).", registry=registry)
        self.held_bytes = Gauge(
            "cardiowatch_dispatch_held_bytes",
            "Bytes of alert records held in memory while they wait for delivery.",
            registry=registry)
        self.parked = Counter(
            "cardiowatch_dispatch_parked_total",
            "Alert records that waited behind their patient's earlier alerts with only their "
            "offset in memory (the held-bytes budget was spent) and were read back from the "
            "log when their turn came.", registry=registry)
