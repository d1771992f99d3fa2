#!/usr/bin/env python3
"""How long `python3 dist/mlrunner.pyz --help` takes to start, next to a bare interpreter's start.

A timing, not a test: machines differ too much for a fixed threshold in CI. Target: under 150 ms.

    python3 build_zipapp.py && python3 benchmarks/startup.py [--runs 20] [--python python3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 150.0


def median_ms(command: List[str], runs: int) -> float:
    """The median wall time of `runs` starts, after one untimed start that warms the file cache."""
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter to time (default: this one; a pyenv shim would add its own start)")
    parser.add_argument("--pyz", type=Path, default=ROOT / "dist" / "mlrunner.pyz")
    args = parser.parse_args()
    if not args.pyz.exists():
        sys.exit(f"{args.pyz} is missing: run `python3 build_zipapp.py` first")
    floor = median_ms([args.python, "-c", "pass"], args.runs)
    pyz = median_ms([args.python, str(args.pyz), "--help"], args.runs)
    print(f"python -c pass        median of {args.runs}: {floor:6.1f} ms (floor)")
    print(f"mlrunner.pyz --help   median of {args.runs}: {pyz:6.1f} ms (target < {TARGET_MS:.0f} ms)")
    return 0 if pyz < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
