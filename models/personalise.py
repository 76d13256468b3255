"""Personalisation stage: per-patient normaliser and threshold learnt from a patient's first good beats.

Two phases, so every statistic is measured under the normaliser it will be used with:

1. **Normaliser**: the first ``normaliser_beats`` good beats fix the patient's
   amplitude center and scale (medians, as :meth:`Normaliser.fit`). Until then the
   global normaliser is used.
2. **Threshold**: the next ``threshold_beats`` good beats, scored by the caller with the
   patient normaliser, give the (1 - fpr) quantile of the patient's own scores. The
   threshold becomes ``min(cap_factor x global, max(global, quantile))``: it can rise
   for a patient whose normal morphology the model reconstructs poorly, but never
   above the cap, so ectopic beats during calibration cannot blind the detector.

"Good" beats: quality >= ``min_quality`` and both RR ratios within
``[1 - rr_tolerance, 1 + rr_tolerance]`` (drops premature beats and their pauses).
The state is pure, immutable and serialises with :meth:`to_dict` / :meth:`to_bytes`.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.autoencoder import validate_fpr
from models.ecg.features import Normaliser

__all__ = ["PatientCalibration"]

_STATE_VERSION = 1


@dataclass(frozen=True)
class PatientCalibration:
    """Per-patient calibration state.

    Attributes
    ----------
    amplitudes_mv : tuple[float, ...]
        Peak-to-peak amplitude of each good beat of phase 1.
    medians_mv : tuple[float, ...]
        Median sample value of each good beat of phase 1.
    scores : tuple[float, ...]
        Scores of good beats of phase 2.
    normaliser_beats, threshold_beats : int
        Phase lengths in good beats.
    fpr : float
        Quantile level of the patient threshold (same FPR as the global one).
    cap_factor : float
        Upper bound of the patient threshold as a multiple of the global one.
    min_quality : float
        Beat-quality floor.
    rr_tolerance : float
        Allowed relative deviation of both RR ratios from 1.
    """

    amplitudes_mv: tuple[float, ...] = ()
    medians_mv: tuple[float, ...] = ()
    scores: tuple[float, ...] = ()
    normaliser_beats: int = 60
    threshold_beats: int = 120
    fpr: float = 0.01
    cap_factor: float = 3.0
    min_quality: float = 0.5
    rr_tolerance: float = 0.2

    def __post_init__(self) -> None:
        if self.normaliser_beats < 1:
            raise ValueError(f"normaliser_beats must be >= 1, got {self.normaliser_beats}")
        if self.threshold_beats < 1:
            raise ValueError(f"threshold_beats must be >= 1, got {self.threshold_beats}")
        validate_fpr(self.fpr)
        if not (math.isfinite(self.cap_factor) and self.cap_factor >= 1.0):
            raise ValueError(f"cap_factor must be >= 1, got {self.cap_factor}")
        if not (0.0 <= self.min_quality <= 1.0):
            raise ValueError(f"min_quality must be in [0, 1], got {self.min_quality}")
        if not (0.0 < self.rr_tolerance < 1.0):
            raise ValueError(f"rr_tolerance must be in (0, 1), got {self.rr_tolerance}")

    @classmethod
    def initial(cls, **settings: Any) -> PatientCalibration:
        """An empty calibration; ``settings`` override the phase lengths and bounds."""
        return cls(**settings)

    @property
    def normaliser_ready(self) -> bool:
        """Phase 1 done: the patient normaliser is in use."""
        return len(self.amplitudes_mv) >= self.normaliser_beats

    @property
    def calibrated(self) -> bool:
        """Both phases done."""
        return self.normaliser_ready and len(self.scores) >= self.threshold_beats

    def update(
        self,
        waveforms: np.ndarray,
        scores: np.ndarray,
        quality: np.ndarray,
        rr_context: np.ndarray | None = None,
    ) -> PatientCalibration:
        """Fold a batch of beats in and return the new state (``self`` is unchanged).

        Parameters
        ----------
        waveforms : np.ndarray
            float [n, 80] baseline-subtracted beats in mV.
        scores : np.ndarray
            float [n] detector scores of these beats, computed with
            ``self.normaliser(global)`` as it was before this call.
        quality : np.ndarray
            float [n] beat quality 0..1.
        rr_context : np.ndarray, optional
            float [n, 2] RR ratios; beats with irregular RR are skipped.

        Returns
        -------
        PatientCalibration
        """
        if self.calibrated:  # the common case after a patient's first minutes: nothing to do
            return self
        w = np.asarray(waveforms, dtype=np.float64)
        s = np.asarray(scores, dtype=np.float64).ravel()
        q = np.asarray(quality, dtype=np.float64).ravel()
        n = w.shape[0] if w.ndim == 2 else -1
        if w.ndim != 2 or s.shape != (n,) or q.shape != (n,):
            raise ValueError(f"waveforms [n, L], scores [n], quality [n] must agree, got {w.shape}, {s.shape}, {q.shape}")
        good = (q >= self.min_quality) & np.isfinite(s) & np.all(np.isfinite(w), axis=1)
        if rr_context is not None:
            rr = np.asarray(rr_context, dtype=np.float64)
            if rr.shape != (n, 2):
                raise ValueError(f"rr_context must have shape [{n}, 2], got {rr.shape}")
            good &= np.all(np.abs(rr - 1.0) <= self.rr_tolerance, axis=1)
        if self.calibrated or not good.any():
            return self
        amps, meds, scs = list(self.amplitudes_mv), list(self.medians_mv), list(self.scores)
        idx = np.flatnonzero(good)
        # Phase-1 statistics of every good beat in one vectorised pass (same values as
        # per-row max-min and median).
        need = max(0, self.normaliser_beats - len(amps))
        if need:
            rows = w[idx[:need]]
            new_amps = (rows.max(axis=1) - rows.min(axis=1)).tolist()
            new_meds = np.median(rows, axis=1).tolist()
        for k, i in enumerate(idx):
            if len(amps) < self.normaliser_beats:
                amps.append(float(new_amps[k]))
                meds.append(float(new_meds[k]))
            elif len(scs) < self.threshold_beats:
                # Scores from the same call as the switch to the patient normaliser were
                # computed under the global one, so they are not used.
                if len(self.amplitudes_mv) >= self.normaliser_beats:
                    scs.append(float(s[i]))
            else:
                break
        return replace(self, amplitudes_mv=tuple(amps), medians_mv=tuple(meds), scores=tuple(scs))

    def normaliser(self, global_normaliser: Normaliser) -> Normaliser:
        """The patient normaliser once phase 1 is done, else ``global_normaliser``."""
        if not self.normaliser_ready:
            return global_normaliser
        own = self._own_normaliser
        return global_normaliser if own is None else own

    @cached_property
    def _own_normaliser(self) -> Normaliser | None:
        # The state is frozen, so this is computed once per state, not once per chunk.
        scale = float(np.median(self.amplitudes_mv))
        if scale <= 1e-6:
            return None
        return Normaliser(center=float(np.median(self.medians_mv)), scale=scale)

    @cached_property
    def _own_quantile(self) -> float:
        return float(np.quantile(np.asarray(self.scores), 1.0 - self.fpr, method="higher"))

    def threshold(self, global_threshold: float) -> float:
        """``min(cap_factor x global, max(global, patient quantile))`` once calibrated, else global."""
        g = float(global_threshold)
        if not self.calibrated:
            return g
        return min(self.cap_factor * g, max(g, self._own_quantile))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly state."""
        return {
            "v": _STATE_VERSION,
            "amplitudes_mv": list(self.amplitudes_mv),
            "medians_mv": list(self.medians_mv),
            "scores": list(self.scores),
            "normaliser_beats": self.normaliser_beats,
            "threshold_beats": self.threshold_beats,
            "fpr": self.fpr,
            "cap_factor": self.cap_factor,
            "min_quality": self.min_quality,
            "rr_tolerance": self.rr_tolerance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatientCalibration:
        """Inverse of :meth:`to_dict`; ValueError names a bad version or key."""
        if d.get("v") != _STATE_VERSION:
            raise ValueError(f"PatientCalibration state version must be {_STATE_VERSION}, got {d.get('v')!r}")
        try:
            return cls(
                amplitudes_mv=tuple(float(v) for v in d["amplitudes_mv"]),
                medians_mv=tuple(float(v) for v in d["medians_mv"]),
                scores=tuple(float(v) for v in d["scores"]),
                normaliser_beats=int(d["normaliser_beats"]),
                threshold_beats=int(d["threshold_beats"]),
                fpr=float(d["fpr"]),
                cap_factor=float(d["cap_factor"]),
                min_quality=float(d["min_quality"]),
                rr_tolerance=float(d["rr_tolerance"]),
            )
        except KeyError as exc:
            raise ValueError(f"PatientCalibration state missing key {exc.args[0]!r}") from None

    def to_bytes(self) -> bytes:
        """Compact JSON bytes (for a Kafka-backed table)."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PatientCalibration:
        """Inverse of :meth:`to_bytes`."""
        try:
            d = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"PatientCalibration bytes are not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ValueError(f"PatientCalibration state must be an object, got {type(d).__name__}")
        return cls.from_dict(d)
