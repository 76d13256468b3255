"""Synthetic ECG: Gaussian-wave PQRST beats on a variable RR schedule, with injectable events.

Each beat is a sum of Gaussian waves (P, Q, R, S, T; McSharry-style morphology, summed in
closed form rather than integrated) placed on an RR schedule with respiratory and
low-frequency heart-rate variability. Morphology varies per patient seed (amplitudes,
widths, QRS axis, PVC shape) so models trained on some seeds can be tested on others.
Events (PVCs, ventricular runs, tachy/brady, pauses, AF, wander, motion, lead-off) come
with ground-truth beat annotations in AAMI classes.

Everything is deterministic given the seed, and the waveform does not depend on how it
is chunked: noise is drawn in fixed 10 s blocks seeded by block index.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, get_args

import numpy as np

__all__ = [
    "EventKind",
    "Event",
    "SyntheticRecord",
    "synth_ecg",
    "SyntheticPatient",
    "write_wfdb",
]

EventKind = Literal["pvc", "vrun", "tachy", "brady", "pause", "wander", "motion", "lead_off", "afib"]
_EVENT_KINDS = frozenset(get_args(EventKind))

_NOISE_BLOCK_S = 10.0
_WIN_PRE_S = 0.40  # extent of one beat's waves before / after its R peak
_WIN_POST_S = 0.80
_LEAD_OFF_NOISE_MV = 0.002

# Beat kinds (internal)
_NORMAL, _PVC, _AF = 0, 1, 2


@dataclass(frozen=True)
class Event:
    """An injected event.

    Attributes
    ----------
    kind
        ``pvc`` (single premature ventricular beat with compensatory pause), ``vrun``
        (>= 3 PVCs at ``params["rate_bpm"]``, default 170), ``tachy`` / ``brady`` (HR
        ``params["hr_bpm"]``, default 150 / 40, for ``duration_s``), ``pause`` (no beat
        in ``[start_s, start_s + duration_s)``), ``afib`` (irregular RR around
        ``params["hr_bpm"]`` (default 110), no P waves, f waves), ``wander`` (baseline
        drift, ``params["amplitude_mv"]`` default 1.0), ``motion`` (broadband bursts,
        ``params["amplitude_mv"]`` default 1.0), ``lead_off`` (flat line).
    start_s
        Onset in seconds from record start.
    duration_s
        Length in seconds (0 for ``pvc``; ``vrun`` uses it for the number of beats,
        at least 3).
    params
        Kind-specific options listed above.
    """

    kind: EventKind
    start_s: float
    duration_s: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _EVENT_KINDS:
            raise ValueError(f"event kind must be one of {sorted(_EVENT_KINDS)}, got {self.kind!r}")
        if not np.isfinite(self.start_s) or self.start_s < 0:
            raise ValueError(f"event start_s must be >= 0, got {self.start_s}")
        if not np.isfinite(self.duration_s) or self.duration_s < 0:
            raise ValueError(f"event duration_s must be >= 0, got {self.duration_s}")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def __hash__(self) -> int:
        return hash((self.kind, self.start_s, self.duration_s, tuple(sorted(self.params.items()))))


@dataclass(frozen=True)
class SyntheticRecord:
    """A synthetic record with ground truth.

    Attributes
    ----------
    signal_mv
        1-D float64 signal in mV.
    sample_rate_hz
        Its sample rate.
    beat_samples
        R-peak sample indices (int64) of the beats visible in the record (beats during
        ``lead_off`` are left out, as an annotator could not see them).
    beat_labels
        AAMI class per beat: ``'N'`` (sinus and AF-conducted beats) or ``'V'`` (PVC).
    events
        The injected events.
    rr_s
        RR interval before each beat in seconds (NaN for the first beat).
    """

    signal_mv: np.ndarray
    sample_rate_hz: float
    beat_samples: np.ndarray
    beat_labels: np.ndarray
    events: tuple[Event, ...]
    rr_s: np.ndarray

    @property
    def duration_s(self) -> float:
        return self.signal_mv.shape[0] / self.sample_rate_hz


@dataclass(frozen=True)
class _Morphology:
    # Normal beat waves: columns P, Q, R, S, T ; amplitude mV, centre s (rel. R), width s.
    amp: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    # PVC waves: R', S', T' (no P)
    pvc_amp: np.ndarray
    pvc_mu: np.ndarray
    pvc_sigma: np.ndarray
    # Heart-rate variability
    rsa_frac: float
    lf_frac: float
    resp_hz: float
    lf_hz: float
    phase_resp: float
    phase_lf: float
    ar_sd: float
    baseline_mv: float


def _morphology(rng: np.random.Generator, vary: bool) -> _Morphology:
    u = (lambda lo, hi: float(rng.uniform(lo, hi))) if vary else (lambda lo, hi: 0.5 * (lo + hi))
    r_amp = u(0.8, 1.8)
    # QRS axis: a minority of patients have a predominantly negative QRS in this lead.
    negative = vary and rng.random() < 0.15
    q_amp = -u(0.03, 0.15) * r_amp
    s_amp = -u(0.1, 0.45) * r_amp
    if negative:
        r_amp, s_amp = 0.35 * r_amp, -1.1 * r_amp
    t_sign = -1.0 if vary and rng.random() < 0.05 else 1.0  # rare inverted T wave
    amp = np.array([u(0.08, 0.22), q_amp, r_amp, s_amp, t_sign * u(0.15, 0.45)])
    mu = np.array([-u(0.15, 0.20), -u(0.025, 0.035), 0.0, u(0.025, 0.035), u(0.24, 0.30)])
    sigma = np.array([u(0.02, 0.03), u(0.008, 0.012), u(0.009, 0.014), u(0.008, 0.013), u(0.04, 0.06)])
    pol = 1.0 if (not vary or rng.random() < 0.6) else -1.0
    w = u(0.028, 0.042)  # PVC R' sigma: visible QRS ~ 120-170 ms
    pvc_amp = np.array([pol * u(1.2, 2.2), -pol * u(0.3, 0.8), -pol * u(0.3, 0.6)])
    pvc_mu = np.array([0.0, u(0.05, 0.07), u(0.30, 0.36)])
    pvc_sigma = np.array([w, u(0.025, 0.035), u(0.06, 0.08)])
    return _Morphology(
        amp=amp, mu=mu, sigma=sigma,
        pvc_amp=pvc_amp, pvc_mu=pvc_mu, pvc_sigma=pvc_sigma,
        rsa_frac=u(0.02, 0.06), lf_frac=u(0.01, 0.04),
        resp_hz=u(0.2, 0.33), lf_hz=u(0.08, 0.12),
        phase_resp=u(0, 2 * np.pi), phase_lf=u(0, 2 * np.pi),
        ar_sd=u(0.005, 0.015), baseline_mv=u(0.03, 0.12),
    )


class _Generator:
    """Beat schedule (extended lazily, sequential RNG) plus a pure renderer."""

    def __init__(
        self,
        sample_rate_hz: float,
        hr_bpm: float,
        events: Sequence[Event],
        seed: int,
        noise_mv: float,
        patient_variation: bool,
    ) -> None:
        fs = float(sample_rate_hz)
        if not np.isfinite(fs) or not 50 <= fs <= 2000:
            raise ValueError(f"sample_rate_hz must be in [50, 2000], got {sample_rate_hz}")
        if not np.isfinite(hr_bpm) or not 20 <= hr_bpm <= 250:
            raise ValueError(f"hr_bpm must be in [20, 250], got {hr_bpm}")
        if not np.isfinite(noise_mv) or noise_mv < 0:
            raise ValueError(f"noise_mv must be >= 0, got {noise_mv}")
        self.fs = fs
        self.hr_bpm = float(hr_bpm)
        self.events = tuple(sorted(events, key=lambda e: e.start_s))
        for e in self.events:
            if not isinstance(e, Event):
                raise ValueError(f"events must be Event instances, got {e!r}")
        self.seed = int(seed)
        self.noise_mv = float(noise_mv)
        self.morph = _morphology(np.random.default_rng([self.seed, 0]), patient_variation)
        self._rng = np.random.default_rng([self.seed, 1])
        # Schedule
        self._t: list[float] = []
        self._kind: list[int] = []
        self._rr: list[float] = []
        self._t_next = float(self._rng.uniform(0.15, 0.6))
        self._ar = 0.0
        self._pending: list[tuple[float, int]] = []  # beats forced by pvc/vrun events
        self._after_forced = 0.0
        self._done_events: set[int] = set()
        self._scheduled_until = 0.0

    # ----- schedule -------------------------------------------------------------
    def _active(self, kind: str, t: float) -> Event | None:
        for e in self.events:
            if e.kind == kind and e.start_s <= t < e.end_s:
                return e
        return None

    def _hr_at(self, t: float) -> float:
        hr = self.hr_bpm
        for e in self.events:
            if e.kind in ("tachy", "brady") and e.duration_s > 0:
                target = float(e.params.get("hr_bpm", 150.0 if e.kind == "tachy" else 40.0))
                ramp = min(5.0, e.duration_s / 4)
                if e.start_s <= t < e.end_s:
                    a = min(1.0, (t - e.start_s) / ramp, (e.end_s - t) / ramp) if ramp > 0 else 1.0
                    hr = hr + max(a, 0.0) * (target - hr)
        return hr

    def _normal_rr(self, t: float) -> float:
        m = self.morph
        rr0 = 60.0 / self._hr_at(t)
        self._ar = 0.6 * self._ar + float(self._rng.normal(0.0, m.ar_sd))
        mod = (
            m.rsa_frac * np.sin(2 * np.pi * m.resp_hz * t + m.phase_resp)
            + m.lf_frac * np.sin(2 * np.pi * m.lf_hz * t + m.phase_lf)
            + self._ar
        )
        return rr0 * (1.0 + mod)

    def _append(self, t: float, kind: int) -> None:
        rr = t - self._t[-1] if self._t else float("nan")
        self._t.append(t)
        self._kind.append(kind)
        self._rr.append(rr)

    def extend_until(self, t_end_s: float) -> None:
        """Schedule every beat with R time < ``t_end_s`` (plus possibly a few more)."""
        while self._t_next < t_end_s:
            self._step()
        self._scheduled_until = max(self._scheduled_until, t_end_s)

    def _step(self) -> None:
        t = self._t_next
        t_prev = self._t[-1] if self._t else None
        if self._pending:
            tp, kind = self._pending.pop(0)
            self._append(tp, kind)
            self._t_next = self._pending[0][0] if self._pending else self._after_forced
            return
        # Events triggered by this candidate beat crossing their onset.
        for i, e in enumerate(self.events):
            if i in self._done_events or t < e.start_s:
                continue
            if e.kind == "pvc" and t_prev is not None:
                self._done_events.add(i)
                rr = t - t_prev
                coupling = float(self._rng.uniform(0.55, 0.68)) * rr
                self._pending = [(t_prev + coupling, _PVC)]
                self._after_forced = t_prev + 2.0 * rr  # full compensatory pause
                self._t_next = self._pending[0][0]
                return self._step()
            if e.kind == "vrun" and t_prev is not None:
                self._done_events.add(i)
                rate = float(e.params.get("rate_bpm", 170.0))
                if not 100 <= rate <= 300:
                    raise ValueError(f"vrun rate_bpm must be in [100, 300], got {rate}")
                n = max(3, int(round(e.duration_s * rate / 60.0)))
                rr = t - t_prev
                t0 = t_prev + float(self._rng.uniform(0.5, 0.65)) * rr
                self._pending = [(t0 + k * 60.0 / rate, _PVC) for k in range(n)]
                self._after_forced = self._pending[-1][0] + 1.25 * rr
                self._t_next = self._pending[0][0]
                return self._step()
            if e.kind == "pause" and e.duration_s > 0:
                self._done_events.add(i)
                if t < e.end_s:
                    t = e.end_s
        af = self._active("afib", t)
        if af is not None:
            hr_af = float(af.params.get("hr_bpm", 110.0))
            self._append(t, _AF)
            self._t_next = t + (60.0 / hr_af) * float(self._rng.uniform(0.6, 1.45))
            return
        self._append(t, _NORMAL)
        self._t_next = t + self._normal_rr(t)

    # ----- rendering -----------------------------------------------------------
    def _beat_waves(self, kinds: np.ndarray, rr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.morph
        n = kinds.shape[0]
        amp = np.zeros((n, 5))
        mu = np.zeros((n, 5))
        sig = np.ones((n, 5))
        rr_eff = np.where(np.isfinite(rr), rr, 60.0 / self.hr_bpm).clip(0.3, 2.0)
        normal = kinds != _PVC
        amp[normal] = m.amp
        mu[normal] = m.mu
        sig[normal] = m.sigma
        # QT shortens with RR (Bazett-like): T wave position scales with sqrt(RR).
        mu[normal, 4] = m.mu[4] * np.sqrt(rr_eff[normal])
        amp[kinds == _AF, 0] = 0.0  # no P waves in AF
        pvc = kinds == _PVC
        amp[pvc, :3] = m.pvc_amp
        mu[pvc, :3] = m.pvc_mu
        sig[pvc, :3] = m.pvc_sigma
        return amp, mu, sig

    def _block_noise(self, stream: int, n0: int, n1: int) -> np.ndarray:
        """Standard normal noise for samples [n0, n1), seeded per fixed block."""
        bs = int(round(_NOISE_BLOCK_S * self.fs))
        b0, b1 = n0 // bs, (n1 - 1) // bs
        parts = [np.random.default_rng([self.seed, stream, b]).standard_normal(bs) for b in range(b0, b1 + 1)]
        z = np.concatenate(parts)
        return z[n0 - b0 * bs : n1 - b0 * bs]

    def render(self, n0: int, n1: int) -> np.ndarray:
        """Samples [n0, n1) of the record, in mV."""
        fs = self.fs
        if n1 <= n0:
            return np.empty(0)
        self.extend_until(n1 / fs + _WIN_PRE_S + 0.5)
        t_beats = np.asarray(self._t)
        kinds = np.asarray(self._kind, np.int64)
        rr = np.asarray(self._rr)
        sel = (t_beats >= n0 / fs - _WIN_POST_S) & (t_beats < n1 / fs + _WIN_PRE_S)
        out = np.zeros(n1 - n0)
        if np.any(sel):
            tb, kb, rb = t_beats[sel], kinds[sel], rr[sel]
            amp, mu, sig = self._beat_waves(kb, rb)
            w0, w1 = int(np.floor(-_WIN_PRE_S * fs)), int(np.ceil(_WIN_POST_S * fs))
            offs = np.arange(w0, w1 + 1)
            centre = np.round(tb * fs).astype(np.int64)
            idx = centre[:, None] + offs[None, :]  # absolute sample indices
            tt = idx / fs - tb[:, None]  # time relative to R
            vals = np.zeros(idx.shape)
            for c in range(5):
                d = (tt - mu[:, c : c + 1]) / sig[:, c : c + 1]
                vals += amp[:, c : c + 1] * np.exp(-0.5 * d * d)
            rel = idx - n0
            ok = (rel >= 0) & (rel < n1 - n0)
            out += np.bincount(rel[ok], weights=vals[ok], minlength=n1 - n0)
        t = np.arange(n0, n1) / fs
        m = self.morph
        # Respiratory baseline movement, always present.
        out += m.baseline_mv * np.sin(2 * np.pi * m.resp_hz * t + m.phase_resp + 1.0)
        if self.noise_mv > 0:
            out += self.noise_mv * self._block_noise(2, n0, n1)
        for e in self.events:
            if e.end_s <= n0 / fs or e.start_s >= n1 / fs or e.duration_s <= 0:
                continue
            inside = (t >= e.start_s) & (t < e.end_s)
            if e.kind == "wander":
                a = float(e.params.get("amplitude_mv", 1.0))
                taper = np.clip(np.minimum(t - e.start_s, e.end_s - t) / 2.0, 0.0, 1.0)
                ph = (self.seed % 97) * 0.1
                drift = np.sin(2 * np.pi * 0.13 * t + ph) + 0.6 * np.sin(2 * np.pi * 0.37 * t + 2 * ph)
                out += inside * taper * a * drift / 1.6
            elif e.kind == "motion":
                a = float(e.params.get("amplitude_mv", 1.0))
                k = max(1, int(round(0.012 * fs)))  # ~12 ms smoothing: broadband up to ~40 Hz
                z = self._block_noise(3, max(n0 - k + 1, 0), n1)
                if n0 - k + 1 < 0:
                    z = np.concatenate([np.zeros(k - 1 - n0), z])
                zz = np.convolve(z, np.ones(k) / np.sqrt(k), mode="valid")
                env = 0.55 + 0.45 * np.abs(np.sin(2 * np.pi * 0.7 * t + 0.3 * (self.seed % 11)))
                out += inside * a * env * zz
            elif e.kind == "afib":
                f_hz = float(e.params.get("f_wave_hz", 6.0))
                out += inside * 0.05 * np.sin(2 * np.pi * f_hz * t + 0.5 * np.sin(2 * np.pi * 0.3 * t))
        for e in self.events:
            if e.kind == "lead_off" and e.duration_s > 0 and e.end_s > n0 / fs and e.start_s < n1 / fs:
                inside = (t >= e.start_s) & (t < e.end_s)
                flat = _LEAD_OFF_NOISE_MV * self._block_noise(4, n0, n1)
                out = np.where(inside, flat, out)
        return out

    def beats(self, t0_s: float, t1_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(R times s, AAMI labels, rr_s) of visible beats with t0_s <= R time < t1_s."""
        self.extend_until(t1_s + 0.1)
        t = np.asarray(self._t)
        k = np.asarray(self._kind, np.int64)
        rr = np.asarray(self._rr)
        sel = (t >= t0_s) & (t < t1_s)
        for e in self.events:
            if e.kind == "lead_off" and e.duration_s > 0:
                sel &= ~((t >= e.start_s) & (t < e.end_s))
        labels = np.where(k[sel] == _PVC, "V", "N")
        return t[sel], labels, rr[sel]


