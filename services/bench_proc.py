"""What the benchmarks read about the processes and the broker they run: CPU time, peak
memory, bytes on each topic, and a scratch folder that is removed afterwards.

Linux only (``/proc``), like the benches themselves. Pure reads: nothing here changes a
process or the broker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["cpu_seconds", "peak_rss_mib", "scratch_dir", "topic_bytes"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds that process ``pid`` (all its threads) has used so
    far, from ``/proc/<pid>/stat``; None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = raw[raw.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLK_TCK


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident memory of ``pid`` (``VmHWM``) in MiB; None when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return None


def topic_bytes(log_dir: Path) -> dict[str, int]:
    """Bytes of log segments per topic under a broker's ``log.dirs`` folder.

    Kafka keeps each partition in a folder ``<topic>-<partition>`` holding ``*.log``
    segments (record batches as stored, after any producer compression). Internal
    folders (KRaft metadata, ``__consumer_offsets``) are reported under their names
    like any topic; a missing folder gives ``{}``."""
    out: dict[str, int] = {}
    try:
        entries = list(Path(log_dir).iterdir())
    except OSError:
        return out
    for d in entries:
        topic, sep, part = d.name.rpartition("-")
        if not (sep and part.isdigit() and d.is_dir()):
            continue
        size = 0
        for seg in d.glob("*.log"):
            try:
                size += seg.stat().st_size
            except OSError:  # a segment deleted between listing and stat
                pass
        out[topic] = out.get(topic, 0) + size
    return out


@contextmanager
def scratch_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary folder for one bench run, removed when the run ends, however it ends
    (``keep``: left in place and its path is the caller's to report)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
