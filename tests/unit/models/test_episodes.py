"""Truth episodes and episode-level alarm figures on small hand-made records and alerts."""

from __future__ import annotations

import numpy as np
import pytest

from models.episodes import (
    AlertSpan,
    Episode,
    EpisodeRules,
    TruthEpisodes,
    bracket_episodes,
    evaluate_episodes,
    judge_alert,
    merge_episodes,
    pool_episodes,
    rhythm_episodes,
    truth_episodes,
    ventricular_runs,
)

FS = 360.0


def alert(condition: str, raised_s: float, onset_s: float | None = None, cleared_s: float | None = None,
          priority: str = "high", category: str = "physiological", high_s: float | None = -1.0,
          limit_bpm: float | None = None, stream: str = "ecg") -> AlertSpan:
    """An alert; ``high_s`` defaults to ``raised_s`` for a high one, ``None`` otherwise."""
    if high_s == -1.0:
        high_s = raised_s if priority == "high" else None
    return AlertSpan(condition, category, priority, stream, raised_s if onset_s is None else onset_s,
                     raised_s, cleared_s, high_s, limit_bpm)


def spans(eps) -> list[tuple[float, float, str]]:
    return [(e.start_s, e.end_s, e.kind) for e in eps]


def regular_beats(start_s: float, end_s: float, rr_s: float) -> np.ndarray:
    return np.arange(start_s, end_s, rr_s)


# ---------------------------------------------------------------- truth episodes
def test_rhythm_episodes_run_to_the_next_change_or_the_end():
    ann = [(int(5 * FS), "(N"), (int(10 * FS), "(AFIB"), (int(20 * FS), "(AFIB"),  # repeated: one
           (int(40 * FS), "(N\x00"), (int(60 * FS), "(VT"), (int(62 * FS), "(N")]
    assert spans(rhythm_episodes(ann, FS, 100.0)) == [
        (5.0, 10.0, "N"), (10.0, 40.0, "AFIB"), (40.0, 60.0, "N"), (60.0, 62.0, "VT"), (62.0, 100.0, "N")]
    assert rhythm_episodes([], FS, 100.0) == ()
    with pytest.raises(ValueError, match="sample_rate_hz"):
        rhythm_episodes(ann, 0.0, 100.0)


def test_bracket_episodes_pair_onsets_and_ends():
    vf = [(int(10 * FS), "["), (int(20 * FS), "]"), (int(50 * FS), "[")]
    assert spans(bracket_episodes(vf, FS, 80.0)) == [(10.0, 20.0, "VF"), (50.0, 80.0, "VF")]
    # a record that starts in VF: the first mark is its end
    assert spans(bracket_episodes([(int(3 * FS), "]")], FS, 80.0)) == [(0.0, 3.0, "VF")]
    with pytest.raises(ValueError, match="symbols"):
        bracket_episodes([(1, "!")], FS, 80.0)


def test_ventricular_runs_need_three_beats_at_100_bpm():
    t = [0.0, 1.0, 2.0,  3.0, 3.4, 3.8,  5.0,  10.0, 11.0, 12.0,  20.0, 20.3,  30.0, 30.5, 31.0, 31.6]
    c = ["N", "N", "N",  "V", "V", "V",  "N",  "V", "V", "V",  "V", "V",  "V", "V", "V", "V"]
    # 3.0-3.8: three V beats at 150 bpm. From 10.0 on, nine consecutive V beats form one
    # run whose mean rate (8 intervals in 21.6 s) is far below 100 bpm: not VT.
    runs = ventricular_runs(t, c)
    assert spans(runs) == [(3.0, 3.8, "VRUN")]
    c2 = list(c)
    c2[11] = "N"  # the beat at 20.3 becomes N: 30.0-31.6 is its own run, 3 intervals in 1.6 s
    # (112 bpm); 10.0-20.0 stays a slow run
    assert spans(ventricular_runs(t, c2)) == [(3.0, 3.8, "VRUN"), (30.0, 31.6, "VRUN")]
    with pytest.raises(ValueError, match="one class per beat"):
        ventricular_runs(t, c[:-1])