def synth_ecg(
    duration_s: float,
    sample_rate_hz: float = 250,
    hr_bpm: float = 70,
    events: Sequence[Event] = (),
    seed: int = 0,
    noise_mv: float = 0.02,
    patient_variation: bool = True,
) -> SyntheticRecord:
    """Generate a synthetic single-lead ECG record with ground-truth beats.

    Parameters
    ----------
    duration_s
        Record length in seconds (> 0).
    sample_rate_hz
        Sample rate in Hz, in [50, 2000].
    hr_bpm
        Resting heart rate in beats per minute, in [20, 250].
    events
        Injected :class:`Event` objects.
    seed
        Seeds morphology (per patient), RR variability and noise.
    noise_mv
        Standard deviation of white measurement noise in mV.
    patient_variation
        If False, use the mid-range morphology regardless of seed.

    Returns
    -------
    SyntheticRecord

    Examples
    --------
    >>> rec = synth_ecg(10.0, sample_rate_hz=250, events=[Event("pvc", 5.0)])
    >>> "V" in set(rec.beat_labels)
    True
    """
    if not np.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    g = _Generator(sample_rate_hz, hr_bpm, events, seed, noise_mv, patient_variation)
    n = int(round(duration_s * g.fs))
    x = g.render(0, n)
    t, labels, rr = g.beats(0.0, n / g.fs)
    samples = np.round(t * g.fs).astype(np.int64)
    keep = samples < n
    return SyntheticRecord(
        signal_mv=x,
        sample_rate_hz=g.fs,
        beat_samples=samples[keep],
        beat_labels=labels[keep],
        events=g.events,
        rr_s=rr[keep],
    )


