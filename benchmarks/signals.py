#!/usr/bin/env python3
"""The burst property of tests/test_signal_bursts.py, N times (SPEC R10): random bursts of
SIGINT/SIGTERM/SIGHUP on real runs; counts hangs and failures, times first signal -> exit.

A burst that lands while Python itself is still starting, before mlrunner's first line runs,
kills the interpreter by the signal's default action, or (Ctrl-C while it imports `site`) makes
it fail its start-up with exit status 1: that is outside mlrunner's reach (nothing had started)
and is counted apart, as `before mlrunner`.

    python3 benchmarks/signals.py [N] [--seed S] [--grace SECONDS]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import busy_cores  # noqa: E402
from bursts import Burst, run_burst  # noqa: E402


def figures(count: int, hangs: int, failures: int, early: int, seconds: List[float], grace: float) -> str:
    ordered = sorted(seconds) or [0.0]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"bursts: {count}, hangs: {hangs}, failures: {failures}, before mlrunner: {early}; "
            f"first signal -> exit (grace {grace:g}s): median {statistics.median(ordered):.2f}s, "
            f"p99 {p99:.2f}s, max {ordered[-1]:.2f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=500, help="bursts (default 500)")
    parser.add_argument("--seed", type=int, default=None, help="replay a draw (default: a random seed, printed)")
    parser.add_argument("--grace", type=float, default=1.0)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10 ** 9)
    rng = random.Random(seed)
    print(f"seed {seed}; busy cores before: {busy_cores(1.0) or 0:.1f}", flush=True)
    hangs = failures = early = 0
    seconds: List[float] = []
    scratch = Path(tempfile.mkdtemp(prefix="mlrunner-bursts-"))
    try:
        for number in range(1, args.n + 1):
            directory = scratch / str(number)
            burst = Burst.draw(rng)
            result = run_burst(directory, burst, args.grace)
            if result.code is None:
                hangs += 1
            elif result.problems:
                failures += 1
            if result.early:
                early += 1
            else:
                seconds.append(result.seconds)
            if result.problems:
                print(f"burst {number} ({burst}):\n  " + "\n  ".join(result.problems), flush=True)
            shutil.rmtree(directory, ignore_errors=True)
            if number % 100 == 0:
                print(f"[{time.strftime('%H:%M:%S')}] " + figures(number, hangs, failures, early, seconds, args.grace),
                      flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(figures(args.n, hangs, failures, early, seconds, args.grace), flush=True)
    return 1 if hangs or failures else 0


if __name__ == "__main__":
    sys.exit(main())