def test_merge_joins_overlapping_and_touching():
    eps = [Episode(10, 20, "a"), Episode(15, 25, "b"), Episode(25, 30, "c"), Episode(40, 41, "d")]
    assert spans(merge_episodes(eps, "VT")) == [(10, 30, "VT"), (40, 41, "VT")]


def test_truth_episodes_combine_rhythms_runs_and_brackets():
    t = np.concatenate([regular_beats(0, 9.9, 1.0), [10.5, 10.9, 11.3], regular_beats(12, 30, 1.0)])
    c = np.array(["N"] * t.size)
    c[10:13] = "V"
    rhythm = [(0, "(N"), (int(10 * FS), "(VT"), (int(11 * FS), "(N"), (int(40 * FS), "(VFL"),
              (int(50 * FS), "(N"), (int(60 * FS), "(AFIB"), (int(90 * FS), "(AFL"), (int(95 * FS), "(N")]
    vf = [(int(45 * FS), "["), (int(55 * FS), "]")]
    tr = truth_episodes(t, c, rhythm, vf, FS, 100.0)
    assert spans(tr.vt) == [(10.0, 11.3, "VT")]  # (VT rhythm and the V run merged
    assert spans(tr.vf) == [(40.0, 55.0, "VF")]  # (VFL and the bracket merged
    assert spans(tr.af) == [(60.0, 90.0, "AF")]
    assert spans(tr.afl) == [(90.0, 95.0, "AFL")]
    assert tr.to_dict()["vf"] == [[40.0, 55.0]]



def test_slow_annotated_vt_is_a_slow_ventricular_run_not_vt():
    """Record 223 annotates ``(VT`` over triplets at 88 bpm: VT is >= 3 V beats at >= 100 bpm,
    so such an episode leaves the VT figures (like AFL from AF's) and is counted apart."""
    t = np.concatenate([regular_beats(0, 9.9, 1.0), [10.2, 10.9, 11.6],  # 3 V at 86 bpm
                        regular_beats(12.4, 29.9, 1.0), [30.2, 30.6, 31.0],  # 3 V at 150 bpm
                        regular_beats(32, 60, 1.0)])
    c = np.array(["N"] * t.size)
    slow_i = np.flatnonzero(np.isin(t, [10.2, 10.9, 11.6]))
    fast_i = np.flatnonzero(np.isin(t, [30.2, 30.6, 31.0]))
    c[slow_i] = "V"
    c[fast_i] = "V"
    rhythm = [(0, "(N"), (int(10.1 * FS), "(VT"), (int(11.8 * FS), "(N"), (int(30.1 * FS), "(VT"),
              (int(31.2 * FS), "(N"), (int(40 * FS), "(VT"), (int(42 * FS), "(N")]
    tr = truth_episodes(t, c, rhythm, [], FS, 60.0)
    # the fast one stays VT; 40-42 s has no V beats to judge by, so its rhythm label stands
    assert [(round(e.start_s, 1), round(e.end_s, 1)) for e in tr.vt] == [(30.1, 31.2), (40.0, 42.0)]
    assert [(round(e.start_s, 1), round(e.end_s, 1)) for e in tr.slow_vt] == [(10.1, 11.8)]
    assert tr.to_dict()["slow_vt"] == [[round(10.1 * FS) / FS, round(11.8 * FS) / FS]]
    # an alert over the slow run is true, not false, and counts for the slow run only
    a = alert("ventricular_run", 11.0, cleared_s=20.0)
    ev = evaluate_episodes("r", tr, [a], t, c, 60.0)
    assert ev.verdicts == ("true",)
    assert (ev.vt_total, len(ev.vt_delays_s), ev.slow_vt_total, ev.slow_vt_alerted) == (2, 0, 1, 1)
    assert ev.to_dict()["slow_ventricular_runs"] == {"total": 1, "alerted_high": 1}
    assert pool_episodes([ev, ev])["slow_ventricular_runs"] == {"total": 2, "alerted_high": 2}
    # without the slow run in the truth the same alert is false
    assert judge_alert(a, TruthEpisodes(vt=tr.vt), t, c, 60.0) == "false"


