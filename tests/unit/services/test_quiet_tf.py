"""services.quiet_tf: TensorFlow's CPU-only start-up notices stay off stderr, nothing else does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.quiet_tf import NOISE, drop_noise, quiet_tensorflow

REPO_ROOT = Path(__file__).resolve().parents[3]

# What TensorFlow 2.21 printed on this project's CPU-only machines (issue 10).
SEEN = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796155204.550073   19969 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n",
    "I0000 00:00:1796155204.550325   19969 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.\n",
    "I0000 00:00:1796155204.649361   19969 cpu_feature_guard.cc:227] This TensorFlow binary is optimized "
    "to use available CPU instructions in performance-critical operations.\n",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.\n",
    "E0000 00:00:1796155263.573758   20169 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
    "error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
]


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(p.search(line) for p in NOISE)]


def test_drop_noise_drops_the_start_up_notices_and_keeps_everything_else() -> None:
    real = ["Traceback (most recent call last):\n", "E0000 00:00:1.0 1 op_kernel.cc:1] OOM when allocating\n",
            "W0000 something about cuInit that is not error 303\n"]
    assert drop_noise(SEEN) == []
    assert drop_noise([SEEN[0], real[0], SEEN[1], real[1], real[2]]) == real


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT, env={**base, "PYTHONPATH": str(REPO_ROOT), **env})


_IMPORT_TF = ("import os, sys\n"
              "from services.quiet_tf import quiet_tensorflow\n"
              "print('installed', quiet_tensorflow(os.environ), os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
              "import tensorflow as tf\n"
              "print(int(tf.constant(1) + 1))\n"
              "print('after the import', file=sys.stderr)\n")


def test_importing_tensorflow_after_quiet_tensorflow_prints_none_of_the_notices() -> None:
    pytest.importorskip("tensorflow")
    quiet = _run(_IMPORT_TF)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["installed", "True", "2", "2"]
    assert _noise(quiet.stderr) == [], quiet.stderr
    assert "after the import" in quiet.stderr
    # TF_CPP_MIN_LOG_LEVEL=0 turns it off: the same import shows the notices again, so the
    # check above is not passing because this TensorFlow prints nothing anyway
    loud = _run(_IMPORT_TF, TF_CPP_MIN_LOG_LEVEL="0")
    assert loud.returncode == 0, loud.stderr
    assert loud.stdout.split()[:2] == ["installed", "False"]
    assert _noise(loud.stderr), loud.stderr


def test_what_is_written_to_stderr_during_the_import_that_is_not_noise_still_shows() -> None:
    code = ("import os, sys\n"
            "from services.quiet_tf import _stderr_filtered\n"
            "with _stderr_filtered():\n"
            f"    os.write(2, {''.join(SEEN[:2]).encode()!r})\n"
            "    os.write(2, b'a real error line\\n')\n"
            "    print('from python', file=sys.stderr)\n"
            f"    os.write(2, {SEEN[-1].encode()!r})\n"
            "print('after', file=sys.stderr)\n")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["a real error line", "from python", "after"]


def test_quiet_tensorflow_leaves_an_explicit_zero_alone_and_sets_two_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    # keep this test process as it was: no import hook left behind, absl's level restored
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setattr(logging.getLogger("absl"), "level", logging.getLogger("absl").level)
    env: dict[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert quiet_tensorflow(env) is False and env == {"TF_CPP_MIN_LOG_LEVEL": "0"}
    env = {}
    quiet_tensorflow(env)  # True unless tensorflow is already imported in this test process
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "2"}
