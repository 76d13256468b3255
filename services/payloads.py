"""Delivery stage: webhook bodies for an alert: native JSON, HL7 FHIR R4 Bundle, Alertmanager.

* ``native``: our own JSON (``cardiowatch.webhook/1``) with every field of the alert,
  times both as ISO-8601 UTC and epoch milliseconds.
* ``fhir``: a FHIR ``Bundle`` (type ``collection``) holding a ``DetectedIssue`` and its
  supporting ``Observation``s: heart rate (LOINC 8867-4) when the alert carries
  ``details["hr_bpm"]``, and the ECG strip (LOINC 11524-6 "EKG study") as
  ``valueSampledData`` in mV. Valid FHIR R4 (4.0.1; the tests validate it with
  ``fhirclient``'s R4 models) and R4B (4.3; ``fhir.resources``), which agree for these
  resources.
* ``alertmanager``: the Prometheus Alertmanager webhook body (``version: "4"``).

Pure functions of the event: the same event always gives the same bytes, so a retried
delivery carries an identical, identically signed body.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from services.routing import PayloadFormat
from streaming.events import AlertEvent

__all__ = [
    "NATIVE_SCHEMA",
    "LOINC_HEART_RATE",
    "LOINC_ECG",
    "iso_utc",
    "native_payload",
    "fhir_bundle",
    "alertmanager_payload",
    "render",
]

NATIVE_SCHEMA = "cardiowatch.webhook/1"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
LOINC_HEART_RATE = "8867-4"
LOINC_ECG = "11524-6"
_NS = uuid.UUID("6f1c3f0e-8d7a-4b53-9a51-3c1f0f3b1c2a")  # fixed namespace: stable uuid5 ids
_CONTENT_TYPES: dict[str, str] = {
    "native": "application/json",
    "fhir": "application/fhir+json",
    "alertmanager": "application/json",
}
_RESOLVED_ACTIONS = frozenset({"cleared", "resolved"})
_FHIR_SEVERITY = {"high": "high", "medium": "moderate", "low": "low"}


def iso_utc(ts_ms: int) -> str:
    """Epoch milliseconds to ISO-8601 UTC with millisecond precision and a ``Z``."""
    dt = datetime.fromtimestamp(ts_ms / 1000.0, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def native_payload(event: AlertEvent) -> dict[str, Any]:
    """Our JSON webhook body."""
    return {
        "schema": NATIVE_SCHEMA,
        "type": f"alert.{event.action}",
        "alert_id": event.alert_id,
        "event_id": event.event_id,
        "revision": event.revision,
        "action": event.action,
        "patient_id": event.patient_id,
        "device_id": event.device_id,
        "condition": event.condition,
        "category": event.category,
        "priority": event.priority,
        "escalation_level": event.escalation_level,
        "onset": iso_utc(event.onset_ts_ms),
        "onset_ts_ms": event.onset_ts_ms,
        "detected": iso_utc(event.detected_ts_ms),
        "detected_ts_ms": event.detected_ts_ms,
        "score": event.score,
        "threshold": event.threshold,
        "model_version": event.model_version,
        "signal_quality": event.signal_quality,
        "rule": event.rule,
        "strip": event.strip,
        "produced_wall_ms": event.produced_wall_ms,
        "details": event.details,
    }


def _urn(event: AlertEvent, part: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, f'{event.event_id}/{part}')}"


def _patient_ref(event: AlertEvent) -> dict[str, Any]:
    return {"identifier": {"system": "urn:cardiowatch:patient", "value": event.patient_id}}


def _fmt_decimal(x: float) -> str:
    return f"{float(x):.4g}"


def fhir_bundle(event: AlertEvent) -> dict[str, Any]:
    """FHIR R4 ``Bundle`` (collection): ``DetectedIssue`` plus supporting ``Observation``s."""
    detected = iso_utc(event.detected_ts_ms)
    observations: list[tuple[str, dict[str, Any]]] = []
    hr = event.details.get("hr_bpm") if event.details else None
    if isinstance(hr, (int, float)) and not isinstance(hr, bool):
        observations.append((_urn(event, "hr"), {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": LOINC_HEART_RATE, "display": "Heart rate"}]},
            "subject": _patient_ref(event),
            "effectiveDateTime": detected,
            "valueQuantity": {"value": round(float(hr), 1), "unit": "beats/minute",
                              "system": UCUM, "code": "/min"},
            "device": {"display": event.device_id},
        }))
    strip = event.strip
    if strip and strip.get("samples_mv"):
        fs = float(strip["sample_rate_hz"])
        if fs <= 0:
            raise ValueError(f"strip sample_rate_hz must be > 0, got {fs}")
        observations.append((_urn(event, "ecg"), {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "procedure", "display": "Procedure"}]}],
            "code": {"coding": [{"system": LOINC, "code": LOINC_ECG, "display": "EKG study"}],
                     "text": "Single-lead ECG strip around the alert"},
            "subject": _patient_ref(event),
            "effectiveDateTime": iso_utc(int(strip.get("start_ts_ms", event.onset_ts_ms))),
            "valueSampledData": {
                "origin": {"value": 0, "unit": "mV", "system": UCUM, "code": "mV"},
                "period": round(1000.0 / fs, 6),  # ms between samples
                "dimensions": 1,
                "data": " ".join(_fmt_decimal(v) for v in strip["samples_mv"]),
            },
            "device": {"display": event.device_id},
        }))
    resolved = event.action in _RESOLVED_ACTIONS
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "identifier": [{"system": "urn:cardiowatch:alert", "value": event.alert_id}],
        "status": "amended" if event.revision > 1 or resolved else "final",
        "code": {"coding": [{"system": "urn:cardiowatch:condition", "code": event.condition,
                             "display": event.condition.replace("_", " ")}],
                 "text": f"{event.condition} ({event.category})"},
        "severity": _FHIR_SEVERITY[event.priority],
        "patient": _patient_ref(event),
        "identifiedDateTime": iso_utc(event.onset_ts_ms),
        "author": {"display": f"cardiowatch {event.model_version or event.rule}"},
        "detail": (f"{event.action}: {event.condition} by rule {event.rule}"
                   + (f", score {event.score:.4g} / threshold {event.threshold:.4g}"
                      if event.score is not None and event.threshold is not None else "")
                   + (f", escalation level {event.escalation_level}" if event.escalation_level else "")),
    }
    if observations:
        issue["evidence"] = [{"detail": [{"reference": url} for url, _ in observations]}]
    if resolved:
        issue["mitigation"] = [{"action": {"text": event.action}, "date": detected}]
    entries = [{"fullUrl": _urn(event, "issue"), "resource": issue}]
    entries += [{"fullUrl": url, "resource": res} for url, res in observations]
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:cardiowatch:event", "value": event.event_id},
        "type": "collection",
        "timestamp": detected,
        "entry": entries,
    }


def _fingerprint(event: AlertEvent) -> str:
    return hashlib.sha256(event.alert_id.encode()).hexdigest()[:16]


def alertmanager_payload(event: AlertEvent, receiver: str = "cardiowatch") -> dict[str, Any]:
    """Prometheus Alertmanager webhook body (``version: "4"``) carrying one alert."""
    resolved = event.action in _RESOLVED_ACTIONS
    status = "resolved" if resolved else "firing"
    labels = {"alertname": event.condition, "severity": event.priority,
              "category": event.category, "patient_id": event.patient_id,
              "device_id": event.device_id, "rule": event.rule}
    annotations = {
        "summary": f"{event.priority} {event.condition} for patient {event.patient_id}",
        "description": f"{event.action} (revision {event.revision}, escalation {event.escalation_level})",
        "alert_id": event.alert_id,
        "event_id": event.event_id,
    }
    if event.score is not None:
        annotations["score"] = f"{event.score:.6g}"
    group_labels = {"alertname": event.condition, "patient_id": event.patient_id}
    return {
        "version": "4",
        "groupKey": f"{{}}:{{alertname=\"{event.condition}\", patient_id=\"{event.patient_id}\"}}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": iso_utc(event.onset_ts_ms),
            "endsAt": iso_utc(event.detected_ts_ms) if resolved else "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": _fingerprint(event),
        }],
    }


def render(event: AlertEvent, fmt: PayloadFormat, receiver: str = "cardiowatch") -> tuple[bytes, str]:
    """Serialise ``event`` in ``fmt``; return ``(body, content_type)``."""
    if fmt == "native":
        doc = native_payload(event)
    elif fmt == "fhir":
        doc = fhir_bundle(event)
    elif fmt == "alertmanager":
        doc = alertmanager_payload(event, receiver)
    else:
        raise ValueError(f"payload format must be native, fhir or alertmanager, got {fmt!r}")
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode(), _CONTENT_TYPES[fmt]
