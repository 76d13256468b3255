"""Record loading stage: WFDB records (e.g. PhysioNet MIT-BIH) with beat annotations in AAMI classes.

Two kinds of record:

- signal records (:func:`load_record`): a header, a signal file and an annotation file;
  one lead is loaded (``MLII`` when the record has it, else lead 0, unless asked for
  another).
- annotation-only records (:func:`load_annotations`): beat annotations without any
  signal (PhysioNet's RR-interval databases ``nsr2db``, ``chf2db`` with a 0-signal
  header, ``ltafdb`` without a header at all). The beat times are the RR series.

Both keep the rhythm annotations (``+`` with an ``aux_note`` such as ``(AFIB``) and the
ventricular-flutter/fibrillation brackets (``[`` onset, ``]`` end) raw, as sample
indices; :mod:`models.episodes` turns them into episodes.

:func:`read_demographics` reads the patient's age and sex from the header comments, in
the two forms PhysioNet's databases use (MIT-BIH ``# 75 F 1011 654 x1``; QT Database
European ST-T excerpts, nsr2db, chf2db ``#Age: 55  Sex: M``); anything else is unknown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import wfdb

__all__ = [
    "AAMI_CLASSES",
    "NOISE_SYMBOLS",
    "PREFERRED_LEAD",
    "VF_BRACKETS",
    "BeatAnnotations",
    "Demographics",
    "Record",
    "has_signal",
    "list_annotated",
    "list_records",
    "load_annotations",
    "load_record",
    "parse_demographics",
    "read_demographics",
]

AAMI_CLASSES: dict[str, str] = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q",
}
"""MIT-BIH beat symbol -> AAMI class (ANSI/AAMI EC57). Other symbols are not beats."""

PREFERRED_LEAD = "MLII"
"""Lead loaded by default when a record has it (MIT-BIH 114 has V5 first)."""

NOISE_SYMBOLS = ("~", "|")
"""Annotations that mark noise (``~``: a change in signal quality, ``|``: an isolated
QRS-like artefact). In the RR-interval databases (nsr2db, chf2db) beats inside noise are
missing, so the interval across such a mark is a hole in the beat series, not an RR."""

VF_BRACKETS = ("[", "]")
"""Onset and end of ventricular flutter/fibrillation (cudb, MIT-BIH 207). ``!`` marks
flutter waves inside such an episode: it is neither a beat nor an episode bound."""


@dataclass(frozen=True)
class BeatAnnotations:
    """The reference annotations of a record, with no signal.

    Attributes
    ----------
    name
        Record name (file stem).
    sample_rate_hz
        The annotations' time base: sample ``k`` is at ``k / sample_rate_hz`` seconds.
    beat_samples, beat_symbols, aami_classes
        As in :class:`Record`.
    rhythm_annotations
        ``(sample, aux_note)`` of the rhythm-change annotations (``+``), NULs stripped.
    vf_annotations
        ``(sample, symbol)`` of the ``[`` / ``]`` annotations, in time order.
    end_sample
        One past the last annotated sample: the record's end for an annotation-only
        record (its header, if any, says 0 samples).
    noise_samples
        int64 sample indices of the noise annotations (:data:`NOISE_SYMBOLS`).
    """

    name: str
    sample_rate_hz: float
    beat_samples: np.ndarray
    beat_symbols: np.ndarray
    aami_classes: np.ndarray
    rhythm_annotations: tuple[tuple[int, str], ...]
    vf_annotations: tuple[tuple[int, str], ...]
    end_sample: int
    noise_samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def beat_times_s(self) -> np.ndarray:
        """Beat times in seconds from the record start."""
        return np.asarray(self.beat_samples, dtype=np.float64) / self.sample_rate_hz

    @property
    def duration_s(self) -> float:
        """Length of the record in seconds (to the last annotation)."""
        return self.end_sample / self.sample_rate_hz

    def noisy_intervals(self) -> np.ndarray:
        """bool [n_beats - 1]: interval ``k`` (beat ``k`` to beat ``k + 1``) holds a noise
        annotation (``beat_samples[k] <= noise < beat_samples[k + 1]``), so it is no RR."""
        b = np.asarray(self.beat_samples, dtype=np.int64)
        out = np.zeros(max(b.size - 1, 0), dtype=bool)
        if out.size == 0 or self.noise_samples.size == 0:
            return out
        k = np.searchsorted(b, np.asarray(self.noise_samples, dtype=np.int64), side="right") - 1
        out[k[(k >= 0) & (k < out.size)]] = True
        return out


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
    vf_annotations
        ``(sample, symbol)`` for the ventricular flutter/fibrillation brackets
        (``[`` onset, ``]`` end).
    lead_index
        Index of the loaded lead in the record (pairs it with a noise-record channel).
    """

    name: str
    signal_mv: np.ndarray
    sample_rate_hz: float
    lead: str
    beat_samples: np.ndarray
    beat_symbols: np.ndarray
    aami_classes: np.ndarray
    rhythm_annotations: tuple[tuple[int, str], ...]
    vf_annotations: tuple[tuple[int, str], ...] = ()
    lead_index: int = 0

    @property
    def duration_s(self) -> float:
        """Length of the signal in seconds."""
        return len(self.signal_mv) / self.sample_rate_hz

    def annotations(self) -> BeatAnnotations:
        """The record's annotations alone (the signal's end is the record's end)."""
        return BeatAnnotations(
            name=self.name, sample_rate_hz=self.sample_rate_hz, beat_samples=self.beat_samples,
            beat_symbols=self.beat_symbols, aami_classes=self.aami_classes,
            rhythm_annotations=self.rhythm_annotations, vf_annotations=self.vf_annotations,
            end_sample=len(self.signal_mv))


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


