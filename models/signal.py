"""Preprocessing stage: causal band-pass and resampling onto the model-rate grid.

The same code path serves the live worker (chunk by chunk, state kept per patient in a
Kafka-backed table) and offline evaluation (one call over a whole record). Processing a
record in chunks of any size gives the same output as processing it in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal as sps

try:  # the compiled kernel behind scipy.signal.sosfilt, without its ~25 us of checks
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel
except ImportError:  # pragma: no cover - other scipy layouts: use the public function
    _sosfilt_kernel = None

__all__ = [
    "MODEL_RATE_HZ",
    "MIN_RATE_HZ",
    "MAX_RATE_HZ",
    "BAND_HZ",
    "validate_sample_rate",
    "PreprocessorState",
    "StreamingPreprocessor",
    "preprocess_record",
]

MODEL_RATE_HZ: int = 125
"""Sample rate of the detector's input (and of everything downstream of this stage)."""

MIN_RATE_HZ: float = 50.0
MAX_RATE_HZ: float = 2000.0
# Inputs from 128 to 1000 Hz are the supported range; [50, 2000] is accepted.

BAND_HZ: tuple[float, float] = (0.5, 40.0)
"""Pass band: 0.5 Hz removes baseline wander, 40 Hz removes EMG/mains and anti-aliases
for the 125 Hz output (Nyquist 62.5 Hz)."""

_FILTER_ORDER = 2  # per band edge; butter(2, band) gives 2 second-order sections
_STATE_VERSION = 1.0


def validate_sample_rate(sample_rate_hz: float) -> float:
    """Check an input sample rate and return it as ``float``.

    Parameters
    ----------
    sample_rate_hz
        Input sample rate in Hz. Must be finite and in [50, 2000] Hz.

    Raises
    ------
    ValueError
        If the rate is not a finite number in [50, 2000] Hz; the message names it.
    """
    try:
        fs = float(sample_rate_hz)
    except (TypeError, ValueError):
        raise ValueError(f"sample_rate_hz must be a number, got {sample_rate_hz!r}") from None
    if not np.isfinite(fs) or not MIN_RATE_HZ <= fs <= MAX_RATE_HZ:
        raise ValueError(f"sample_rate_hz must be in [50, 2000], got {sample_rate_hz}")
    return fs


