"""Noise stress stage: add a noise record to a clean ECG at a chosen SNR, as PhysioNet's ``nst`` does.

The definition follows ``nst`` and ``sigamp`` of the WFDB software package (Moody,
Muldrow and Mark 1984, the MIT-BIH Noise Stress Test Database):

- **Signal size** ``S``: the peak-to-peak amplitude of the clean lead in a window of
  +-50 ms around each of the first 300 normal beats (AAMI N or S: WFDB's ``map1``
  counts supraventricular beats as normal), averaged after dropping the lowest and the
  highest 5 % (a trimmed mean).
- **Noise size** ``N``: the RMS of the noise channel about its own mean in each of the
  first 300 consecutive 1-second windows, trimmed mean likewise.
- **SNR**: ``SNR_dB = 20 log10(S / (2 sqrt(2) N_added))``, where ``N_added`` is the RMS of
  the noise as added (``gain * N``): for a sinusoid the peak-to-peak amplitude is
  ``2 sqrt(2)`` times the RMS. So ``gain = 10 ** (-SNR_dB / 20) * sqrt(2) / 4 * S / N``.
- **Protocol**: no noise for the first 5 minutes (a detector's learning period), then
  noise on and off in alternating 2-minute blocks to the end (or, ``continuous``,
  noise throughout after the first 5 minutes).
- **No steps**: when the gain changes, an offset changes with it so the output is
  continuous (the last sample before the change keeps its value under the new gain);
  a noise record shorter than the ECG is rewound, its copy shifted to join without a
  step.

Clean lead ``i`` of a record takes noise channel ``i % n_noise_channels``, as ``nst``
pairs them. A noise record at another sample rate is resampled (polyphase) to the ECG's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = [
    "NST_BLOCK_S",
    "NST_LEARNING_S",
    "NoiseMix",
    "NoiseSpec",
    "add_noise",
    "load_noise",
    "noise_gain",
    "noise_rms",
    "nst_gain_schedule",
    "parse_noise_specs",
    "signal_amplitude",
]

NST_LEARNING_S = 300.0  # nst: a five-minute noise-free learning period
NST_BLOCK_S = 120.0  # then two-minute noisy and noise-free periods alternately
_TRIM = 0.05  # sigamp's trimmed mean drops this fraction at each end
_MAX_MEASUREMENTS = 300  # sigamp's NMAX
_QRS_HALF_WINDOW_S = 0.05  # sigamp -a: 50 ms before to 50 ms after each annotation


@dataclass(frozen=True, slots=True)
class NoiseSpec:
    """One noise condition: the nstdb noise record (``em``, ``ma``, ``bw``) and the SNR in dB.

    ``record`` is ``None`` for the clean (no noise) condition.
    """

    record: str | None
    snr_db: float = math.inf

    @property
    def label(self) -> str:
        """``"em:12"``, or ``"clean"``."""
        return "clean" if self.record is None else f"{self.record}:{self.snr_db:g}"


def parse_noise_specs(spec: str) -> tuple[NoiseSpec, ...]:
    """Parse ``"em:12,ma:6,bw:0"`` (and ``clean`` for no noise) into conditions.

    Raises
    ------
    ValueError
        An item is not ``RECORD:SNR_DB`` or ``clean``; the message names the item.
    """
    out: list[NoiseSpec] = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        if item == "clean":
            out.append(NoiseSpec(None))
            continue
        name, sep, snr = item.partition(":")
        try:
            value = float(snr)
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value) or "/" in name:
            raise ValueError(f"noise must be RECORD:SNR_DB items such as em:12 (or clean), got {item!r}")
        out.append(NoiseSpec(name, value))
    if not out:
        raise ValueError(f"noise must name at least one RECORD:SNR_DB item, got {spec!r}")
    return tuple(out)


def _trimmed_mean(values: np.ndarray) -> float:
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = v.size // int(round(1 / _TRIM))  # sigamp: namp / 20 from each end
    kept = v[k:v.size - k]
    return float(kept.mean()) if kept.size else float("nan")


def signal_amplitude(signal: np.ndarray, beat_samples: np.ndarray, sample_rate_hz: float) -> float:
    """Signal size ``S``: trimmed mean of the QRS peak-to-peak amplitudes (module docstring).

    Parameters
    ----------
    signal
        The clean lead (any unit; ``S`` is in that unit).
    beat_samples
        Sample indices of the normal beats to measure (the first 300 inside the signal
        are used).
    sample_rate_hz
        The signal's rate.

    Raises
    ------
    ValueError
        If no beat has a full window inside the signal.
    """
    x = np.asarray(signal, dtype=np.float64).ravel()
    h = int(round(_QRS_HALF_WINDOW_S * sample_rate_hz))
    b = np.asarray(beat_samples, dtype=np.int64).ravel()
    b = np.sort(b[(b - h >= 0) & (b + h < x.size)])[:_MAX_MEASUREMENTS]
    if b.size == 0:
        raise ValueError(f"beat_samples must hold a beat with a full +-{h}-sample window in the "
                         f"{x.size}-sample signal, got none of {np.size(beat_samples)}")
    win = x[b[:, None] + np.arange(-h, h + 1)[None, :]]
    return _trimmed_mean(win.max(axis=1) - win.min(axis=1))


def noise_rms(noise: np.ndarray, sample_rate_hz: float) -> float:
    """Noise size ``N``: trimmed mean of the RMS about the mean in 1-s windows (first 300).

    Raises
    ------
    ValueError
        If the noise is shorter than one second.
    """
    z = np.asarray(noise, dtype=np.float64).ravel()
    w = int(round(sample_rate_hz))
    n = min(z.size // w, _MAX_MEASUREMENTS) if w > 0 else 0
    if n < 1:
        raise ValueError(f"noise must be at least 1 s long ({w} samples), got {z.size} samples")
    blocks = z[: n * w].reshape(n, w)
    rms = np.sqrt(np.mean((blocks - blocks.mean(axis=1, keepdims=True)) ** 2, axis=1))
    return _trimmed_mean(rms)


def noise_gain(snr_db: float, signal_pp: float, noise_size: float) -> float:
    """Gain on the noise for ``snr_db``: ``10 ** (-snr_db / 20) * sqrt(2) / 4 * S / N``."""
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    if not (signal_pp > 0 and math.isfinite(signal_pp)):
        raise ValueError(f"signal_pp must be a positive amplitude, got {signal_pp}")
    if not (noise_size > 0 and math.isfinite(noise_size)):
        raise ValueError(f"noise_size must be a positive RMS, got {noise_size}")
    return 10.0 ** (-snr_db / 20.0) * math.sqrt(2.0) / 4.0 * signal_pp / noise_size


def nst_gain_schedule(n_samples: int, sample_rate_hz: float, gain: float,
                      continuous: bool = False) -> np.ndarray:
    """Per-sample noise gain: 0 for the first 5 minutes, then ``gain`` and 0 in alternating
    2-minute blocks (``continuous``: ``gain`` throughout after the first 5 minutes)."""
    t = np.arange(int(n_samples)) / float(sample_rate_hz)
    after = t - NST_LEARNING_S
    on = after >= 0
    if not continuous:
        on &= (np.floor(np.maximum(after, 0) / NST_BLOCK_S).astype(np.int64) % 2) == 0
    return np.where(on, float(gain), 0.0)


def _resample(noise: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    if math.isclose(from_hz, to_hz, rel_tol=1e-9):
        return noise
    from scipy.signal import resample_poly

    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    return np.asarray(resample_poly(noise, ratio.numerator, ratio.denominator), dtype=np.float64)


def _extend(noise: np.ndarray, n: int) -> np.ndarray:
    """Rewind the noise as often as needed, each copy shifted to join the last one."""
    if noise.size >= n:
        return noise[:n]
    parts: list[np.ndarray] = []
    last: float | None = None
    while sum(p.size for p in parts) < n:
        seg = noise if last is None else noise - noise[0] + last
        parts.append(seg)
        last = float(seg[-1])
    return np.concatenate(parts)[:n]


@dataclass(frozen=True)
class NoiseMix:
    """A noise-stressed lead and how it was made.

    Attributes
    ----------
    signal_mv
        The clean lead plus the scheduled noise.
    gain
        Gain on the noise record in the noisy blocks.
    signal_pp_mv, noise_size
        ``S`` (mV) and ``N`` (the noise record's unit) the gain came from.
    snr_db
        The SNR asked for.
    noisy
        Per-sample mask of where noise is added.
    """

    signal_mv: np.ndarray
    gain: float
    signal_pp_mv: float
    noise_size: float
    snr_db: float
    noisy: np.ndarray

    def to_dict(self) -> dict[str, float]:
        """JSON-safe summary (no arrays)."""
        return {"snr_db": self.snr_db, "gain": self.gain, "signal_pp_mv": self.signal_pp_mv,
                "noise_rms": self.noise_size,
                "noisy_fraction": float(self.noisy.mean()) if self.noisy.size else 0.0}


def add_noise(
    clean_mv: np.ndarray,
    beat_samples: np.ndarray,
    noise: np.ndarray,
    sample_rate_hz: float,
    snr_db: float,
    *,
    aami_classes: np.ndarray | None = None,
    noise_rate_hz: float | None = None,
    continuous: bool = False,
) -> NoiseMix:
    """Add ``noise`` to ``clean_mv`` at ``snr_db`` the way ``nst`` does (module docstring).

    Parameters
    ----------
    clean_mv
        The clean lead, mV.
    beat_samples
        Reference beat samples of the clean lead.
    noise
        One noise channel (e.g. nstdb ``em`` signal 0), any unit.
    sample_rate_hz
        Rate of the clean lead.
    snr_db
        Target SNR in the noisy blocks, dB.
    aami_classes
        The beats' AAMI classes; only N and S beats size the signal. ``None``: all beats.
    noise_rate_hz
        Rate of ``noise``; ``None`` when it is ``sample_rate_hz``.
    continuous
        Noise throughout after the learning period instead of 2-minute blocks.
    """
    x = np.asarray(clean_mv, dtype=np.float64).ravel()
    z = np.asarray(noise, dtype=np.float64).ravel()
    if not (math.isfinite(sample_rate_hz) and sample_rate_hz > 0):
        raise ValueError(f"sample_rate_hz must be a positive rate, got {sample_rate_hz}")
    nrate = float(noise_rate_hz) if noise_rate_hz is not None else float(sample_rate_hz)
    if not (math.isfinite(nrate) and nrate > 0):
        raise ValueError(f"noise_rate_hz must be a positive rate, got {noise_rate_hz}")
    b = np.asarray(beat_samples, dtype=np.int64).ravel()
    if aami_classes is not None:
        c = np.asarray(aami_classes, dtype=str).ravel()
        if c.shape != b.shape:
            raise ValueError(f"aami_classes must have one class per beat ({b.size}), got {c.size}")
        b = b[np.isin(c, ("N", "S"))]
    s_pp = signal_amplitude(x, b, sample_rate_hz)
    n_size = noise_rms(z, nrate)
    g = noise_gain(snr_db, s_pp, n_size)
    zz = _extend(_resample(z, nrate, sample_rate_hz), x.size)
    gains = nst_gain_schedule(x.size, sample_rate_hz, g, continuous)
    # offset z_k: changes by (g_new - g_old) * noise at the last sample before a gain change
    dg = np.diff(gains, prepend=0.0)
    inc = np.zeros(x.size)
    inc[1:] = dg[1:] * zz[:-1]
    offset = np.cumsum(inc)
    return NoiseMix(signal_mv=x + gains * zz - offset, gain=g, signal_pp_mv=s_pp,
                    noise_size=n_size, snr_db=float(snr_db), noisy=gains > 0)


def load_noise(folder: Path, name: str, lead_index: int) -> tuple[np.ndarray, float]:
    """Noise channel ``lead_index % n_channels`` of noise record ``name`` and its rate.

    Raises
    ------
    FileNotFoundError
        If ``{folder}/{name}.hea`` is missing (the message names the folder).
    """
    import wfdb

    base = Path(folder) / name
    if not base.with_suffix(".hea").is_file():
        raise FileNotFoundError(f"no noise record {name!r} in {folder} (nstdb: bw, em, ma)")
    rec = wfdb.rdrecord(str(base))
    ch = int(lead_index) % int(rec.n_sig)
    return np.nan_to_num(np.asarray(rec.p_signal[:, ch], dtype=np.float64)), float(rec.fs)
