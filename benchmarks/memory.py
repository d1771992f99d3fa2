#!/usr/bin/env python3
"""Does the scheduler's memory stay flat during a long run? (issue: local execution, memory)

Runs `mlrunner` on N tasks of `true` with 8 workers in a temp dir and samples the runner's RSS
from /proc every 0.2 s. Flat means: after the task list is built, RSS does not grow with the
number of tasks done. It prints RSS when the run starts dispatching, at a quarter, half, three
quarters and the end, and the growth per 10^4 finished tasks.

    python3 benchmarks/memory.py [--tasks 20000] [--workers 8]

A measurement, not a test. Linux only (/proc). Standard library only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        Path(temp, "params.yaml").write_text(
            "template:\n  nothing: 'true'\n"
            f"resource: [{', '.join(str(i) for i in range(args.workers))}]\n"
            f"---\ni: [{', '.join(str(i) for i in range(args.tasks))}]\n")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("PYTHONUNBUFFERED", None)
        runner = subprocess.Popen([sys.executable, "-m", "mlrunner"], cwd=temp, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        samples = []  # (commands done so far, RSS MiB)
        done = 0
        started = time.monotonic()
        for line in runner.stdout:
            if line.startswith("DONE"):
                done += 1
            if not samples or time.monotonic() - samples[-1][2] >= 0.2:
                try:
                    samples.append((done, rss_mib(runner.pid), time.monotonic()))
                except OSError:
                    break
        runner.wait()
        seconds = time.monotonic() - started
    first = next((s for s in samples if s[0] > 0), samples[0])
    print(f"{args.tasks} tasks of `true` on {args.workers} workers: {seconds:.1f} s, exit {runner.returncode}")
    print("done        RSS MiB")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        target = first[0] + fraction * (args.tasks - first[0])
        sample = min(samples, key=lambda s: abs(s[0] - target))
        print(f"{sample[0]:>6}  {sample[1]:9.1f}")
    last = samples[-1]
    growth = (last[1] - first[1]) / max(last[0] - first[0], 1) * 10_000
    print(f"growth after dispatch began: {growth:+.2f} MiB per 10^4 tasks (peak {max(s[1] for s in samples):.1f} MiB)")


if __name__ == "__main__":
    main()