# ---------------------------------------------------------------- episode detection
def test_vt_sensitivity_window_open_at_onset_and_delay():
    truth = TruthEpisodes(vt=(Episode(100, 105, "VT"), Episode(200, 202, "VT"), Episode(300, 301, "VT"),
                              Episode(400, 401, "VT")))
    alerts = [
        alert("ventricular_run", 102.0, cleared_s=110.0),  # inside: delay 2 s
        alert("ventricular_run", 150.0, cleared_s=250.0),  # open (HIGH) at 200: delay 0
        alert("ventricular_run", 306.5, cleared_s=320.0),  # 5.5 s after the end: too late
        alert("tachycardia", 400.5, cleared_s=420.0),  # HIGH, but not a ventricular alert
        alert("ventricular_fibrillation", 399.0, cleared_s=399.5),  # onset - 1: delay 0, counts
    ]
    ev = evaluate_episodes("r", truth, alerts, [], [], 1000.0)
    assert ev.vt_total == 4 and sorted(ev.vt_delays_s) == [0.0, 0.0, 2.0]
    assert spans(ev.vt_missed) == [(300, 301, "VT")]
    d = ev.to_dict()["vt_episodes"]
    assert d["detected"] == 3 and d["sensitivity"] == pytest.approx(0.75)
    assert d["median_delay_s"] == 0.0 and d["max_delay_s"] == 2.0


def test_vt_detection_counts_an_alert_from_the_moment_it_is_high():
    truth = TruthEpisodes(vt=(Episode(100, 102, "VT"),))
    # raised medium long before, escalated to high only well after the episode
    late = alert("ventricular_run", 50.0, priority="medium", high_s=120.0, cleared_s=200.0)
    assert evaluate_episodes("r", truth, [late], [], [], 1000.0).vt_delays_s == ()
    early = alert("ventricular_run", 50.0, priority="medium", high_s=90.0, cleared_s=200.0)
    assert evaluate_episodes("r", truth, [early], [], [], 1000.0).vt_delays_s == (0.0,)


def test_sustained_ventricular_episodes_alerted_high_within_10_s():
    truth = TruthEpisodes(vt=(Episode(100, 115, "VT"), Episode(500, 505, "VT")),
                          vf=(Episode(400, 420, "VF"), Episode(600, 640, "VF")))
    alerts = [alert("pause", 109.0, cleared_s=130.0),  # any HIGH alert counts
              alert("ventricular_run", 411.0, cleared_s=415.0),  # 11 s after onset: too late
              alert("frequent_ectopy", 601.0, priority="medium"),  # not HIGH
              alert("bradycardia", 590.0, cleared_s=700.0)]  # HIGH and open at onset 600
    ev = evaluate_episodes("r", truth, alerts, [], [], 1000.0)
    assert (ev.sustained_total, ev.sustained_alerted) == (3, 2)  # 500-505 is shorter than 10 s


def test_af_episodes_of_30_s_and_af_time_covered():
    truth = TruthEpisodes(af=(Episode(1000, 1100, "AF"), Episode(2000, 2020, "AF"), Episode(3000, 3100, "AF"),
                              Episode(5000, 5100, "AF")),
                          afl=(Episode(4000, 4100, "AFL"),))
    alerts = [alert("irregular_rhythm", 1040.0, onset_s=1010.0, cleared_s=1080.0, priority="medium"),
              alert("atrial_fibrillation", 3125.0, priority="medium", cleared_s=3200.0),  # end + 25 s
              alert("irregular_rhythm", 4050.0, priority="medium", cleared_s=4090.0),  # in AFL
              alert("irregular_rhythm", 4990.0, priority="medium")]  # open at onset, never cleared
    ev = evaluate_episodes("r", truth, alerts, [], [], 6000.0)
    assert ev.af_total == 3  # the 20 s episode is not in the denominator
    assert sorted(ev.af_delays_s) == [0.0, 40.0, 125.0]
    assert ev.af_time_s == pytest.approx(320.0)
    assert ev.af_covered_s == pytest.approx(40.0 + 100.0)  # 1040-1080, and all of 5000-5100
    d = ev.to_dict()["af_time"]
    assert d["fraction"] == pytest.approx(140.0 / 320.0)
    assert ev.false_alerts == ()  # the alert in AFL is not false


