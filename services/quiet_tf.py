"""CLI edge: keep TensorFlow's start-up notices off a CPU-only command's terminal.

Importing TensorFlow 2.21 on a machine without a GPU prints lines that read like
failures (``failed call to cuInit: ... UNKNOWN ERROR (303)``, ``Could not find cuda
drivers``, the oneDNN and ``cpu_feature_guard`` notices, absl's ``All log messages
before absl::InitializeLog()``). Two mechanisms, because one does not reach them all:

* ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's own C++ log filter: no INFO or WARNING) and
  the Python ``absl`` logger at ERROR (Keras' ``WARNING:absl:...`` notices), set before
  TensorFlow is imported;
* the notices above are written through absl directly while TensorFlow loads, which
  that variable does not filter (checked on 2.21.0), so the first ``import tensorflow``
  and its device discovery (where ``cuInit`` is called) run with file descriptor 2
  pointed at a temporary file; afterwards every line of it that is not one of
  :data:`NOISE` is written to the real stderr, in order. Nothing else is dropped.

``TF_ENABLE_ONEDNN_OPTS`` is left alone (turning oneDNN off changes the numerics).
``TF_CPP_MIN_LOG_LEVEL=0`` in the environment turns all of this off (everything shows).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from types import ModuleType

__all__ = ["NOISE", "quiet_tensorflow", "drop_noise"]

#: Start-up lines of a CPU-only TensorFlow that say nothing is wrong (regexes, searched per line).
NOISE: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"port\.cc:\d+\] oneDNN custom operations are on",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags",
    r"failed call to cuInit: .*\(303\)",
    r"cuda_diagnostics\.cc:\d+\] ",  # the host and driver report that follows a failed cuInit
    r"Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory",
))


def drop_noise(lines: Sequence[str]) -> list[str]:
    """``lines`` without those matching :data:`NOISE`."""
    return [line for line in lines if not any(p.search(line) for p in NOISE)]


@contextmanager
def _stderr_filtered() -> Iterator[None]:
    """Point fd 2 at a temporary file; afterwards copy its lines, less the noise, to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = drop_noise(tmp.read().decode(errors="replace").splitlines(keepends=True))
            if kept:
                os.write(2, "".join(kept).encode())


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _stderr_filtered():
            self._inner.exec_module(module)
            # device discovery is where cuInit fails on a CPU-only machine: do it here
            config = getattr(module, "config", None)
            if config is not None:
                config.list_physical_devices()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the top-level ``tensorflow`` package, once."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the finders after this one
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow(environ: MutableMapping[str, str]) -> bool:
    """Quiet TensorFlow's start-up for this process and the processes it starts with ``environ``.

    Call before anything imports TensorFlow. ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 (a
    child process started with ``environ`` quiets itself the same way); set to ``0`` it
    turns all of this off. Returns whether the filter is installed.
    """
    text = environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        level = int(text)
    except ValueError:  # TensorFlow reads a bad value as 0
        level = 0
    if level <= 0 or "tensorflow" in sys.modules:
        return False
    logging.getLogger("absl").setLevel(logging.ERROR if level >= 2 else logging.WARNING)
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
    return True
