"""Evaluation plots: score traces with reference annotations, ROC curves, heart-rate traces,
alert timelines against the reference episodes, figures with intervals by subgroup.

matplotlib with the non-interactive Agg backend (no display needed). Every function
writes one PNG, creating parent folders, and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402

__all__ = ["plot_score_trace", "plot_roc", "plot_hr_trace", "plot_alert_timeline", "plot_interval_panels",
           "CLASS_COLOURS",
           "EPISODE_COLOURS", "PRIORITY_COLOURS"]

CLASS_COLOURS: dict[str, str] = {"N": "tab:green", "S": "tab:orange", "V": "tab:red", "F": "tab:purple", "Q": "tab:gray"}
EPISODE_COLOURS: dict[str, str] = {"vt": "tab:red", "vf": "tab:purple", "af": "tab:orange", "afl": "gold"}
PRIORITY_COLOURS: dict[str, str] = {"high": "red", "medium": "darkorange", "low": "steelblue"}


def _same_length(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{b_name} must have the shape of {a_name} {a.shape}, got {b.shape}")


def _save(fig: plt.Figure, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def plot_score_trace(
    path: str | Path,
    time_s: np.ndarray | Sequence[float],
    scores: np.ndarray | Sequence[float],
    threshold: float | None,
    ref_times_s: np.ndarray | Sequence[float],
    ref_classes: np.ndarray | Sequence[str],
    title: str,
) -> Path:
    """Plot detector scores over a record with reference beats marked by AAMI class.

    Parameters
    ----------
    path : path-like
        PNG to write.
    time_s, scores : array-like
        Score times (seconds from record start) and scores, same length.
    threshold : float or None
        Operating threshold drawn as a dashed line.
    ref_times_s, ref_classes : array-like
        Reference beat times (s) and AAMI classes; non-N classes are drawn as
        coloured ticks along the top of the plot (N beats as a faint rug).
    title : str
        Figure title (e.g. record name).
    """
    t = np.asarray(time_s, dtype=float)
    s = np.asarray(scores, dtype=float)
    _same_length(t, s, "time_s", "scores")
    rt = np.asarray(ref_times_s, dtype=float)
    rc = np.asarray(ref_classes, dtype=str)
    _same_length(rt, rc, "ref_times_s", "ref_classes")
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(t, s, ".", ms=3, color="tab:blue", label="score")
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="k", lw=1, label=f"threshold {threshold:.3g}")
    top = float(np.nanmax(s)) if s.size else 1.0
    if threshold is not None:
        top = max(top, threshold)
    for cls, colour in CLASS_COLOURS.items():
        m = rc == cls
        if not m.any():
            continue
        y = top * (1.04 if cls == "N" else 1.08)
        ax.plot(rt[m], np.full(int(m.sum()), y), "|", color=colour, ms=8 if cls != "N" else 4,
                alpha=0.3 if cls == "N" else 1.0, label=f"ref {cls} ({int(m.sum())})")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("anomaly score")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(path: str | Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> Path:
    """Plot ROC curves, one per entry ``name -> (fpr, tpr, auc)``, with the chance line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
    for name, (fpr, tpr, auc) in curves.items():
        f, r = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        _same_length(f, r, f"{name} fpr", f"{name} tpr")
        ax.plot(f, r, lw=1.5, label=f"{name} (AUROC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_hr_trace(
    path: str | Path,
    time_s: np.ndarray | Sequence[float],
    hr_bpm: np.ndarray | Sequence[float],
    *,
    score_time_s: np.ndarray | Sequence[float] | None = None,
    scores: np.ndarray | Sequence[float] | None = None,
    threshold: float | None = None,
    events: Sequence[tuple[str, float, float]] = (),
    title: str = "",
) -> Path:
    """Plot heart rate over time and, optionally, the heart-rate model's scores below it.

    Parameters
    ----------
    time_s, hr_bpm : array-like
        Beat (or sample) times in seconds and heart rate in beats per minute.
    score_time_s, scores : array-like, optional
        HR-model window end times (s) and scores, drawn in a second panel.
    threshold : float, optional
        Operating threshold for the score panel.
    events : sequence of (kind, start_s, end_s)
        Reference episodes (e.g. afib) shaded on both panels.
    title : str
        Figure title.
    """
    t = np.asarray(time_s, dtype=float)
    hr = np.asarray(hr_bpm, dtype=float)
    _same_length(t, hr, "time_s", "hr_bpm")
    has_scores = scores is not None
    if has_scores:
        if score_time_s is None:
            raise ValueError("score_time_s is required with scores, got None")
        st = np.asarray(score_time_s, dtype=float)
        sc = np.asarray(scores, dtype=float)
        _same_length(st, sc, "score_time_s", "scores")
    fig, axes = plt.subplots(2 if has_scores else 1, 1, figsize=(12, 5 if has_scores else 3), sharex=True,
                             squeeze=False)
    ax_hr = axes[0, 0]
    ax_hr.plot(t, hr, lw=0.8, color="tab:blue")
    ax_hr.set_ylabel("HR (bpm)")
    ax_hr.set_title(title)
    panels = [ax_hr]
    if has_scores:
        ax_s = axes[1, 0]
        ax_s.plot(st, sc, ".-", ms=3, lw=0.6, color="tab:red")
        if threshold is not None:
            ax_s.axhline(threshold, ls="--", color="k", lw=1, label=f"threshold {threshold:.3g}")
            ax_s.legend(loc="upper right", fontsize=8)
        ax_s.set_ylabel("HR-model score")
        panels.append(ax_s)
    labelled: set[str] = set()
    for kind, start_s, end_s in events:
        for i, ax in enumerate(panels):
            # one legend entry per kind, not per episode (a day of AF has dozens)
            first = i == 0 and kind not in labelled
            ax.axvspan(start_s, end_s, color="tab:orange", alpha=0.2, label=kind if first else None)
        labelled.add(kind)
    if events:
        ax_hr.legend(loc="upper right", fontsize=8)
    panels[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return _save(fig, path)


def plot_alert_timeline(
    path: str | Path,
    duration_s: float,
    episodes: Mapping[str, Sequence[tuple[float, float]]],
    alerts: Sequence[tuple[str, str, float, float]],
    title: str = "",
) -> Path:
    """Plot a record's alerts against its reference episodes.

    Parameters
    ----------
    path : path-like
        PNG to write.
    duration_s : float
        Record length (the x axis, in hours when longer than 2 h, else seconds).
    episodes : mapping kind -> [(start_s, end_s), ...]
        Truth episodes (``vt``, ``vf``, ``af``, ``afl``) drawn as bands over all rows.
    alerts : sequence of (condition, priority, raised_s, end_s)
        One bar per alert from when it was raised to when it was cleared (or the record
        end), on one row per condition, coloured by priority.
    title : str
        Figure title.
    """
    if not (np.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, got {duration_s}")
    scale, unit = (3600.0, "h") if duration_s > 7200 else (1.0, "s")
    conditions = sorted({a[0] for a in alerts})
    rows = {c: i for i, c in enumerate(conditions)}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.45 * max(len(conditions), 1)))
    for kind, spans in episodes.items():
        colour = EPISODE_COLOURS.get(kind, "tab:gray")
        for k, (lo, hi) in enumerate(spans):
            ax.axvspan(lo / scale, max(hi, lo + 0.5) / scale, color=colour, alpha=0.3, lw=0,
                       label=f"truth {kind.upper()} ({len(spans)})" if k == 0 else None)
    seen: set[str] = set()
    for cond, prio, lo, hi in alerts:
        if prio not in PRIORITY_COLOURS:
            raise ValueError(f"alert priority must be one of {sorted(PRIORITY_COLOURS)}, got {prio!r}")
        width = max(hi - lo, duration_s / 2000.0)  # a short alert stays visible
        ax.broken_barh([(lo / scale, width / scale)], (rows[cond] - 0.35, 0.7),
                       color=PRIORITY_COLOURS[prio], label=prio if prio not in seen else None)
        seen.add(prio)
    ax.set_yticks(range(len(conditions)), conditions)
    ax.set_ylim(-0.6, max(len(conditions), 1) - 0.4)
    ax.set_xlim(0, duration_s / scale)
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(title)
    if episodes or alerts:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, borderaxespad=0)
    fig.tight_layout()
    return _save(fig, path)