# ---------------------------------------------------------------- judging alerts
@pytest.fixture
def beats():
    """60 bpm sinus, a 3.5 s pause at 100-103.5, 120 bpm from 200 to 260, 50 bpm from
    300 to 400, V beats at 500, 510 and 530, a Q beat at 600."""
    t = np.concatenate([regular_beats(0, 100.5, 1.0), regular_beats(103.5, 200, 1.0),
                        regular_beats(200, 260, 0.5), regular_beats(260, 300, 1.0),
                        regular_beats(300, 400, 1.2), regular_beats(400, 700, 1.0)])
    c = np.array(["N"] * t.size, dtype="<U1")
    for when, cls in ((500, "V"), (510, "V"), (530, "V"), (600, "Q")):
        c[int(np.argmin(np.abs(t - when)))] = cls
    return t, c


def judge(a, beats, truth=TruthEpisodes(), end=1000.0):
    return judge_alert(a, truth, beats[0], beats[1], end)


def test_judge_ventricular_alerts(beats):
    truth = TruthEpisodes(vt=(Episode(40, 44, "VT"),), vf=(Episode(800, 810, "VF"),))
    assert judge(alert("ventricular_run", 50, onset_s=49), beats, truth) == "true"  # 44 >= 44
    assert judge(alert("ventricular_run", 51, onset_s=50), beats, truth) == "false"
    assert judge(alert("ventricular_fibrillation", 796), beats, truth) == "true"  # 801 >= 800
    assert judge(alert("ventricular_fibrillation", 794), beats, truth) == "false"  # 799 < 800


def test_judge_pause(beats):
    assert judge(alert("pause", 104.0, onset_s=100.0), beats) == "true"  # the 3.5 s RR
    assert judge(alert("pause", 99.0, onset_s=97.5), beats) == "true"  # within 2 s of it
    assert judge(alert("pause", 150.0, onset_s=146.0), beats) == "false"
    vf = TruthEpisodes(vf=(Episode(148, 160, "VF"),))
    assert judge(alert("pause", 150.0, onset_s=146.0), beats, vf) == "true"


def test_judge_tachycardia_and_bradycardia(beats):
    assert judge(alert("tachycardia", 230, limit_bpm=120.0, priority="medium"), beats) == "true"
    assert judge(alert("tachycardia", 150, limit_bpm=120.0, priority="medium"), beats) == "false"
    # the reference 120 bpm is above 130 - 10? no
    assert judge(alert("tachycardia", 230, limit_bpm=130.0), beats) == "false"
    assert judge(alert("tachycardia", 230), beats) == "true"  # the policy default, 120 bpm
    assert judge(alert("bradycardia", 350, limit_bpm=50.0, priority="medium"), beats) == "true"  # 50 < 60
    assert judge(alert("bradycardia", 150, limit_bpm=50.0, priority="medium"), beats) == "false"  # 60
    vt = TruthEpisodes(vt=(Episode(152, 160, "VT"),))
    assert judge(alert("tachycardia", 150, limit_bpm=120.0), beats, vt) == "true"
    # no reference beats at all: only an episode can make it true
    assert judge_alert(alert("bradycardia", 10.0), TruthEpisodes(), np.array([]), np.array([]), 100) == "false"


def test_judge_af_alerts(beats):
    truth = TruthEpisodes(af=(Episode(50, 80, "AF"),), afl=(Episode(900, 950, "AFL"),))
    assert judge(alert("irregular_rhythm", 130, onset_s=100, cleared_s=200, priority="medium"),
                 beats, truth) == "true"  # onset - 30 = 70 <= 80
    assert judge(alert("irregular_rhythm", 140, onset_s=111, cleared_s=200, priority="medium"),
                 beats, truth) == "false"
    assert judge(alert("atrial_fibrillation", 500, priority="medium"), beats, truth) == "true"  # open to the end: AFL
    assert judge(alert("atrial_fibrillation", 500, cleared_s=600, priority="medium"), beats, truth) == "false"


