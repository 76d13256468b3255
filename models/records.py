"""Record loading stage: WFDB records (e.g. PhysioNet MIT-BIH) with beat annotations in AAMI classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

__all__ = ["AAMI_CLASSES", "Record", "list_records", "load_record"]

AAMI_CLASSES: dict[str, str] = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q",
}
"""MIT-BIH beat symbol -> AAMI class (ANSI/AAMI EC57). Other symbols are not beats."""


@dataclass(frozen=True)
class Record:
    """One lead of a WFDB record with its beat and rhythm annotations.

    Attributes
    ----------
    name
        Record name (file stem).
    signal_mv
        1-D float64 signal of the chosen lead in mV.
    sample_rate_hz
        Its sample rate.
    lead
        Lead name from the header (e.g. ``"MLII"``).
    beat_samples
        int64 sample indices of beat annotations (non-beat annotations skipped).
    beat_symbols
        Their MIT-BIH symbols.
    aami_classes
        Their AAMI classes (``N``, ``S``, ``V``, ``F``, ``Q``).
    rhythm_annotations
        ``(sample, aux_note)`` for rhythm-change annotations (symbol ``+``), e.g.
        ``(1234, "(AFIB")``.
    """

    name: str
    signal_mv: np.ndarray
    sample_rate_hz: float
    lead: str
    beat_samples: np.ndarray
    beat_symbols: np.ndarray
    aami_classes: np.ndarray
    rhythm_annotations: tuple[tuple[int, str], ...]


def list_records(folder: Path) -> list[str]:
    """Names of the WFDB records (``*.hea`` headers) in ``folder``, sorted.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"record folder does not exist: {folder}")
    return sorted(p.stem for p in folder.glob("*.hea"))


def load_record(
    folder: Path, name: str, channel: int | str = 0, annotation: str = "atr"
) -> Record:
    """Load one lead of a WFDB record and its beat annotations.

    Parameters
    ----------
    folder
        Folder holding ``{name}.hea``, the signal file and ``{name}.{annotation}``.
    name
        Record name.
    channel
        Lead index or lead name (e.g. ``"MLII"``).
    annotation
        Annotation file extension. A missing annotation file gives empty beat arrays.

    Raises
    ------
    FileNotFoundError
        If the header is missing.
    ValueError
        If ``channel`` names no lead of the record; the message lists the leads.
    """
    folder = Path(folder)
    base = folder / name
    if not base.with_suffix(".hea").is_file():
        raise FileNotFoundError(f"no WFDB header {base.with_suffix('.hea')}")
    rec = wfdb.rdrecord(str(base))
    leads = list(rec.sig_name or [])
    if isinstance(channel, str):
        if channel not in leads:
            raise ValueError(f"channel must be one of {leads}, got {channel!r}")
        idx = leads.index(channel)
    else:
        if not 0 <= int(channel) < rec.n_sig:
            raise ValueError(f"channel must be in [0, {rec.n_sig - 1}], got {channel}")
        idx = int(channel)
    sig = np.asarray(rec.p_signal[:, idx], dtype=np.float64)
    unit = (rec.units[idx] if rec.units else "mV") or "mV"
    if unit.lower() in ("uv", "µv"):
        sig = sig / 1000.0
    # NaNs mark invalid samples in WFDB; treat them as 0 mV (flat), which SQI flags.
    sig = np.nan_to_num(sig, nan=0.0)

    samples = np.empty(0, np.int64)
    symbols = np.empty(0, dtype="<U1")
    rhythms: list[tuple[int, str]] = []
    if Path(f"{base}.{annotation}").is_file():
        ann = wfdb.rdann(str(base), annotation)
        all_samples = np.asarray(ann.sample, dtype=np.int64)
        all_symbols = np.asarray(ann.symbol, dtype=object)
        aux = list(ann.aux_note or [""] * len(all_symbols))
        is_beat = np.array([s in AAMI_CLASSES for s in all_symbols], dtype=bool)
        samples = all_samples[is_beat]
        symbols = np.asarray(all_symbols[is_beat], dtype="<U1")
        rhythms = [
            (int(s), str(a).rstrip("\x00"))
            for s, sym, a in zip(all_samples, all_symbols, aux)
            if sym == "+" and a
        ]
    classes = np.asarray([AAMI_CLASSES[s] for s in symbols], dtype="<U1")
    return Record(
        name=name,
        signal_mv=sig,
        sample_rate_hz=float(rec.fs),
        lead=leads[idx] if leads else str(idx),
        beat_samples=samples,
        beat_symbols=symbols,
        aami_classes=classes,
        rhythm_annotations=tuple(rhythms),
    )
