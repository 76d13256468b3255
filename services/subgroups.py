"""Subgroups: the pooled evaluation figures by sex and age band, with patient-bootstrap intervals.

``cardiowatch subgroups --report REPORT.json [--records DIR ...] [--scores-dir DIR]
[--annotation atr] [--plots DIR] [--out FILE] [--resamples 1000] [--seed 0]``

A detector that works for 60-year-old men and misses arrhythmias in young women would not
show in pooled figures. This stage takes a finished evaluate report (``REPORT.json``,
:func:`services.evaluate.evaluate`) and each record's demographics
(:func:`models.records.read_demographics`) and adds a ``subgroups`` section: for all
patients, female / male / unknown sex and the age bands under 40, 40-64, 65 and over and
unknown, the number of patients, records and hours, and the pooled figures (QRS Se/+P,
AUROC V|S|SVF vs N, flagged fractions, VT / sustained VT-VF / AF episodes alerted, false
HIGH alarms and false alerts per patient-hour, false AF per patient-day), each with a 95%
percentile interval from a bootstrap over patients. A group with fewer than
:data:`MIN_PATIENTS` patients gives no figures and says so.

The bootstrap unit is the patient (:func:`models.ecg.train.patient_of`: a QT Database
excerpt of a MIT-BIH record is that MIT-BIH patient), since a patient's beats and alarms
are not independent. A resample draws the group's patients with replacement; every figure
is a ratio of sums over patients (AUROC: a weighted Mann-Whitney statistic over per-patient
pairs), so all resamples are computed at once from small per-patient arrays.

``cardiowatch evaluate`` writes the section itself (and ``--plots`` a chart); this command
adds it to a report computed before, e.g. a ``cardiowatch crossval`` report. The per-beat
scores it needs come from the evaluate run's score CSVs (``--scores-dir``) matched again to
the reference annotations (scores there are rounded to 1e-6, so an AUROC may differ from
the live run's in the 5th decimal).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.ecg.train import patient_of
from models.evaluation import RecordEvaluation, evaluate_record, pool
from models.records import Demographics, load_annotations, read_demographics
from models.cli_help import HelpFormatter

__all__ = ["AGE_BANDS", "DEFAULT_RESAMPLES", "FIGURES", "MIN_PATIENTS", "PatientTable", "SUBGROUPS_SCHEMA",
           "age_band", "beats_from_scores", "format_subgroups_table", "main", "patient_table", "plot_subgroups",
           "record_demographics", "resample_figures", "subgroups_section"]

SUBGROUPS_SCHEMA = "cardiowatch.subgroups/1"
MIN_PATIENTS = 3
"""A group with fewer patients gives no figures: an interval over one or two patients is noise."""
DEFAULT_RESAMPLES = 1000
CI_LEVEL = 0.95

AGE_BANDS: tuple[tuple[str, float, float], ...] = (("<40", 0.0, 40.0), ("40-64", 40.0, 65.0),
                                                    (">=65", 65.0, math.inf))
"""``(label, lower_years, upper_years)``: ``lower <= age < upper``."""

_AUROC_POSITIVES: dict[str, tuple[str, ...]] = {"V_vs_N": ("V",), "S_vs_N": ("S",), "SVF_vs_N": ("S", "V", "F")}
_FLAGGED_CLASSES = ("N", "S", "V")
# Ratio figures from the report's per-record episode section: name -> (path to the
# numerator, path to the denominator) in entry["episodes"]; "hours" and "days" are the
# record's duration. Summed over a group's records, as models.episodes.pool_episodes does.
_EPISODE_RATIOS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vt_detected_fraction": (("vt_episodes", "detected"), ("vt_episodes", "total")),
    "ventricular_10s_alerted_fraction": (("ventricular_10s_alerted_within_10s", "alerted"),
                                         ("ventricular_10s_alerted_within_10s", "total")),
    "af_30s_alerted_fraction": (("af_episodes_30s", "alerted"), ("af_episodes_30s", "total")),
    "false_high_per_patient_hour": (("alerts", "false_high"), ("hours",)),
    "false_non_technical_per_patient_hour": (("alerts", "false"), ("hours",)),
    "false_af_per_patient_day": (("alerts", "false_af"), ("days",)),
}
FIGURES: tuple[str, ...] = (
    "qrs_sensitivity", "qrs_ppv", *(f"auroc_{k}" for k in _AUROC_POSITIVES),
    *(f"flagged_fraction_{k}" for k in _FLAGGED_CLASSES), *_EPISODE_RATIOS)
"""The figures of every group, in report order."""


def age_band(age_years: float | None) -> str:
    """The :data:`AGE_BANDS` label of an age, or ``"unknown"``."""
    if age_years is None:
        return "unknown"
    for label, lo, hi in AGE_BANDS:
        if lo <= age_years < hi:
            return label
    raise ValueError(f"age_years must be >= 0, got {age_years}")


@dataclass(frozen=True)
class PatientTable:
    """Per-patient sums behind every figure, one row per patient.

    Attributes
    ----------
    patients
        Patient ids (:func:`models.ecg.train.patient_of`), sorted.
    records
        Report keys of each patient's records.
    demographics
        Each patient's demographics (unknown where the records disagree).
    hours
        float [P]: replayed hours per patient.
    ratios
        figure -> (numerator [P], denominator [P]) for every ratio figure.
    auroc
        figure -> (U [P, P], n_pos [P], n_neg [P]): ``U[p, q]`` counts the pairs of a
        positive beat of patient ``p`` scored above a normal beat of patient ``q`` (ties
        one half).
    beat_evaluations
        Each patient's record evaluations, for the point estimates by :func:`models.evaluation.pool`.
    conflicts
        Patients whose records give different ages or sexes: ``patient -> [record: age sex, ...]``.
    """

    patients: tuple[str, ...]
    records: tuple[tuple[str, ...], ...]
    demographics: tuple[Demographics, ...]
    hours: np.ndarray
    ratios: Mapping[str, tuple[np.ndarray, np.ndarray]]
    auroc: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    beat_evaluations: tuple[tuple[RecordEvaluation, ...], ...]
    conflicts: Mapping[str, list[str]]


def _dig(d: Mapping[str, Any], path: Sequence[str]) -> float:
    x: Any = d
    for k in path:
        x = x[k]
    return float(x or 0)


def _patient_demographics(per_record: Sequence[tuple[str, Demographics]]) -> tuple[Demographics, bool]:
    ages = {d.age_years for _, d in per_record if d.age_years is not None}
    sexes = {d.sex for _, d in per_record if d.sex is not None}
    return (Demographics(ages.pop() if len(ages) == 1 else None, sexes.pop() if len(sexes) == 1 else None),
            len(ages) > 1 or len(sexes) > 1)


def _pair_wins(pos: np.ndarray, neg_sorted: np.ndarray) -> float:
    below = np.searchsorted(neg_sorted, pos, side="left")
    at_or_below = np.searchsorted(neg_sorted, pos, side="right")
    return float(below.sum() + 0.5 * (at_or_below - below).sum())


def _flagged_of(c: str) -> Callable[[RecordEvaluation], float]:
    return lambda ev: float(ev.matched_flagged[ev.matched_classes == c].sum())


def _matched_of(c: str) -> Callable[[RecordEvaluation], float]:
    return lambda ev: float((ev.matched_classes == c).sum())


def patient_table(report: Mapping[str, Any], beats: Mapping[str, RecordEvaluation],
                  demographics: Mapping[str, Demographics]) -> PatientTable:
    """Sum a report's records into one row per patient.

    Parameters
    ----------
    report
        An evaluate report; its ``records`` entries give folder, record, duration, QRS
        counts and episode figures.
    beats
        Report key -> the record's evaluation with its matched beats (classes, scores,
        flags); records of the heart-rate stream alone have none.
    demographics
        Report key -> the record's demographics; a missing key is unknown.
    """
    entries: Mapping[str, Mapping[str, Any]] = report["records"]
    by_patient: dict[str, list[str]] = {}
    for key, e in entries.items():
        by_patient.setdefault(patient_of(Path(e["folder"]).name, e["record"]), []).append(key)
    patients = tuple(sorted(by_patient))
    keys = tuple(tuple(by_patient[p]) for p in patients)
    n = len(patients)
    demo, conflicts = [], {}
    for p, ks in zip(patients, keys):
        d, bad = _patient_demographics([(k, demographics.get(k, Demographics())) for k in ks])
        demo.append(d)
        if bad:
            conflicts[p] = [f"{k}: {demographics[k].age_years} {demographics[k].sex}" for k in ks if k in demographics]
    hours = np.array([sum(float(entries[k]["duration_s"]) for k in ks) / 3600.0 for ks in keys])
    evals: list[tuple[RecordEvaluation, ...]] = []
    for ks in keys:
        evs = []
        for k in ks:
            if k in beats:
                e = entries[k]
                # QRS counts as the report has them (VF episodes left out, EC57)
                evs.append(replace(beats[k], tp=int(e["tp"]), fn=int(e["fn"]), fp=int(e["fp"])))
        evals.append(tuple(evs))

    def per_patient(f: Callable[[RecordEvaluation], float]) -> np.ndarray:
        return np.array([sum(f(ev) for ev in evs) for evs in evals], dtype=np.float64)

    ratios: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "qrs_sensitivity": (per_patient(lambda ev: ev.tp), per_patient(lambda ev: ev.tp + ev.fn)),
        "qrs_ppv": (per_patient(lambda ev: ev.tp), per_patient(lambda ev: ev.tp + ev.fp)),
    }
    for c in _FLAGGED_CLASSES:
        ratios[f"flagged_fraction_{c}"] = (per_patient(_flagged_of(c)), per_patient(_matched_of(c)))

    def total(path: Sequence[str], ks: Sequence[str]) -> float:
        if path in (("hours",), ("days",)):
            return sum(float(entries[k]["duration_s"]) for k in ks) / (3600.0 if path == ("hours",) else 86400.0)
        return sum(_dig(entries[k]["episodes"], path) for k in ks)

    for name, (num, den) in _EPISODE_RATIOS.items():
        ratios[name] = (np.array([total(num, ks) for ks in keys]), np.array([total(den, ks) for ks in keys]))
    auroc: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    cls = [np.concatenate([ev.matched_classes for ev in evs]) if evs else np.zeros(0, str) for evs in evals]
    sc = [np.concatenate([ev.matched_scores for ev in evs]) if evs else np.zeros(0) for evs in evals]
    neg = [np.sort(s[c == "N"]) for c, s in zip(cls, sc)]
    for name, positives in _AUROC_POSITIVES.items():
        pos = [s[np.isin(c, positives)] for c, s in zip(cls, sc)]
        u = np.zeros((n, n))
        for i in range(n):
            if pos[i].size:
                for j in range(n):
                    if neg[j].size:
                        u[i, j] = _pair_wins(pos[i], neg[j])
        auroc[f"auroc_{name}"] = (u, np.array([x.size for x in pos], float), np.array([x.size for x in neg], float))
    return PatientTable(patients, keys, tuple(demo), hours, ratios, auroc, tuple(evals), conflicts)


def _resample_weights(n: int, resamples: int, seed: int, group: str) -> np.ndarray:
    """int [resamples, n]: how often each patient is drawn in each resample. Seeded by
    ``seed`` and the group's name, so a group's intervals do not move when others change."""
    rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _interval(samples: np.ndarray) -> list[float] | None:
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return None
    a = (1.0 - CI_LEVEL) / 2.0
    lo, hi = np.quantile(ok, [a, 1.0 - a])
    return [float(lo), float(hi)]


def resample_figures(t: PatientTable, idx: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every figure of the patients ``idx`` under each row of ``weights``.

    Parameters
    ----------
    t
        The per-patient sums (:func:`patient_table`).
    idx
        int [n]: the group's patients (rows of ``t``).
    weights
        [B, n]: how often each of them is drawn in each resample (a row of ones is the
        group itself).

    Returns
    -------
    dict
        figure -> float [B] (NaN where a resample has no denominator, e.g. no V beats).
    """
    idx = np.asarray(idx, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != idx.size:
        raise ValueError(f"weights must have shape [resamples, {idx.size}], got {w.shape}")
    out: dict[str, np.ndarray] = {}
    for name in FIGURES:
        if name in t.auroc:
            u, npos, nneg = t.auroc[name]
            # weighted Mann-Whitney: sum_pq w_p w_q U_pq / (sum_p w_p pos_p * sum_q w_q neg_q)
            out[name] = _ratio(np.einsum("bi,ij,bj->b", w, u[np.ix_(idx, idx)], w),
                               (w @ npos[idx]) * (w @ nneg[idx]))
        else:
            num, den = t.ratios[name]
            out[name] = _ratio(w @ num[idx], w @ den[idx])
    return out


def _figures(t: PatientTable, idx: np.ndarray, w: np.ndarray) -> dict[str, dict[str, Any]]:
    """Point estimate, interval and the counts behind every figure for patients ``idx``;
    ``w`` [B, len(idx)] are the bootstrap weights."""
    evs = [ev for i in idx for ev in t.beat_evaluations[i]]
    # the beat figures as evaluate pools them (models.evaluation.pool); the episode ratios
    # are sums over records, as models.episodes.pool_episodes computes them
    pooled = pool(evs) if evs else None
    boot = resample_figures(t, idx, w)
    out: dict[str, dict[str, Any]] = {}
    for name in FIGURES:
        point: float | None
        counts: dict[str, Any]
        if name in t.auroc:
            _u, npos, nneg = t.auroc[name]
            point = pooled["auroc"][name[len("auroc_"):]] if pooled else None
            counts = {"n_pos": int(npos[idx].sum()), "n_neg": int(nneg[idx].sum())}
        else:
            num, den = float(t.ratios[name][0][idx].sum()), float(t.ratios[name][1][idx].sum())
            if name.startswith("flagged_fraction_"):
                point = pooled["flagged_fraction"][name[-1]] if pooled else None
            elif name in ("qrs_sensitivity", "qrs_ppv"):
                point = pooled[name] if pooled else None
            else:
                point = num / den if den > 0 else None
            counts = {"numerator": round(num, 6), "denominator": round(den, 6)}
        out[name] = {"value": point, "ci95": _interval(boot[name]) if point is not None else None, **counts}
    return out


def _groups(t: PatientTable) -> dict[str, tuple[str, str, np.ndarray]]:
    """group key -> (grouping, label, patient indices)."""
    sex = np.array([d.sex or "unknown" for d in t.demographics])
    band = np.array([age_band(d.age_years) for d in t.demographics])
    out = {"all": ("all", "all patients", np.arange(len(t.patients)))}
    for code, name, label in (("F", "female", "female"), ("M", "male", "male"), ("unknown", "unknown", "sex unknown")):
        out[f"sex:{name}"] = ("sex", label, np.flatnonzero(sex == code))
    for label in [b[0] for b in AGE_BANDS] + ["unknown"]:
        out[f"age:{label}"] = ("age", f"age {label}" if label != "unknown" else "age unknown",
                               np.flatnonzero(band == label))
    return out


def subgroups_section(report: Mapping[str, Any], beats: Mapping[str, RecordEvaluation],
                      demographics: Mapping[str, Demographics], *, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = 0) -> dict[str, Any]:
    """The ``subgroups`` section of a report (JSON-safe).

    Parameters
    ----------
    report
        A finished evaluate report.
    beats
        Report key -> the record's evaluation with matched beats (see :func:`patient_table`).
    demographics
        Report key -> the record's demographics (:func:`record_demographics`).
    resamples, seed
        Bootstrap resamples over patients and the seed that makes them reproducible.

    Returns
    -------
    dict
        ``patients`` (id -> age, sex, records), ``groups`` (key -> grouping, label,
        n_patients, n_records, hours, and ``figures`` name -> value, ``ci95`` ``[lo, hi]``
        and the counts behind it, or ``figures: null`` with a ``note`` when the group has
        fewer than :data:`MIN_PATIENTS` patients).
    """
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100 for a 95% interval, got {resamples}")
    t = patient_table(report, beats, demographics)
    groups: dict[str, Any] = {}
    for key, (grouping, label, idx) in _groups(t).items():
        g: dict[str, Any] = {"grouping": grouping, "label": label, "n_patients": int(idx.size),
                             "n_records": int(sum(len(t.records[i]) for i in idx)),
                             "hours": round(float(t.hours[idx].sum()), 4)}
        if idx.size < MIN_PATIENTS:
            g["figures"] = None
            g["note"] = f"fewer than {MIN_PATIENTS} patients"
        else:
            g["figures"] = _figures(t, idx, _resample_weights(idx.size, resamples, seed, key))
        groups[key] = g
    return {
        "schema": SUBGROUPS_SCHEMA,
        "unit": "patient",
        "bootstrap": {"resamples": resamples, "seed": seed, "level": CI_LEVEL, "method": "percentile",
                      "over": "patients, with replacement, within each group"},
        "min_patients": MIN_PATIENTS,
        "age_bands_years": [[label, lo, None if math.isinf(hi) else hi] for label, lo, hi in AGE_BANDS],
        "patients": {p: {"age_years": d.age_years, "sex": d.sex, "records": list(ks)}
                     for p, d, ks in zip(t.patients, t.demographics, t.records)},
        "conflicts": dict(t.conflicts),
        "groups": groups,
    }


def _folder_for(entry: Mapping[str, Any], folders: Sequence[Path] | None) -> Path:
    """The folder of a report record: the one of ``folders`` with its folder's name, else its own."""
    own = Path(entry["folder"])
    for f in folders or ():
        if Path(f).name == own.name:
            return Path(f)
    return own


def record_demographics(report: Mapping[str, Any], folders: Sequence[Path] | None = None) -> dict[str, Demographics]:
    """Report key -> the demographics in the record's header (``folders`` relocate the
    report's folders by name, for a report computed elsewhere)."""
    return {key: read_demographics(_folder_for(e, folders), e["record"]) for key, e in report["records"].items()}


def _read_scores(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        t = np.array([float(r["time_s"]) for r in rows])
        s = np.array([float(r["score"]) for r in rows])
        fl = np.array([int(r["flagged"]) for r in rows], dtype=bool)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path} must be an evaluate score CSV (time_s, score, flagged), got: {e}") from None
    return t, s, fl


def beats_from_scores(report: Mapping[str, Any], scores_dir: Path, folders: Sequence[Path] | None = None,
                      annotation: str = "atr") -> dict[str, RecordEvaluation]:
    """Rebuild each ECG record's matched beats from the evaluate run's score CSVs.

    The detections of ``{scores_dir}/{key}.csv`` are matched to the record's reference
    annotations exactly as evaluate matched them (:func:`models.evaluation.evaluate_record`),
    leaving out of QRS Se/+P the record's VF/VFL truth episodes that the report lists.

    Raises
    ------
    FileNotFoundError
        If a record's score CSV is missing.
    ValueError
        If the rebuilt matched beats disagree with the report's counts (the CSVs are of
        another run, or ``annotation`` is not the run's).
    """
    from services.evaluate import _file_stem

    out: dict[str, RecordEvaluation] = {}
    for key, e in report["records"].items():
        if "matched_counts" not in e:
            continue  # heart-rate stream alone: no beats scored
        path = Path(scores_dir) / f"{_file_stem(key)}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"no score CSV for record {key!r}: {path} (pass the run's --scores-dir)")
        ann = load_annotations(_folder_for(e, folders), e["record"], annotation)
        t, s, fl = _read_scores(path)
        fs = ann.sample_rate_hz
        # the VF/VFL episodes evaluate left out of QRS Se/+P (EC57), from the report
        vf = [(float(a), float(b)) for a, b in e.get("episodes", {}).get("truth", {}).get("vf", [])]
        ev = evaluate_record(ann.beat_samples, ann.aami_classes, np.round(t * fs).astype(int), s, fl, fs,
                             name=key, exclude_s=vf)
        if ev.matched_counts != e["matched_counts"] or (ev.tp, ev.fp) != (e.get("tp", ev.tp), e.get("fp", ev.fp)):
            raise ValueError(f"record {key!r}: score CSV {path} matches beats {ev.matched_counts} "
                             f"(tp {ev.tp}, fp {ev.fp}), the report has {e['matched_counts']} (tp {e.get('tp')}, "
                             f"fp {e.get('fp')}): the CSVs must be of this report's run")
        out[key] = ev
    return out


# -- text table ------------------------------------------------------------------------

_ROWS: tuple[tuple[str, str, str], ...] = (
    ("QRS Se", "qrs_sensitivity", "pct"), ("QRS +P", "qrs_ppv", "pct"),
    ("AUROC V vs N", "auroc_V_vs_N", "auc"), ("AUROC S vs N", "auroc_S_vs_N", "auc"),
    ("AUROC SVF vs N", "auroc_SVF_vs_N", "auc"),
    ("flagged N", "flagged_fraction_N", "pct"), ("flagged S", "flagged_fraction_S", "pct"),
    ("flagged V", "flagged_fraction_V", "pct"),
    ("VT episodes detected", "vt_detected_fraction", "pct"),
    ("VT/VF >= 10 s HIGH in 10 s", "ventricular_10s_alerted_fraction", "pct"),
    ("AF >= 30 s alerted", "af_30s_alerted_fraction", "pct"),
    ("false HIGH / patient-hour", "false_high_per_patient_hour", "rate"),
    ("false alerts / patient-hour", "false_non_technical_per_patient_hour", "rate"),
    ("false AF / patient-day", "false_af_per_patient_day", "rate"),
)


def _cell(f: Mapping[str, Any] | None, kind: str) -> str:
    if f is None or f.get("value") is None:
        return "-"

    def fmt(x: float) -> str:
        return f"{100 * x:.1f}" if kind == "pct" else f"{x:.3f}" if kind == "auc" else f"{x:.2f}"

    ci = f.get("ci95")
    unit = "%" if kind == "pct" else ""
    return f"{fmt(f['value'])}{unit} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else f"{fmt(f['value'])}{unit}"


def format_subgroups_table(section: Mapping[str, Any]) -> str:
    """The subgroup figures as text: one table by sex, one by age band, each with all
    patients first; intervals in brackets."""
    groups: Mapping[str, Any] = section["groups"]
    blocks = []
    for grouping in ("sex", "age"):
        cols = {"all": groups["all"], **{k: g for k, g in groups.items() if g["grouping"] == grouping}}
        head = [g["label"] for g in cols.values()]
        rows = [["patients / records / hours"] + [f"{g['n_patients']} / {g['n_records']} / {g['hours']:.1f} h"
                                                  for g in cols.values()]]
        for label, name, kind in _ROWS:
            rows.append([label] + [(_cell(g["figures"][name], kind) if g["figures"] is not None
                                    else g.get("note", "-")) for g in cols.values()])
        widths = [max(len(r[i]) for r in rows + [[""] + head]) for i in range(len(head) + 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip([""] + head, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        blocks.append("\n".join(lines))
    b = section["bootstrap"]
    foot = (f"[..]: {int(100 * b['level'])}% interval, {b['resamples']} bootstrap resamples of patients "
            f"(seed {b['seed']}); groups of fewer than {section['min_patients']} patients get no figures.")
    if section.get("conflicts"):
        foot += f"\nrecords of one patient disagree on age or sex (counted unknown): {section['conflicts']}"
    return "\n\n".join(blocks + [foot])


# -- chart -----------------------------------------------------------------------------

_PLOTTED = ("qrs_sensitivity", "auroc_V_vs_N", "auroc_SVF_vs_N", "flagged_fraction_N", "flagged_fraction_V",
            "vt_detected_fraction", "af_30s_alerted_fraction", "false_high_per_patient_hour",
            "false_non_technical_per_patient_hour")


def plot_subgroups(path: Path, section: Mapping[str, Any]) -> Path:
    """Chart the key figures by subgroup (:func:`models.plots.plot_interval_panels`)."""
    from models.plots import plot_interval_panels

    groups: Mapping[str, Any] = section["groups"]
    labels = {name: label for label, name, _ in _ROWS}
    panels = {}
    for name in _PLOTTED:
        rows = []
        for g in groups.values():
            f = g["figures"][name] if g["figures"] is not None else None
            v = f.get("value") if f else None
            ci = f.get("ci95") if f else None
            rows.append((f"{g['label']} (n={g['n_patients']})", v, ci[0] if ci else None, ci[1] if ci else None))
        panels[labels[name]] = rows
    b = section["bootstrap"]
    return plot_interval_panels(path, panels, f"figures by subgroup, {int(100 * b['level'])}% patient-bootstrap "
                                f"intervals ({b['resamples']} resamples); no dot: fewer than "
                                f"{section['min_patients']} patients or no events")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch subgroups", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--report", type=Path, required=True, help="REPORT.json of cardiowatch evaluate or crossval")
    p.add_argument("--records", type=Path, nargs="*", default=None,
                   help="record folders (default: the report's own); matched to the report's by folder name")
    p.add_argument("--scores-dir", type=Path, help="the run's per-record score CSVs (default: <report dir>/scores)")
    p.add_argument("--annotation", default="atr", help="the run's reference annotation extension (default atr)")
    p.add_argument("--plots", type=Path, help="write subgroups.png here")
    p.add_argument("--out", type=Path, help="report to write (default: --report, rewritten with the section)")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples over patients")
    p.add_argument("--seed", type=int, default=0, help="random seed of the patient bootstrap")
    a = p.parse_args(argv)
    for folder in a.records or ():
        if not folder.is_dir():
            p.error(f"--records must be folders, got {folder}")
    try:
        report = json.loads(a.report.read_text())
        if "records" not in report:
            raise ValueError(f"--report must be an evaluate report with a 'records' section, got keys {sorted(report)}")
        scores_dir = a.scores_dir or a.report.parent / "scores"
        beats = beats_from_scores(report, scores_dir, a.records, a.annotation)
        section = subgroups_section(report, beats, record_demographics(report, a.records),
                                    resamples=a.resamples, seed=a.seed)
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"cardiowatch subgroups: {e}", file=sys.stderr)
        return 2
    report["subgroups"] = section
    _write_atomic(a.out or a.report, json.dumps(report, indent=1, allow_nan=False))
    if a.plots:
        plot_subgroups(a.plots / "subgroups.png", section)
    print(format_subgroups_table(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