def plot_interval_panels(
    path: str | Path,
    panels: Mapping[str, Sequence[tuple[str, float | None, float | None, float | None]]],
    title: str = "",
    columns: int = 3,
) -> Path:
    """Plot one small panel per figure: a dot and its interval for each group.

    Parameters
    ----------
    path : path-like
        PNG to write.
    panels : mapping figure name -> [(group label, value, low, high), ...]
        The groups in the order drawn (top to bottom). ``None`` values draw no dot (a
        group too small, or without events); ``None`` bounds draw no interval.
    title : str
        Figure title.
    columns : int
        Panels per row.
    """
    if not panels:
        raise ValueError("panels must name at least one figure, got none")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    rows = -(-len(panels) // columns)
    n_groups = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 0.9 + (0.28 * n_groups + 0.6) * rows),
                             squeeze=False)
    for ax, (name, groups) in zip(axes.flat, panels.items()):
        y = np.arange(len(groups))[::-1]
        for yi, (_label, v, lo, hi) in zip(y, groups):
            if v is None:
                continue
            if lo is not None and hi is not None:
                ax.hlines(yi, lo, hi, color="tab:blue", lw=1.5)
            ax.plot([v], [yi], "o", color="tab:blue", ms=4)
        ax.set_yticks(y, [g[0] for g in groups], fontsize=7)
        ax.set_ylim(-0.7, len(groups) - 0.3)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
