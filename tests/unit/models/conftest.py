"""Fixtures of the detector tests: synthetic data factories and one tiny trained bundle per detector kind.

Training and exporting even a tiny model takes tens of seconds, so each kind's model is
trained once per session (``tiny_case``) and shared by the contract suite, the bundle
tests and the kind tests; tests that mutate a bundle copy it first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.autoencoder import LSTMAutoencoder
from models.bundle import write_bundle
from models.ecg.features import BEAT_LENGTH, N_CHANNELS, ECGInput, ECGScore, Normaliser, make_model_input
from models.ecg.train import LabelledBeats, beats_from_signal
from models.hr.features import N_FEATURES, HRInput, HRNormaliser, HRScore, rr_windows
from models.hr.train import synthetic_normal_rr
from models.synthetic import Event, synth_ecg

TINY = {"enc_units": 8, "latent_units": 4, "dec_units": 8}


@dataclass(frozen=True)
class Case:
    """One kind's tiny trained model, its bundle (no server export) and its data.

    ``x_*`` are model inputs [n, timesteps, channels]: train / val (fit), cal (the
    bundle's thresholds, at ``fpr``), clean and anomalous (held-out patients).
    ``make_untrained(**widths)`` builds an unfitted detector of the kind.
    """

    kind: str
    detector: LSTMAutoencoder
    input_spec: Any
    bundle: Path
    fpr: float
    x_train: np.ndarray
    x_val: np.ndarray
    x_cal: np.ndarray
    x_clean: np.ndarray
    x_anomalous: np.ndarray
    make_untrained: Callable[..., LSTMAutoencoder]


def _ecg_patient(seed: int, duration_s: float = 40.0, pvc: bool = False, pvc_every_s: float = 5.0,
                 hr_bpm: float | None = 70.0) -> LabelledBeats:
    events = [Event("pvc", float(t)) for t in np.arange(4.0, duration_s - 3.0, pvc_every_s)] if pvc else []
    kw = {} if hr_bpm is None else {"hr_bpm": hr_bpm}
    rec = synth_ecg(duration_s, sample_rate_hz=250, events=events, seed=seed, **kw)
    return beats_from_signal(f"p{seed}", rec.signal_mv, rec.sample_rate_hz, rec.beat_samples, rec.beat_labels)


def _normal_windows(seeds: Iterable[int], duration_s: float = 600.0, step: int = 4) -> np.ndarray:
    return np.concatenate([rr_windows(synthetic_normal_rr(s, duration_s), 32, step) for s in seeds])


def _episode_windows(kind: str, seed: int, params: dict[str, float] | None = None) -> np.ndarray:
    rec = synth_ecg(600.0, sample_rate_hz=100.0, hr_bpm=70.0, seed=seed, events=[Event(kind, 120.0, 300.0, params or {})])
    rr = rec.rr_s[1:]
    t = rec.beat_samples[1:] / rec.sample_rate_hz
    w = rr_windows(rr, 32, 4)
    end_t = t[np.arange(len(w)) * 4 + 31]
    start_t = t[np.arange(len(w)) * 4] - rr[np.arange(len(w)) * 4]
    inside = (start_t >= 130.0) & (end_t <= 415.0)  # windows wholly inside the episode (past the ramp)
    return w[inside]


@pytest.fixture(scope="session")
def ecg_patient() -> Callable[..., LabelledBeats]:
    """Factory: ``ecg_patient(seed, duration_s=40, pvc=False, pvc_every_s=5, hr_bpm=70)``
    -> labelled beats of one synthetic patient through the live front end."""
    return _ecg_patient


@pytest.fixture(scope="session")
def hr_normal_windows() -> Callable[..., np.ndarray]:
    """Factory: ``hr_normal_windows(seeds, duration_s=600, step=4)`` -> normal-rhythm RR windows [n, 32] (s)."""
    return _normal_windows


@pytest.fixture(scope="session")
def hr_episode_windows() -> Callable[..., np.ndarray]:
    """Factory: ``hr_episode_windows(kind, seed, params)`` -> RR windows [n, 32] (s) wholly
    inside a 300 s ``kind`` episode (afib, tachy, brady) of a synthetic patient."""
    return _episode_windows


def _ecg_case(tmp: Path) -> Case:
    train = [_ecg_patient(s) for s in range(4)]
    w = np.concatenate([p.waveforms for p in train])
    r = np.concatenate([p.rr_context for p in train])
    norm = Normaliser.fit(w)

    def x_of(p: LabelledBeats) -> np.ndarray:
        return make_model_input(p.waveforms, p.rr_context, norm)

    def make(**kw: Any) -> LSTMAutoencoder:
        return LSTMAutoencoder(BEAT_LENGTH, N_CHANNELS, ECGScore(), **{**TINY, **kw})

    x_train, x_val = make_model_input(w, r, norm), x_of(_ecg_patient(50))
    det = make()
    det.fit(x_train, x_val, epochs=3, batch_size=64, seed=1, progress=False)
    x_cal = x_of(_ecg_patient(70))
    spec = ECGInput(normaliser=norm)
    write_bundle(tmp, det, spec, calibration=x_cal, fpr=0.05, representative=x_train, training_data_sha256="ab" * 32,
                 seed=1, server_batch_size=None)
    test = _ecg_patient(60, duration_s=60.0, pvc=True)
    x_test = x_of(test)
    return Case("ecg", det, spec, tmp, 0.05, x_train, x_val, x_cal, x_test[test.labels == "N"],
                x_test[test.labels == "V"], make)


def _hr_case(tmp: Path) -> Case:
    tr = _normal_windows(range(100, 106))
    spec = HRInput(normaliser=HRNormaliser.fit(tr))

    def make(**kw: Any) -> LSTMAutoencoder:
        return LSTMAutoencoder(32, N_FEATURES, HRScore(), **{**TINY, **kw})

    x_train, x_val = spec.make_input(tr), spec.make_input(_normal_windows([106, 107]))
    det = make()
    # the heart-rate trainer's loop settings (models.hr.train)
    det.fit(x_train, x_val, epochs=6, batch_size=128, seed=0, progress=False, patience=5, learning_rate=3e-3)
    x_cal = spec.make_input(_normal_windows([200, 201], step=1))
    write_bundle(tmp, det, spec, calibration=x_cal, fpr=0.02, representative=x_train, training_data_sha256="cd" * 32,
                 seed=0, server_batch_size=None)
    episodes = [("afib", 402, {"hr_bpm": 85.0}), ("tachy", 402, {"hr_bpm": 140.0}), ("brady", 402, {"hr_bpm": 40.0})]
    x_anom = spec.make_input(np.concatenate([_episode_windows(k, s, p) for k, s, p in episodes]))
    return Case("hr", det, spec, tmp, 0.02, x_train, x_val, x_cal, spec.make_input(_normal_windows([400, 401])),
                x_anom, make)


@pytest.fixture(scope="session")
def tiny_case(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Case]:
    """Factory: ``tiny_case("ecg" | "hr")`` -> that kind's :class:`Case` (trained once per session)."""
    cache: dict[str, Case] = {}

    def get(kind: str) -> Case:
        if kind not in cache:
            tmp = tmp_path_factory.mktemp(f"tiny-{kind}") / "bundle"
            cache[kind] = {"ecg": _ecg_case, "hr": _hr_case}[kind](tmp)
        return cache[kind]

    return get
