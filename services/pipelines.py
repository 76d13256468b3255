"""Composition: model bundles + policy -> the ECG and heart-rate stream cores.

Shared by the worker, the evaluator, the benchmark and the edge runner so all four run
the same pipeline. Imports no TensorFlow unless a Keras runtime is asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from models.beats import BeatSpec
from models.ecg.scorer import load_scorer
from models.bundle import Bundle, load_bundle
from models.ecg.features import ECGInput
from models.ecg.artefact import load_artefact_detector
from models.ecg.vf import load_vf_detector
from models.hr.af import AFDetector, AFError
from models.hr.features import HRInput
from streaming.pipeline import SIGNAL_QUANTUM_MV, ECGPipeline, HRPipeline, HRScorer
from streaming.policy import AlertPolicy, PolicyConfig, load_policy_config

__all__ = ["beat_spec", "build_ecg_pipeline", "build_hr_pipeline", "build_policy", "load_af_detector",
           "load_ecg_bundle", "wall_clock_ms", "warn_if_af_rule_differs"]

log = logging.getLogger("cardiowatch.pipelines")
HR_STEP = 8  # new RR intervals between heart-rate windows, as the HR bundle was validated


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def _ecg_input(bundle: Bundle) -> ECGInput:
    inp = bundle.meta.input
    if not isinstance(inp, ECGInput):
        raise ValueError(f"{bundle.path} is a {bundle.meta.kind!r} bundle, the ECG stream needs an 'ecg' bundle")
    return inp


def beat_spec(bundle: Bundle) -> BeatSpec:
    return _ecg_input(bundle).beat


def build_policy(policy_file: Path | None) -> AlertPolicy:
    return AlertPolicy(load_policy_config(policy_file) if policy_file else PolicyConfig())


def build_ecg_pipeline(bundle: Bundle, policy: AlertPolicy,
                       clock_ms: Callable[[], int] = wall_clock_ms,
                       signal_quantum_mv: float | None = SIGNAL_QUANTUM_MV) -> ECGPipeline:
    m = bundle.meta
    # A bundle made before the VF detector has none: the pipeline runs without it.
    vf = load_vf_detector(bundle.path, m.extra)
    if vf is None:
        log.warning("ECG bundle %s has no VF detector: no ventricular_fibrillation alerts", bundle.path)
    # nor an artefact detector: chunk quality comes from the signal-quality check alone
    artefact = load_artefact_detector(bundle.path, m.extra)
    # The runtime's own threshold: an int8 model runs at the threshold set on int8 scores.
    return ECGPipeline(scorer=load_scorer(bundle), model_version=f"{m.name}@{m.version}", policy=policy,
                       spec=beat_spec(bundle), clock_ms=clock_ms, vf_detector=vf,
                       artefact_detector=artefact, signal_quantum_mv=signal_quantum_mv)


def build_hr_pipeline(hr_model_dir: Path | None, policy: AlertPolicy, runtime: str = "keras",
                      clock_ms: Callable[[], int] = wall_clock_ms) -> HRPipeline:
    if hr_model_dir is None or not (Path(hr_model_dir) / "bundle.json").exists():
        log.warning("no heart-rate model at %s: the heart-rate stream runs rule-based checks only",
                    hr_model_dir)
        return HRPipeline(None, policy, step=HR_STEP, clock_ms=clock_ms)
    import numpy as np

    bundle = load_bundle(Path(hr_model_dir), runtime="keras" if runtime == "keras" else "tflite", kind="hr")
    spec = bundle.meta.input
    assert isinstance(spec, HRInput)  # kind="hr" guarantees it
    lo, hi = spec.rr_clip_s

    def make_window(rr_ms: np.ndarray) -> np.ndarray:
        # Pauses and dropped beats fall outside the model's RR range; the policy's own
        # pause rule covers them, the model sees them clipped.
        return spec.make_input(np.clip(np.asarray(rr_ms, dtype=np.float64) / 1000.0, lo, hi)[None, :])

    af = load_af_detector(bundle)
    if af is not None:
        warn_if_af_rule_differs(af, policy, bundle.path)
    # A window of `window` beats is scored every HR_STEP new beats (the bundle's rule).
    return HRPipeline(HRScorer(bundle.detector, spec.window_beats, make_window), policy, step=HR_STEP,
                      clock_ms=clock_ms, af=af)


def warn_if_af_rule_differs(af: AFDetector, policy: AlertPolicy, where: Path) -> bool:
    """Log a warning (and say True) when the policy's ``atrial_fibrillation`` timings are not
    the ones the AF detector's threshold was chosen for: the alert still works, but its
    false-alert rate and sensitivity are no longer the ones the model card states."""
    settings = policy.config.conditions.get("atrial_fibrillation")
    if settings is None:
        return False
    ours = (float(settings.sustain_s), float(settings.clear_s))
    theirs = (float(af.rule.sustain_s), float(af.rule.clear_s))
    if ours == theirs:
        return False
    log.warning("policy atrial_fibrillation sustain_s/clear_s %g/%g s differ from the %g/%g s the AF detector of "
                "%s was calibrated for: its threshold's held-out figures do not apply (retrain with the policy's "
                "timings, or set them back)", *ours, *theirs, where)
    return True


def load_af_detector(bundle: Bundle) -> AFDetector | None:
    """The AF detector a heart-rate bundle ships (``extra["af_detector"]`` and its file,
    hash-checked with the bundle), or None for a bundle without one."""
    section = bundle.meta.extra.get("af_detector")
    if section is None:
        log.warning("heart-rate bundle %s has no AF detector: no atrial_fibrillation alerts", bundle.path)
        return None
    AFDetector.check_settings(section, f"{bundle.path}/bundle.json")
    if section["file"] not in bundle.meta.extra_files:
        # only files listed in bundle.json were hash-checked when the bundle was read
        raise AFError(f"{bundle.path}/bundle.json: extra.af_detector.file {section['file']!r} is not one of "
                      f"the bundle's listed extra files {list(bundle.meta.extra_files)}")
    return AFDetector.from_bytes((Path(bundle.path) / section["file"]).read_bytes())


def load_ecg_bundle(model_dir: Path, runtime: str = "keras") -> Bundle:
    return load_bundle(model_dir, runtime=runtime, server=runtime == "tflite", kind="ecg")  # type: ignore[arg-type]
