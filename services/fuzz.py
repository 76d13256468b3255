"""CLI: ``cardiowatch fuzz``: run the property-based fuzz suite (``tests/fuzz``) for long.

In CI the suite runs a few thousand cases in all (``pytest tests/fuzz``); this command
runs every target with ``--cases`` cases (it sets ``CARDIOWATCH_FUZZ_CASES`` for the test
run) and prints hypothesis's statistics per target. Needs the test extras (pytest,
hypothesis) and a source checkout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from services.settings import REPO_ROOT
from models.cli_help import HelpFormatter

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cardiowatch fuzz", description=(__doc__ or "").splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--cases", type=int, default=100_000, help="cases per fuzz target (default 100000)")
    p.add_argument("-k", dest="select", default=None, help="only targets matching this pytest -k expression")
    args = p.parse_args(argv)
    if args.cases < 1:
        p.error(f"--cases must be >= 1, got {args.cases}")
    suite = REPO_ROOT / "tests" / "fuzz"
    if not suite.is_dir():
        print(f"cardiowatch fuzz: the fuzz suite {str(suite)!r} is missing (run from a source checkout)",
              file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
           "--hypothesis-show-statistics", "--timeout=0"]
    if args.select:
        cmd += ["-k", args.select]
    env = dict(os.environ, CARDIOWATCH_FUZZ_CASES=str(args.cases))
    return subprocess.call(cmd, env=env, cwd=REPO_ROOT)
