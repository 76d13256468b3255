"""Subgroup figures: a small hand-computable report, the patient bootstrap (seeded, exact per
resample), the fewer-than-three-patients rule, and the section written by evaluate and by
``cardiowatch subgroups`` on a report computed before."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from models.episodes import EpisodeEvaluation, FalseAlert, pool_episodes
from models.evaluation import evaluate_record, pool
from models.records import Demographics
from services.settings import DEFAULT_MODEL_DIR, REPO_ROOT
from services.subgroups import (
    MIN_PATIENTS,
    age_band,
    format_subgroups_table,
    patient_table,
    resample_figures,
    subgroups_section,
)

FS = 100.0


def _beats(key, classes, scores, flagged, missed=(), extra=0):
    """A record's evaluation: reference beats 1 s apart, all detected but ``missed``,
    plus ``extra`` false detections far from any beat."""
    ref = (np.arange(len(classes)) + 1) * int(FS)
    keep = [i for i in range(len(classes)) if i not in missed]
    det = np.concatenate([ref[keep], 10_000 + 500 * np.arange(extra)]).astype(int)
    sc = np.concatenate([np.asarray(scores, float)[keep], np.zeros(extra)])
    fl = np.concatenate([np.asarray(flagged, bool)[keep], np.zeros(extra, bool)])
    return evaluate_record(ref, list(classes), det, sc, fl, FS, name=key)


def _episodes(key, hours, vt_total=0, vt_detected=0, false_high=0, false_other=0, af_total=0, af_alerted=0):
    fa = tuple(FalseAlert(key, "ventricular_run", "high", 1.0, 1.0, "ecg", True) for _ in range(false_high)) + \
        tuple(FalseAlert(key, "tachycardia", "medium", 1.0, 1.0, "hr", False) for _ in range(false_other))
    return EpisodeEvaluation(name=key, duration_s=hours * 3600.0, vt_total=vt_total,
                             vt_delays_s=(2.0,) * vt_detected, vt_missed=(), sustained_total=0,
                             sustained_alerted=0, af_total=af_total, af_delays_s=(5.0,) * af_alerted,
                             af_missed=(), af_time_s=0.0, af_covered_s=0.0, physiological=len(fa),
                             technical=0, unjudged=0, false_alerts=fa)


# patient -> (folder, record, demographics, beats, episodes); mitdb 230 and qtdb sel230 are
# one patient (patient_of), so the male group has 2 patients from 3 records.
def _synthetic():
    spec = [
        ("mitdb-ds1", "101", Demographics(30, "F"),
         _beats("101", "NNNNVV", [.1, .2, .3, .4, .35, .9], [0, 0, 0, 0, 0, 1], missed=(0,), extra=1),
         _episodes("101", 0.5, vt_total=2, vt_detected=1, false_high=1, false_other=1)),
        ("mitdb-ds1", "106", Demographics(70, "F"),
         _beats("106", "NNNS", [.1, .2, .3, .25], [0, 0, 0, 0]),
         _episodes("106", 0.5, false_other=1)),
        ("mitdb-ds1", "108", Demographics(35, "F"),
         _beats("108", "NNV", [.5, .6, .55], [0, 1, 1]),
         _episodes("108", 1.0, vt_total=1, vt_detected=1, false_high=2)),
        ("mitdb-ds1", "230", Demographics(32, "M"),
         _beats("230", "NNV", [.1, .2, .8], [0, 0, 1]), _episodes("230", 0.5)),
        ("qtdb", "sel230", Demographics(None, "M"),
         _beats("sel230", "NNN", [.1, .2, .3], [0, 0, 0]), _episodes("sel230", 0.25)),
        ("mitdb-ds1", "201", Demographics(68, "M"),
         _beats("201", "NV", [.3, .2], [0, 0]), _episodes("201", 0.5, af_total=1, af_alerted=1)),
        ("svdb", "800", Demographics(),
         _beats("800", "NNS", [.1, .2, .9], [0, 0, 1]), _episodes("800", 0.5, false_high=1)),
    ]
    records, beats, demo, eps = {}, {}, {}, {}
    for folder, name, d, b, e in spec:
        records[name] = {"record": name, "folder": f"/data/{folder}", "duration_s": e.duration_s,
                         **b.to_dict(), "episodes": e.to_dict()}
        beats[name], demo[name], eps[name] = b, d, e
    report = {"records": records, "pooled": {**pool(beats.values()), "episodes": pool_episodes(eps.values())}}
    return report, beats, demo, eps


def _value(section, group, figure):
    return section["groups"][group]["figures"][figure]["value"]


def test_age_bands():
    assert [age_band(a) for a in (0, 28.5, 39.99, 40, 64.9, 65, 89, None)] == \
        ["<40", "<40", "<40", "40-64", "40-64", ">=65", ">=65", "unknown"]
    with pytest.raises(ValueError, match="-1"):
        age_band(-1)


def test_female_figures_are_the_hand_computed_ones():
    report, beats, demo, _ = _synthetic()
    s = subgroups_section(report, beats, demo, resamples=200)
    f = s["groups"]["sex:female"]
    assert (f["n_patients"], f["n_records"], f["hours"]) == (3, 3, 2.0)
    # tp 5 + 4 + 3, one N missed (101), one false detection (101)
    assert _value(s, "sex:female", "qrs_sensitivity") == pytest.approx(12 / 13)
    assert _value(s, "sex:female", "qrs_ppv") == pytest.approx(12 / 13)
    # V .35 .9 .55 against the 8 matched N .2 .3 .4 | .1 .2 .3 | .5 .6: 5 + 8 + 7 of 24 pairs
    assert _value(s, "sex:female", "auroc_V_vs_N") == pytest.approx(20 / 24)
    assert _value(s, "sex:female", "auroc_S_vs_N") == pytest.approx(3 / 8)  # S .25 over .2 .1 .2
    assert s["groups"]["sex:female"]["figures"]["auroc_V_vs_N"]["n_pos"] == 3
    assert _value(s, "sex:female", "flagged_fraction_N") == pytest.approx(1 / 8)
    assert _value(s, "sex:female", "flagged_fraction_V") == pytest.approx(2 / 3)
    assert _value(s, "sex:female", "flagged_fraction_S") == 0.0
    assert _value(s, "sex:female", "vt_detected_fraction") == pytest.approx(2 / 3)
    assert _value(s, "sex:female", "false_high_per_patient_hour") == pytest.approx(3 / 2.0)
    assert _value(s, "sex:female", "false_non_technical_per_patient_hour") == pytest.approx(5 / 2.0)
    assert _value(s, "sex:female", "af_30s_alerted_fraction") is None  # no AF episode: no figure
    assert s["groups"]["sex:female"]["figures"]["af_30s_alerted_fraction"]["ci95"] is None
    # age < 40: 101, 108 and the patient of 230 + sel230 (age 32 from 230; sel230 gives none)
    a = s["groups"]["age:<40"]
    assert (a["n_patients"], a["n_records"], a["hours"]) == (3, 4, 2.25)
    assert _value(s, "age:<40", "qrs_sensitivity") == pytest.approx(14 / 15)  # 5+3+3+3, one missed
    assert _value(s, "age:<40", "false_high_per_patient_hour") == pytest.approx(3 / 2.25)


def test_groups_under_three_patients_give_no_figures_and_say_so():
    report, beats, demo, _ = _synthetic()
    s = subgroups_section(report, beats, demo, resamples=200)
    assert MIN_PATIENTS == 3
    for key, n, recs in (("sex:male", 2, 3), ("sex:unknown", 1, 1), ("age:>=65", 2, 2),
                         ("age:40-64", 0, 0), ("age:unknown", 1, 1)):
        g = s["groups"][key]
        assert (g["n_patients"], g["n_records"], g["figures"]) == (n, recs, None), key
        assert g["note"] == "fewer than 3 patients"
    assert s["patients"]["mitdb/230"] == {"age_years": 32, "sex": "M", "records": ["230", "sel230"]}
    table = format_subgroups_table(s)
    assert "fewer than 3 patients" in table and "92.3% [" in table  # female QRS Se, with its interval


def test_all_patients_match_the_pooled_figures():
    report, beats, demo, _ = _synthetic()
    s = subgroups_section(report, beats, demo, resamples=200)
    p, ep = report["pooled"], report["pooled"]["episodes"]
    assert s["groups"]["all"]["n_patients"] == 6 and s["groups"]["all"]["n_records"] == 7
    assert s["groups"]["all"]["hours"] == pytest.approx(ep["hours"])
    expect = {"qrs_sensitivity": p["qrs_sensitivity"], "qrs_ppv": p["qrs_ppv"],
              **{f"auroc_{k}": v for k, v in p["auroc"].items()},
              **{f"flagged_fraction_{k}": p["flagged_fraction"][k] for k in "NSV"},
              "vt_detected_fraction": ep["vt_episodes"]["sensitivity"],
              "af_30s_alerted_fraction": ep["af_episodes_30s"]["fraction"],
              "false_high_per_patient_hour": ep["false_high_per_patient_hour"],
              "false_non_technical_per_patient_hour": ep["false_non_technical_per_patient_hour"],
              "false_af_per_patient_day": ep["false_af_per_patient_day"]}
    for name, v in expect.items():
        assert _value(s, "all", name) == pytest.approx(v), name


def test_each_resample_equals_pooling_the_drawn_patients_again():
    report, beats, demo, eps = _synthetic()
    t = patient_table(report, beats, demo)
    idx = np.arange(len(t.patients))
    w = np.array([[1, 1, 1, 1, 1, 1], [2, 0, 1, 0, 3, 0], [0, 0, 4, 1, 0, 1]], float)
    got = resample_figures(t, idx, w)
    for b, row in enumerate(w):
        keys = [k for i, n in enumerate(row) for _ in range(int(n)) for k in t.records[i]]
        p = pool(beats[k] for k in keys)
        pe = pool_episodes(eps[k] for k in keys)
        for name, v in (("qrs_sensitivity", p["qrs_sensitivity"]), ("auroc_V_vs_N", p["auroc"]["V_vs_N"]),
                        ("auroc_SVF_vs_N", p["auroc"]["SVF_vs_N"]),
                        ("flagged_fraction_N", p["flagged_fraction"]["N"]),
                        ("false_high_per_patient_hour", pe["false_high_per_patient_hour"])):
            assert got[name][b] == pytest.approx(v), (b, name)
    with pytest.raises(ValueError, match="shape"):
        resample_figures(t, idx, w[:, :3])


def test_bootstrap_is_seeded_and_reproducible():
    report, beats, demo, _ = _synthetic()
    a = subgroups_section(report, beats, demo, resamples=300, seed=7)
    b = subgroups_section(report, beats, demo, resamples=300, seed=7)
    c = subgroups_section(report, beats, demo, resamples=300, seed=8)
    assert a == b
    ci = [(a["groups"][g]["figures"]["auroc_V_vs_N"]["ci95"], c["groups"][g]["figures"]["auroc_V_vs_N"]["ci95"])
          for g in ("all", "sex:female", "age:<40")]
    assert any(x != y for x, y in ci)
    for g in ("all", "sex:female", "age:<40"):
        for f in a["groups"][g]["figures"].values():
            if f["ci95"] is not None:
                assert f["ci95"][0] <= f["ci95"][1]
    with pytest.raises(ValueError, match="resamples"):
        subgroups_section(report, beats, demo, resamples=10)
    json.dumps(a, allow_nan=False)


def test_records_of_one_patient_that_disagree_count_as_unknown():
    report, beats, demo, _ = _synthetic()
    demo = {**demo, "sel230": Demographics(50, "F")}
    s = subgroups_section(report, beats, demo, resamples=200)
    assert s["patients"]["mitdb/230"]["age_years"] is None and s["patients"]["mitdb/230"]["sex"] is None
    assert "mitdb/230" in s["conflicts"]


def _with_header_comment(hea, comment):
    hea.write_text(hea.read_text().rstrip("\n") + f"\n# {comment}\n")


def test_evaluate_writes_the_section_and_the_command_adds_it_to_a_report(tmp_path):
    from models.synthetic import Event, synth_ecg, write_wfdb
    from services.evaluate import evaluate

    folder = tmp_path / "synth"
    for i, (age, sex) in enumerate([(30, "F"), (45, "F"), (70, "F"), (52, "M")]):
        hea = write_wfdb(synth_ecg(60, 250, seed=40 + i, events=[Event("pvc", 20), Event("pvc", 40)]),
                         folder, f"r{i}")
        _with_header_comment(hea, f"{age} {sex} 1000 654 x1")
    plots = tmp_path / "plots"
    rep = evaluate(folder, tmp_path / "r.json", tmp_path / "scores", DEFAULT_MODEL_DIR, "ecg", plots)
    live = rep["subgroups"]
    assert live["groups"]["sex:female"]["n_patients"] == 3 and live["groups"]["sex:male"]["figures"] is None
    assert live["patients"]["synth/r3"]["sex"] == "M"
    assert (plots / "subgroups.png").stat().st_size > 5000
    assert _value(live, "all", "qrs_sensitivity") == rep["pooled"]["qrs_sensitivity"]
    # a report without the section (computed before), completed afterwards from its score CSVs
    old = {k: v for k, v in json.loads((tmp_path / "r.json").read_text()).items() if k != "subgroups"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    out = subprocess.run([sys.executable, "-m", "services.cli", "subgroups", "--report", str(tmp_path / "old.json"),
                          "--records", str(folder), "--plots", str(tmp_path / "p2"),
                          "--out", str(tmp_path / "new.json")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "female" in out.stdout and "fewer than 3 patients" in out.stdout
    new = json.loads((tmp_path / "new.json").read_text())["subgroups"]
    assert new["patients"] == live["patients"]
    for g, grp in live["groups"].items():
        if grp["figures"] is None:
            assert new["groups"][g]["figures"] is None
            continue
        for name, f in grp["figures"].items():
            v = new["groups"][g]["figures"][name]["value"]
            assert (v is None) == (f["value"] is None), (g, name)
            if v is not None:  # the CSVs round scores to 1e-6
                assert v == pytest.approx(f["value"], abs=1e-5), (g, name)
    assert (tmp_path / "p2" / "subgroups.png").is_file()
    # the scores of another run are refused
    bad = subprocess.run([sys.executable, "-m", "services.cli", "subgroups", "--report", str(tmp_path / "old.json"),
                          "--scores-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "score CSV" in bad.stderr


def test_rebuilt_beats_leave_vf_out_of_qrs_figures_as_evaluate_does(tmp_path, shared_data_dir):
    """MIT-BIH 207 has ventricular flutter: QRS Se/+P leave those episodes out (EC57), in the
    evaluate report and in the beats ``cardiowatch subgroups`` rebuilds from the score CSVs."""
    from services.evaluate import evaluate
    from services.subgroups import beats_from_scores

    folder = shared_data_dir / "mitdb-ds1"
    rep = evaluate(folder, tmp_path / "r.json", tmp_path / "scores", DEFAULT_MODEL_DIR, "ecg", None,
                   names=["207"])
    (key, entry), = rep["records"].items()
    assert entry["episodes"]["truth"]["vf"], "207 has VF/VFL episodes"
    ev = beats_from_scores(rep, tmp_path / "scores", [folder])[key]
    assert ev.excluded_detections > 0
    assert (ev.tp, ev.fp, ev.fn) == (entry["tp"], entry["fp"], entry["fn"])