class SyntheticPatient:
    """An endless synthetic ECG stream for one patient, produced chunk by chunk.

    Parameters
    ----------
    patient_id
        Identifier; also the seed when ``seed`` is None (CRC32 of the id).
    sample_rate_hz, hr_bpm, events, noise_mv, patient_variation
        As for :func:`synth_ecg`.
    seed
        Explicit seed.

    Notes
    -----
    ``next_chunk`` outputs concatenate to exactly ``synth_ecg`` of the same total length
    and parameters, whatever the chunk sizes.
    """

    def __init__(
        self,
        patient_id: str,
        sample_rate_hz: float = 250,
        hr_bpm: float = 70,
        events: Sequence[Event] = (),
        seed: int | None = None,
        noise_mv: float = 0.02,
        patient_variation: bool = True,
    ) -> None:
        self.patient_id = str(patient_id)
        self.seed = int(zlib.crc32(self.patient_id.encode())) if seed is None else int(seed)
        self._g = _Generator(sample_rate_hz, hr_bpm, events, self.seed, noise_mv, patient_variation)
        self.sample_rate_hz = self._g.fs
        self.events = self._g.events
        self.n_emitted = 0

    @property
    def t_s(self) -> float:
        """Stream time in seconds of the next sample."""
        return self.n_emitted / self.sample_rate_hz

    def next_chunk(self, n_samples: int) -> np.ndarray:
        """Return the next ``n_samples`` samples in mV."""
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        x = self._g.render(self.n_emitted, self.n_emitted + int(n_samples))
        self.n_emitted += int(n_samples)
        return x

    def beats_between(self, t0_s: float, t1_s: float) -> list[tuple[float, str]]:
        """Ground-truth beats ``(R time s, AAMI label)`` with ``t0_s <= time < t1_s``."""
        t, labels, _ = self._g.beats(t0_s, t1_s)
        return [(float(a), str(b)) for a, b in zip(t, labels)]


def write_wfdb(record: SyntheticRecord, folder: str | Path, name: str) -> Path:
    """Write a synthetic record as a WFDB record (``.hea``, ``.dat``, ``.atr``).

    The signal is stored as lead MLII in format 212 at 200 adu/mV (as MIT-BIH), and the
    reference beats as MIT-BIH annotation symbols (``N`` or ``V``), so every tool that
    reads PhysioNet records (``cardiowatch evaluate``, ``edge run``, ``simulate
    --records``) can run on it.
    """
    import wfdb

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    fs = float(record.sample_rate_hz)
    wfdb.wrsamp(name, fs=fs, units=["mV"], sig_name=["MLII"],
                p_signal=np.asarray(record.signal_mv, dtype=np.float64)[:, None],
                fmt=["212"], adc_gain=[200.0], baseline=[0], write_dir=str(out))
    symbols = ["V" if lab == "V" else "N" for lab in record.beat_labels]
    wfdb.wrann(name, "atr", np.asarray(record.beat_samples, dtype=np.int64), symbol=symbols,
               write_dir=str(out))
    return out / f"{name}.hea"