def list_annotated(folder: Path, annotation: str) -> list[str]:
    """Names of the records in ``folder`` with a ``{name}.{annotation}`` file, header or not.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"record folder does not exist: {folder}")
    return sorted(p.name[: -len(annotation) - 1] for p in folder.glob(f"*.{annotation}"))


def has_signal(folder: Path, name: str) -> bool:
    """Whether ``name`` in ``folder`` has a header that declares at least one signal."""
    hea = Path(folder) / f"{name}.hea"
    if not hea.is_file():
        return False
    return int(wfdb.rdheader(str(Path(folder) / name)).n_sig or 0) > 0


def _read_annotations(base: Path, annotation: str, fs: float, name: str,
                      end_sample: int | None) -> BeatAnnotations:
    samples = np.empty(0, np.int64)
    symbols = np.empty(0, dtype="<U1")
    rhythms: list[tuple[int, str]] = []
    brackets: list[tuple[int, str]] = []
    noise = np.empty(0, np.int64)
    last = 0
    if Path(f"{base}.{annotation}").is_file():
        ann = wfdb.rdann(str(base), annotation)
        all_samples = np.asarray(ann.sample, dtype=np.int64)
        all_symbols = np.asarray(ann.symbol, dtype=object)
        aux = list(ann.aux_note or [""] * len(all_symbols))
        is_beat = np.array([s in AAMI_CLASSES for s in all_symbols], dtype=bool)
        samples = all_samples[is_beat]
        symbols = np.asarray(all_symbols[is_beat], dtype="<U1")
        rhythms = [
            (int(s), str(a).rstrip("\x00").strip())
            for s, sym, a in zip(all_samples, all_symbols, aux)
            if sym == "+" and a and str(a).rstrip("\x00").strip()
        ]
        brackets = [(int(s), str(sym)) for s, sym in zip(all_samples, all_symbols)
                    if sym in VF_BRACKETS]
        noise = all_samples[np.isin(all_symbols, NOISE_SYMBOLS)]
        last = int(all_samples.max()) + 1 if all_samples.size else 0
    classes = np.asarray([AAMI_CLASSES[s] for s in symbols], dtype="<U1")
    return BeatAnnotations(
        name=name, sample_rate_hz=float(fs), beat_samples=samples, beat_symbols=symbols,
        aami_classes=classes, rhythm_annotations=tuple(rhythms), vf_annotations=tuple(brackets),
        end_sample=last if end_sample is None else int(end_sample), noise_samples=noise)


def _pick_lead(leads: list[str], n_sig: int, channel: int | str | None) -> int:
    if channel is None:
        return leads.index(PREFERRED_LEAD) if PREFERRED_LEAD in leads else 0
    if isinstance(channel, str):
        if channel not in leads:
            raise ValueError(f"channel must be one of {leads}, got {channel!r}")
        return leads.index(channel)
    if not 0 <= int(channel) < n_sig:
        raise ValueError(f"channel must be in [0, {n_sig - 1}], got {channel}")
    return int(channel)


def load_record(
    folder: Path, name: str, channel: int | str | None = None, annotation: str = "atr"
) -> Record:
    """Load one lead of a WFDB record and its beat annotations.

    Parameters
    ----------
    folder
        Folder holding ``{name}.hea``, the signal file and ``{name}.{annotation}``.
    name
        Record name.
    channel
        Lead index or lead name (e.g. ``"V5"``). ``None``: ``MLII`` when the record has
        it, else lead 0.
    annotation
        Annotation file extension. A missing annotation file gives empty beat arrays.

    Raises
    ------
    FileNotFoundError
        If the header is missing.
    ValueError
        If ``channel`` names no lead of the record (the message lists the leads), or the
        header declares no signal (an annotation-only record: use
        :func:`load_annotations`).
    """
    folder = Path(folder)
    base = folder / name
    if not base.with_suffix(".hea").is_file():
        raise FileNotFoundError(f"no WFDB header {base.with_suffix('.hea')}")
    if not has_signal(folder, name):
        raise ValueError(f"record {name!r} in {folder} has no signal (its header declares 0 "
                         "signals): load it with load_annotations")
    rec = wfdb.rdrecord(str(base))
    leads = list(rec.sig_name or [])
    idx = _pick_lead(leads, int(rec.n_sig), channel)
    sig = np.asarray(rec.p_signal[:, idx], dtype=np.float64)
    unit = (rec.units[idx] if rec.units else "mV") or "mV"
    if unit.lower() in ("uv", "µv"):
        sig = sig / 1000.0
    # NaNs mark invalid samples in WFDB; treat them as 0 mV (flat), which SQI flags.
    sig = np.nan_to_num(sig, nan=0.0)
    ann = _read_annotations(base, annotation, float(rec.fs), name, len(sig))
    return Record(
        name=name,
        signal_mv=sig,
        sample_rate_hz=float(rec.fs),
        lead=leads[idx] if leads else str(idx),
        beat_samples=ann.beat_samples,
        beat_symbols=ann.beat_symbols,
        aami_classes=ann.aami_classes,
        rhythm_annotations=ann.rhythm_annotations,
        vf_annotations=ann.vf_annotations,
        lead_index=idx,
    )


def load_annotations(
    folder: Path, name: str, annotation: str = "atr", fs: float | None = None
) -> BeatAnnotations:
    """Load the beat and rhythm annotations of a record, without its signal.

    For annotation-only records (``nsr2db``/``chf2db``: ``.ecg`` with a 0-signal header;
    ``ltafdb``: ``.atr`` without any header), and for any signal record whose RR series
    alone is wanted.

    Parameters
    ----------
    folder, name
        Where ``{name}.{annotation}`` is.
    annotation
        Annotation file extension (``"atr"``, ``"ecg"``).
    fs
        The annotations' sample rate in Hz. Needed when neither a header nor the
        annotation file gives one (``ltafdb``: PhysioNet gives 128 Hz); when one does,
        ``fs`` must agree with it.

    Raises
    ------
    FileNotFoundError
        If the annotation file is missing.
    ValueError
        If no sample rate is known, or ``fs`` disagrees with the record's own.
    """
    folder = Path(folder)
    base = folder / name
    path = Path(f"{base}.{annotation}")
    if not path.is_file():
        raise FileNotFoundError(f"no annotation file {path}")
    if fs is not None and not (math.isfinite(fs) and fs > 0):
        raise ValueError(f"fs must be a positive sample rate in Hz, got {fs}")
    own: float | None = None
    end: int | None = None
    if base.with_suffix(".hea").is_file():
        hdr = wfdb.rdheader(str(base))
        own = float(hdr.fs) if hdr.fs else None
        if int(hdr.n_sig or 0) > 0 and hdr.sig_len:
            end = int(hdr.sig_len)
    if own is None:
        ann_fs = wfdb.rdann(str(base), annotation, sampto=1).fs
        own = float(ann_fs) if ann_fs else None
    if own is not None and fs is not None and not math.isclose(own, fs, rel_tol=1e-6):
        raise ValueError(f"fs must match record {name!r}'s own sample rate {own:g} Hz, got {fs:g}")
    rate = own if own is not None else fs
    if rate is None:
        raise ValueError(f"record {name!r} in {folder} gives no sample rate (no header, none in "
                         f"{path.name}): pass fs (PhysioNet's ltafdb: 128)")
    return _read_annotations(base, annotation, rate, name, end)


Sex = Literal["F", "M"]

MAX_AGE_YEARS = 130.0
"""Upper bound of a plausible age; a header beyond it is a bad value, not a patient."""


@dataclass(frozen=True, slots=True)
class Demographics:
    """A patient's age and sex as the record header gives them; ``None`` is unknown.

    Attributes
    ----------
    age_years
        Age in years at the recording (nsr2db has ``28.5``), or ``None``.
    sex
        ``"F"`` or ``"M"``, or ``None`` (the header says ``?``, ``-`` or nothing).
    """

    age_years: float | None = None
    sex: Sex | None = None

    def __post_init__(self) -> None:
        a = self.age_years
        if a is not None and not (math.isfinite(a) and 0 <= a <= MAX_AGE_YEARS):
            raise ValueError(f"age_years must be in [0, {MAX_AGE_YEARS:g}] or None, got {a}")
        if self.sex not in (None, "F", "M"):
            raise ValueError(f"sex must be 'F', 'M' or None, got {self.sex!r}")


# MIT-BIH Arrhythmia (and the QT Database excerpts of it): the first comment line is
# "<age> <sex> <...>", e.g. "75 F 1011 654 x1"; "?" stands for unknown.
_MITBIH_LINE = re.compile(r"^\s*(?P<age>\d+(?:\.\d+)?|\?|-)\s+(?P<sex>[MF?-])(?:\s|$)", re.IGNORECASE)
# European ST-T excerpts in the QT Database, nsr2db, chf2db: "Age: 55  Sex: M  ...",
# "Age: 28.5 Sex: M", "Age: -  Sex: -", "Sex: ?".
_LABELLED = re.compile(r"\bAge:\s*(?P<age>\S+)\s+Sex:\s*(?P<sex>\S+)", re.IGNORECASE)
_SEX_WORDS: dict[str, Sex] = {"f": "F", "female": "F", "m": "M", "male": "M"}


def _age(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "?", "-": unknown


def parse_demographics(comments: Sequence[str]) -> Demographics:
    """Age and sex from a WFDB header's comment lines (without their ``#``).

    A labelled ``Age: .. Sex: ..`` line anywhere wins; otherwise the first line is read as
    MIT-BIH's ``<age> <sex> ...``. Comments in neither form (svdb, cudb, nstdb, most QT
    Database excerpts: ``Produced by xform ...``) give unknown for both.

    Raises
    ------
    ValueError
        If a header states an age outside ``[0, MAX_AGE_YEARS]``.
    """
    lines = [str(c).strip() for c in comments]
    for line in lines:
        m = _LABELLED.search(line)
        if m:
            return Demographics(_age(m["age"]), _SEX_WORDS.get(m["sex"].lower()))
    if lines:
        m = _MITBIH_LINE.match(lines[0])
        if m:
            return Demographics(_age(m["age"]), _SEX_WORDS.get(m["sex"].lower()))
    return Demographics()


def read_demographics(folder: Path, name: str) -> Demographics:
    """The age and sex in record ``name``'s header in ``folder``, or unknown for both.

    Works for signal and annotation-only records (nsr2db, chf2db: a 0-signal header);
    a record without a header (ltafdb) is unknown.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist.
    ValueError
        If the header states an impossible age (:func:`parse_demographics`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"record folder does not exist: {folder}")
    if not (folder / f"{name}.hea").is_file():
        return Demographics()
    hdr = wfdb.rdheader(str(folder / name))
    try:
        return parse_demographics(hdr.comments or [])
    except ValueError as e:
        raise ValueError(f"record {name!r} in {folder}: {e}") from None
