"""Heart-rate training data: the RR series of WFDB records as a wearable reports them, with each interval's rhythm.

Every record, with a signal or annotation-only (nsr2db, chf2db, ltafdb), is read through
its beat annotations (:func:`models.records.load_annotations`): the beat times are the RR
series, exactly what the simulated wearable (:class:`services.simulator.RRSource`) sends.
An interval that holds a noise annotation (:data:`models.records.NOISE_SYMBOLS`) is a
hole in the beat series, not an RR: the wearable never reports it, and neither does this
series (``gap_before`` marks where one was left out).

Each interval carries the rhythm in force at its end beat, from the record's rhythm
annotations (``(N``, ``(AFIB``, ``(AFL``, ``(AB``...; :func:`models.episodes.rhythm_episodes`).
Records without any rhythm annotation have rhythm ``""`` (unknown), except those of the
databases in :data:`SINUS_DATABASES`, which are sinus rhythm by how they were collected.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.episodes import TruthEpisodes, rhythm_episodes, truth_episodes
from models.records import has_signal, list_annotated, list_records, load_annotations

__all__ = ["SINUS_DATABASES", "RRSeries", "discover_rr_records", "load_rr_series", "load_rr_folders"]

#: PhysioNet RR-interval databases whose subjects are in sinus rhythm by selection (no
#: rhythm annotations): the Normal Sinus Rhythm and the Congestive Heart Failure RR
#: Interval Databases. Their records count as "no AF" (as the evaluator counts them).
SINUS_DATABASES = ("nsr2db", "chf2db")


@dataclass(frozen=True)
class RRSeries:
    """One record's reported RR intervals and their labels.

    Attributes
    ----------
    name
        ``folder/record`` (a patient: records are never split across folds).
    end_s
        float64 [n] time of the beat that ends each interval, seconds from the record start.
    rr_s
        float64 [n] the intervals, seconds.
    rhythm
        [n] rhythm label at the end beat (``"N"``, ``"AFIB"``, ``"AFL"``, ``"AB"``, ...),
        ``""`` where unknown.
    aami
        [n] AAMI class of the end beat (``N``, ``S``, ``V``, ``F``, ``Q``).
    gap_before
        bool [n]: one or more noisy intervals were left out just before this one.
    duration_s
        Record length.
    truth
        The record's truth episodes (AF, AFL...), as the evaluator judges alerts.
    """

    name: str
    end_s: np.ndarray
    rr_s: np.ndarray
    rhythm: np.ndarray
    aami: np.ndarray
    gap_before: np.ndarray
    duration_s: float
    truth: TruthEpisodes

    @property
    def af(self) -> np.ndarray:
        """bool [n]: the interval ends in atrial fibrillation."""
        return self.rhythm == "AFIB"

    @property
    def afl(self) -> np.ndarray:
        """bool [n]: the interval ends in atrial flutter (AF-like, left out of training)."""
        return self.rhythm == "AFL"

    @property
    def known(self) -> np.ndarray:
        """bool [n]: the rhythm is known (annotated, or a :data:`SINUS_DATABASES` record)."""
        return self.rhythm != ""

    def __len__(self) -> int:
        return int(self.rr_s.size)


def discover_rr_records(folders: Sequence[str | Path]) -> list[tuple[Path, str, str]]:
    """``(folder, record, annotation extension)`` of every record in ``folders``.

    A folder's annotation extension is ``atr`` when it has ``.atr`` files, else ``ecg``
    (nsr2db, chf2db). Records are those with a signal header or an annotation file.
    """
    out: list[tuple[Path, str, str]] = []
    for f in folders:
        folder = Path(f)
        if not folder.is_dir():
            raise FileNotFoundError(f"record folder does not exist: {folder}")
        ext = "atr" if list_annotated(folder, "atr") else "ecg"
        names = sorted(set(list_annotated(folder, ext)) | {n for n in list_records(folder) if has_signal(folder, n)})
        out += [(folder, n, ext) for n in names if (folder / f"{n}.{ext}").is_file()]
    return out


def load_rr_series(folder: str | Path, name: str, annotation: str = "atr", fs: float | None = None) -> RRSeries:
    """The reported RR series of one record (module docstring).

    Parameters
    ----------
    folder, name, annotation
        Where ``{name}.{annotation}`` is.
    fs
        The annotations' rate, used only for records that give none (ltafdb: 128).
    """
    folder = Path(folder)
    try:
        ann = load_annotations(folder, name, annotation)
    except ValueError:
        if fs is None:
            raise
        ann = load_annotations(folder, name, annotation, fs)  # a record that gives no rate
    t = ann.beat_times_s
    cls = np.asarray(ann.aami_classes)
    end_s = t[1:]
    rr = np.diff(t)
    noisy = ann.noisy_intervals()
    rhythm = np.full(rr.size, "", dtype="<U8")
    episodes = rhythm_episodes(ann.rhythm_annotations, ann.sample_rate_hz, ann.duration_s)
    if episodes:
        for e in episodes:
            m = (end_s >= e.start_s) & (end_s < e.end_s)
            rhythm[m] = e.kind[:8]
    elif folder.name in SINUS_DATABASES:
        rhythm[:] = "N"
    keep = ~noisy
    # a gap precedes an interval when the one(s) before it were left out
    dropped_before = np.concatenate([[False], noisy[:-1]]) if noisy.size else noisy
    truth = truth_episodes(t, cls, ann.rhythm_annotations, ann.vf_annotations, ann.sample_rate_hz,
                           ann.duration_s)
    return RRSeries(name=f"{folder.name}/{name}", end_s=end_s[keep], rr_s=rr[keep], rhythm=rhythm[keep],
                    aami=cls[1:][keep], gap_before=dropped_before[keep], duration_s=float(ann.duration_s),
                    truth=truth)


def load_rr_folders(folders: Sequence[str | Path], fs: float | None = None,
                    progress: bool = True) -> Iterator[RRSeries]:
    """:func:`load_rr_series` of every record of ``folders`` (:func:`discover_rr_records`)."""
    from tqdm.auto import tqdm

    refs = discover_rr_records(folders)
    for folder, name, ext in tqdm(refs, desc="records", unit="record", disable=not progress, file=sys.stderr):
        yield load_rr_series(folder, name, ext, fs)
