"""Webhook bodies: native JSON, FHIR Bundle (validated as R4 by fhirclient and as R4B by
fhir.resources), Alertmanager."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.observation import Observation

from services.payloads import (
    LOINC_ECG,
    LOINC_HEART_RATE,
    alertmanager_payload,
    fhir_bundle,
    iso_utc,
    native_payload,
    render,
)
from streaming.events import AlertEvent

ONSET = 1_700_000_000_123


def _event(**kw: object) -> AlertEvent:
    fs = 250
    base = dict(
        alert_id="p7:afib:1700000000123", revision=1, action="raised", patient_id="p7",
        device_id="dev-7", condition="irregular_rhythm", category="physiological",
        priority="high", onset_ts_ms=ONSET, detected_ts_ms=ONSET + 4_000, rule="beats_over_threshold",
        score=0.91, threshold=0.42, model_version="ecg-lstm-ae/3", signal_quality=0.97,
        strip={"sample_rate_hz": fs, "start_ts_ms": ONSET - 2_000,
               "samples_mv": [round(math.sin(2 * math.pi * i / fs), 3) for i in range(fs * 2)]},
        produced_wall_ms=ONSET + 4_100, details={"hr_bpm": 141.5})
    base.update(kw)
    return AlertEvent(**base)  # type: ignore[arg-type]


def test_iso_utc() -> None:
    assert iso_utc(ONSET) == "2023-11-14T22:13:20.123Z"


def test_native_payload_fields() -> None:
    ev = _event()
    d = native_payload(ev)
    assert d["event_id"] == ev.event_id and d["alert_id"] == ev.alert_id
    assert d["onset"] == iso_utc(ONSET) and d["onset_ts_ms"] == ONSET
    assert d["detected_ts_ms"] == ONSET + 4_000
    for k in ("patient_id", "condition", "category", "priority", "score", "threshold",
              "model_version", "signal_quality", "rule", "strip", "action"):
        assert d[k] == getattr(ev, k), k


def test_fhir_bundle_validates_with_fhir_resources_r4b() -> None:
    ev = _event()
    doc = fhir_bundle(ev)
    bundle = Bundle.model_validate(doc)
    assert bundle.type == "collection" and len(bundle.entry) == 3
    issue = DetectedIssue.model_validate(doc["entry"][0]["resource"])
    assert issue.severity == "high"
    refs = {r.reference for r in issue.evidence[0].detail}
    assert refs == {e["fullUrl"] for e in doc["entry"][1:]}
    hr = Observation.model_validate(doc["entry"][1]["resource"])
    assert hr.code.coding[0].code == LOINC_HEART_RATE and hr.code.coding[0].system == "http://loinc.org"
    assert float(hr.valueQuantity.value) == 141.5 and hr.valueQuantity.code == "/min"
    ecg = Observation.model_validate(doc["entry"][2]["resource"])
    assert ecg.code.coding[0].code == LOINC_ECG
    sd = ecg.valueSampledData
    assert float(sd.period) == 4.0 and sd.origin.code == "mV"
    assert len(sd.data.split()) == 500


@pytest.mark.parametrize("strip", [True, False])
def test_fhir_bundle_validates_against_fhir_r4_structure(strip: bool) -> None:
    """fhir.resources ships R4B and R5 only; fhirclient's models are generated from FHIR
    4.0.1 (R4) and, strict, refuse wrong types, unknown elements and missing required ones."""
    from fhirclient.models.bundle import Bundle as R4Bundle
    from fhirclient.models.fhirabstractbase import FHIRValidationError

    ev = _event() if strip else _event(strip=None, details={}, action="resolved", revision=3)
    doc = fhir_bundle(ev)
    bundle = R4Bundle(doc, strict=True)
    kinds = [type(e.resource).__name__ for e in bundle.entry]
    assert kinds == (["DetectedIssue", "Observation", "Observation"] if strip else ["DetectedIssue"])
    # the same validator refuses a bundle that is not R4
    broken = fhir_bundle(ev)
    del broken["entry"][0]["resource"]["status"]
    with pytest.raises(FHIRValidationError, match="status"):
        R4Bundle(broken, strict=True)


def test_fhir_without_strip_or_hr_and_resolved() -> None:
    ev = _event(strip=None, details={}, action="resolved", revision=3)
    doc = fhir_bundle(ev)
    Bundle.model_validate(doc)
    issue = doc["entry"][0]["resource"]
    assert len(doc["entry"]) == 1 and "evidence" not in issue
    assert issue["status"] == "amended" and issue["mitigation"][0]["action"]["text"] == "resolved"


def test_fhir_rejects_bad_sample_rate() -> None:
    ev = _event(strip={"sample_rate_hz": 0, "start_ts_ms": ONSET, "samples_mv": [0.1]})
    with pytest.raises(ValueError, match="sample_rate_hz"):
        fhir_bundle(ev)


def test_alertmanager_firing_and_resolved() -> None:
    firing = alertmanager_payload(_event(), receiver="cardiology")
    assert firing["version"] == "4" and firing["status"] == "firing" and firing["receiver"] == "cardiology"
    a = firing["alerts"][0]
    assert a["labels"]["alertname"] == "irregular_rhythm" and a["labels"]["severity"] == "high"
    assert a["startsAt"] == iso_utc(ONSET) and a["endsAt"].startswith("0001-01-01")
    assert len(a["fingerprint"]) == 16
    res = alertmanager_payload(_event(action="cleared", revision=2))
    assert res["status"] == "resolved" and res["alerts"][0]["endsAt"] == iso_utc(ONSET + 4_000)
    assert res["alerts"][0]["fingerprint"] == a["fingerprint"]  # same episode


def test_render_is_deterministic_and_typed() -> None:
    ev = _event()
    for fmt, ctype in (("native", "application/json"), ("fhir", "application/fhir+json"),
                       ("alertmanager", "application/json")):
        body, ct = render(ev, fmt)  # type: ignore[arg-type]
        assert ct == ctype and body == render(dataclasses.replace(ev), fmt)[0]  # type: ignore[arg-type]
        json.loads(body)
    with pytest.raises(ValueError, match="xml"):
        render(ev, "xml")  # type: ignore[arg-type]