def test_judge_ectopy_and_anomalous_beats(beats):
    assert judge(alert("frequent_ectopy", 540, priority="medium"), beats) == "true"  # V at 500, 510, 530
    assert judge(alert("frequent_ectopy", 520, priority="medium"), beats) == "false"  # only 2 so far
    assert judge(alert("frequent_ectopy", 575, priority="medium"), beats) == "false"  # 500 fell out of 60 s
    assert judge(alert("anomalous_beats", 601.5, onset_s=601.0, priority="low"), beats) == "true"  # Q at 600
    assert judge(alert("anomalous_beats", 650.0, onset_s=640.0, priority="low"), beats) == "false"


def test_technical_and_unknown_conditions_are_never_false(beats):
    assert judge(alert("lead_off", 10, category="technical", priority="medium"), beats) == "technical"
    assert judge(alert("st_elevation", 10), beats) == "unjudged"


def test_false_alert_counts_and_rates(beats):
    alerts = [alert("ventricular_run", 51, onset_s=50),  # false HIGH
              alert("irregular_rhythm", 300, priority="medium", cleared_s=400),  # false AF
              alert("pause", 104, onset_s=100),  # true
              alert("signal_noisy", 20, category="technical", priority="low"),
              alert("st_elevation", 30, priority="medium")]
    ev = evaluate_episodes("rec-1", TruthEpisodes(), alerts, beats[0], beats[1], 7200.0)
    assert (ev.physiological, ev.technical, ev.unjudged) == (4, 1, 1)
    assert [f.condition for f in ev.false_alerts] == ["ventricular_run", "irregular_rhythm"]
    assert ev.verdicts == ("false", "false", "true", "technical", "unjudged")
    d = ev.to_dict()
    assert d["hours"] == 2.0
    assert d["false_high_per_patient_hour"] == pytest.approx(0.5)
    assert d["false_non_technical_per_patient_hour"] == pytest.approx(1.0)
    assert d["false_af_per_patient_day"] == pytest.approx(12.0)
    assert d["false_alerts"][0] == {"record": "rec-1", "condition": "ventricular_run", "priority": "high",
                                    "high": True, "stream": "ecg", "onset_s": 50.0, "raised_s": 51.0}


def test_pool_sums_counts_pools_delays_and_rates():
    truth = TruthEpisodes(vt=(Episode(100, 105, "VT"), Episode(200, 205, "VT")))
    a = evaluate_episodes("a", truth, [alert("ventricular_run", 101, cleared_s=150)], [], [], 3600.0)
    b = evaluate_episodes("b", truth, [alert("ventricular_run", 103, cleared_s=150), alert("ventricular_run", 203),
                                       alert("ventricular_run", 700)], [], [], 3 * 3600.0)
    p = pool_episodes([a, b])
    assert p["n_records"] == 2 and p["hours"] == 4.0
    assert (p["vt_episodes"]["detected"], p["vt_episodes"]["total"]) == (3, 4)
    assert p["vt_episodes"]["median_delay_s"] == pytest.approx(3.0)  # delays 1, 3, 3
    assert p["vt_episodes"]["missed"] == [["a", 200.0, 205.0]]
    assert p["false_high_per_patient_hour"] == pytest.approx(1 / 4)
    assert [f["record"] for f in p["false_alerts"]] == ["b"]


def test_rules_and_inputs_are_validated():
    with pytest.raises(ValueError, match="vrun_min_beats"):
        EpisodeRules(vrun_min_beats=0)
    with pytest.raises(ValueError, match="af_min_s"):
        EpisodeRules(af_min_s=float("nan"))
    with pytest.raises(ValueError, match="duration_s"):
        evaluate_episodes("r", TruthEpisodes(), [], [], [], -1.0)


def test_record_223_slow_annotated_vt_runs_are_apart_from_its_vt(shared_data_dir):
    """MIT-BIH 223: three ``(VT`` triplets at 88-90 bpm are slow runs; its four runs at
    >= 100 bpm (two of them sustained) stay VT."""
    from models.records import load_annotations

    ann = load_annotations(shared_data_dir / "mitdb-ds1", "223", "atr")
    tr = truth_episodes(ann.beat_times_s, ann.aami_classes, ann.rhythm_annotations, ann.vf_annotations,
                        ann.sample_rate_hz, ann.duration_s)
    assert [round(e.start_s) for e in tr.slow_vt] == [1013, 1442, 1655]
    assert [round(e.start_s) for e in tr.vt] == [578, 747, 1043, 1551]
