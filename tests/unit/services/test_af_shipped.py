"""The shipped heart-rate bundle's AF detector on a real record, through the stream core.

A smoke test on a patient the shipped detector trained on (ltafdb 03): that the bundle,
the heart-rate core and the policy together open an AF alert when a long episode starts
and clear it after it ends. The held-out figures are in the model card.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.episodes import rhythm_episodes
from models.records import BeatAnnotations, load_annotations

from services.pipelines import build_hr_pipeline, build_policy
from services.replay import BASE_TS_MS, replay
from services.settings import DEFAULT_HR_MODEL_DIR
from services.simulator import RRSource

FS = 128.0


def _excerpt(ann: BeatAnnotations, t0_s: float, t1_s: float) -> BeatAnnotations:
    """``[t0_s, t1_s)`` of a record, re-based to start at 0, its rhythm at ``t0_s`` kept."""
    s0, s1 = int(t0_s * FS), int(t1_s * FS)
    b = (ann.beat_samples >= s0) & (ann.beat_samples < s1)
    before = [(s, a) for s, a in ann.rhythm_annotations if s < s0]
    rhythm = ([(0, before[-1][1])] if before else []) + [(s - s0, a) for s, a in ann.rhythm_annotations
                                                         if s0 <= s < s1]
    noise = ann.noise_samples[(ann.noise_samples >= s0) & (ann.noise_samples < s1)] - s0
    return BeatAnnotations(f"{ann.name}_{int(t0_s)}", FS, ann.beat_samples[b] - s0, ann.beat_symbols[b],
                           ann.aami_classes[b], tuple(rhythm), (), s1 - s0, noise)


@pytest.mark.data
def test_shipped_bundle_opens_af_when_an_ltafdb_episode_starts_and_clears_after_it_ends(shared_data_dir):
    ann = _excerpt(load_annotations(shared_data_dir / "ltafdb", "03", "atr", fs=FS), 61_000.0, 68_400.0)
    episodes = rhythm_episodes(ann.rhythm_annotations, FS, ann.duration_s)
    # the excerpt's longest AF episode (38 min), followed by 13 min of sinus rhythm
    big = max((e for e in episodes if e.kind == "AFIB"), key=lambda e: e.duration_s)
    assert big.duration_s > 1800 and ann.duration_s - big.end_s > 600
    hr = build_hr_pipeline(DEFAULT_HR_MODEL_DIR, build_policy(None), runtime="tflite")
    assert hr.af is not None and hr.af.threshold is not None
    res = replay(RRSource.from_annotations(ann), "rec-ltafdb-03", None, hr, chunks_per_batch=300)
    spans: dict[str, list[float | None]] = {}
    for a in res.alerts:
        if a.condition != "atrial_fibrillation":
            continue
        t = (a.detected_ts_ms - BASE_TS_MS) / 1000
        if a.action == "raised":
            spans[a.alert_id] = [t, None]
        elif a.action == "cleared":
            spans[a.alert_id][1] = t
    assert spans, "no AF alert in 2 h holding 1 h of AF"
    covering = [(r, c) for r, c in spans.values() if r <= big.start_s + 0.5 * big.duration_s
                and (c is None or c > big.start_s + 0.5 * big.duration_s)]
    assert len(covering) == 1, spans
    raised, cleared = covering[0]
    covered = (min(cleared or ann.duration_s, big.end_s) - max(raised, big.start_s)) / big.duration_s
    assert covered > 0.8
    # cleared once the episode ended, within the clear time and the window's lag
    assert cleared is not None and big.end_s < cleared < big.end_s + 300
    assert not [1 for r, c in spans.values() if c is None]  # nothing left open in sinus rhythm
    probs = np.array([o.af_probability for o in res.hr if o.af_probability is not None])
    assert probs.size > 0.9 * len(res.hr)


def test_shipped_af_detector_was_calibrated_for_the_default_policy_timings(caplog) -> None:
    """The shipped threshold holds for the policy's default sustain_s/clear_s; a policy
    with other timings runs, but the worker says that the card's figures no longer apply."""
    import logging

    from services.pipelines import load_af_detector, warn_if_af_rule_differs
    from models.bundle import load_bundle
    from streaming.conditions import AtrialFibrillationSettings
    from streaming.policy import AlertPolicy, PolicyConfig

    af = load_af_detector(load_bundle(DEFAULT_HR_MODEL_DIR, runtime="keras", kind="hr"))
    assert af is not None
    default = build_policy(None)
    with caplog.at_level(logging.WARNING, logger="cardiowatch.pipelines"):
        assert not warn_if_af_rule_differs(af, default, DEFAULT_HR_MODEL_DIR)
    assert caplog.records == []
    other = AlertPolicy(PolicyConfig(conditions={"atrial_fibrillation": AtrialFibrillationSettings(clear_s=60.0)}))
    with caplog.at_level(logging.WARNING, logger="cardiowatch.pipelines"):
        assert warn_if_af_rule_differs(af, other, DEFAULT_HR_MODEL_DIR)
    assert "30/60 s differ from the 30/180 s" in caplog.text