@lru_cache(maxsize=64)
def _bandpass_sos(fs: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = BAND_HZ
    hi = min(hi, 0.45 * fs)  # keep the upper edge below Nyquist for low input rates
    sos = sps.butter(_FILTER_ORDER, [lo, hi], btype="bandpass", fs=fs, output="sos")
    zi_unit = sps.sosfilt_zi(sos)
    return np.ascontiguousarray(sos, np.float64), zi_unit


@dataclass(frozen=True)
class PreprocessorState:
    """Per-stream state of :class:`StreamingPreprocessor`.

    Attributes
    ----------
    in_rate_hz, out_rate_hz
        Rates the state was made for.
    n_in
        Input samples consumed since stream start.
    n_out
        Output samples emitted since stream start (output ``k`` sits at input time
        ``k * in_rate_hz / out_rate_hz`` samples).
    last_y
        Last filtered input sample (index ``n_in - 1``), needed to interpolate across
        chunk boundaries.
    zi
        Filter state, shape ``(n_sections, 2)``; all zeros before the first sample.
    started
        False until the first sample initialised the filter state.
    """

    in_rate_hz: float
    out_rate_hz: int
    n_in: int
    n_out: int
    last_y: float
    zi: np.ndarray
    started: bool

    def to_bytes(self) -> bytes:
        """Pack as little-endian float64: version, rates, counters, flag, last_y, zi."""
        head = [
            _STATE_VERSION,
            self.in_rate_hz,
            float(self.out_rate_hz),
            float(self.n_in),
            float(self.n_out),
            1.0 if self.started else 0.0,
            self.last_y,
        ]
        return np.concatenate([np.asarray(head, "<f8"), self.zi.astype("<f8").ravel()]).tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PreprocessorState:
        """Inverse of :meth:`to_bytes`.

        Raises
        ------
        ValueError
            If ``raw`` is not a packed state of a known version.
        """
        if len(raw) % 8 or len(raw) < 8 * 7:
            raise ValueError(f"preprocessor state must be 7+ float64 values, got {len(raw)} bytes")
        a = np.frombuffer(raw, "<f8")
        if a[0] != _STATE_VERSION:
            raise ValueError(f"preprocessor state version must be {_STATE_VERSION}, got {a[0]}")
        zi = a[7:].astype(np.float64).reshape(-1, 2)
        return cls(
            in_rate_hz=float(a[1]),
            out_rate_hz=int(a[2]),
            n_in=int(a[3]),
            n_out=int(a[4]),
            started=bool(a[5]),
            last_y=float(a[6]),
            zi=zi,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PreprocessorState):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


class StreamingPreprocessor:
    """Causal 0.5–40 Hz band-pass at the input rate, then linear resampling to the model rate.

    Parameters
    ----------
    in_rate_hz
        Input sample rate in Hz, validated by :func:`validate_sample_rate`.
    out_rate_hz
        Output (model) sample rate in Hz.

    Notes
    -----
    Output sample ``k`` is the band-passed input interpolated at input position
    ``k * in_rate_hz / out_rate_hz``, computed from ``k`` alone, so the result does not
    depend on how the input is chunked. The filter state starts at the steady state for
    the first sample's value, which removes the DC step transient at stream start.
    """

    def __init__(self, in_rate_hz: float, out_rate_hz: int = MODEL_RATE_HZ) -> None:
        self.in_rate_hz = validate_sample_rate(in_rate_hz)
        if not isinstance(out_rate_hz, (int, np.integer)) or not 50 <= out_rate_hz <= 1000:
            raise ValueError(f"out_rate_hz must be an integer in [50, 1000], got {out_rate_hz!r}")
        self.out_rate_hz = int(out_rate_hz)
        self._sos, self._zi_unit = _bandpass_sos(self.in_rate_hz)
        self._step = self.in_rate_hz / self.out_rate_hz  # input samples per output sample

    def initial_state(self) -> PreprocessorState:
        """State for a new stream."""
        return PreprocessorState(
            in_rate_hz=self.in_rate_hz,
            out_rate_hz=self.out_rate_hz,
            n_in=0,
            n_out=0,
            last_y=0.0,
            zi=np.zeros_like(self._zi_unit),
            started=False,
        )

    def process(
        self, state: PreprocessorState, x: np.ndarray
    ) -> tuple[np.ndarray, PreprocessorState]:
        """Filter and resample one chunk.

        Parameters
        ----------
        state
            State returned by :meth:`initial_state` or the previous call.
        x
            1-D chunk of input samples in mV (any length, empty allowed).

        Returns
        -------
        y, new_state
            ``y`` is float64 model-rate samples in mV (possibly empty).

        Raises
        ------
        ValueError
            If ``x`` is not 1-D finite, or ``state`` was made for other rates.
        """
        if state.in_rate_hz != self.in_rate_hz or state.out_rate_hz != self.out_rate_hz:
            raise ValueError(
                f"state is for {state.in_rate_hz} Hz -> {state.out_rate_hz} Hz, "
                f"preprocessor is {self.in_rate_hz} Hz -> {self.out_rate_hz} Hz"
            )
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"x must be 1-D, got shape {x.shape}")
        m = x.shape[0]
        if m == 0:
            return np.empty(0, np.float64), state
        # A finite sum proves all samples finite (one pass); only then check sample-wise.
        if not np.isfinite(np.add.reduce(x)) and not np.all(np.isfinite(x)):
            raise ValueError(f"x must be finite, got {int(np.sum(~np.isfinite(x)))} non-finite samples")
        zi = state.zi if state.started else self._zi_unit * x[0]
        yf, zf = _sosfilt_zi(self._sos, x, zi)

        n0 = state.n_in  # absolute index of yf[0]
        last_abs = n0 + m - 1
        # Output k needs input positions floor(t_k) and floor(t_k)+1 <= last_abs
        # (or exactly t_k == last_abs). Count outputs with t_k <= last_abs.
        k_end = int(np.floor(last_abs / self._step)) + 1
        while k_end > state.n_out and (k_end - 1) * self._step > last_abs:
            k_end -= 1  # guard against float rounding in the division
        while k_end * self._step <= last_abs:
            k_end += 1
        k = np.arange(state.n_out, k_end, dtype=np.float64)
        if k.size:
            t = k * self._step
            j = np.floor(t).astype(np.int64)
            frac = t - j
            # Available samples: index n0-1 (last_y) .. last_abs.
            ext = np.concatenate(([state.last_y], yf))
            lo = j - (n0 - 1)
            hi = np.minimum(lo + 1, ext.shape[0] - 1)
            y = ext[lo] * (1.0 - frac) + ext[hi] * frac
        else:
            y = np.empty(0, np.float64)
        new_state = PreprocessorState(
            in_rate_hz=self.in_rate_hz,
            out_rate_hz=self.out_rate_hz,
            n_in=n0 + m,
            n_out=k_end if k.size else state.n_out,
            last_y=float(yf[-1]),
            zi=zf,
            started=True,
        )
        return y, new_state


def _sosfilt_zi(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.sosfilt(sos, x, zi=zi)`` for 1-D float64 ``x`` (same numbers, less overhead)."""
    if _sosfilt_kernel is None:
        return sps.sosfilt(sos, x, zi=zi)
    y = np.array(x, np.float64, order="C").reshape(1, -1)  # filtered in place
    z = np.array(zi, np.float64, order="C").reshape(1, -1, 2)
    _sosfilt_kernel(sos, y, z)
    return y[0], z[0]


def preprocess_record(
    x: np.ndarray, in_rate_hz: float, out_rate_hz: int = MODEL_RATE_HZ
) -> np.ndarray:
    """Run the streaming preprocessor over a whole record in one call.

    Parameters
    ----------
    x
        1-D record in mV.
    in_rate_hz
        Its sample rate in Hz.
    out_rate_hz
        Output rate in Hz (default :data:`MODEL_RATE_HZ`).

    Returns
    -------
    numpy.ndarray
        Float64 model-rate samples; sample ``k`` is at ``k / out_rate_hz`` s from the
        record start.
    """
    pre = StreamingPreprocessor(in_rate_hz, out_rate_hz)
    y, _ = pre.process(pre.initial_state(), x)
    return y
