#!/usr/bin/env python3
"""What `--follow` costs on a big output tree, and how long `--detach` keeps the terminal.

A timing, not a test. `--follow` reads the records under the output root: every 2 s all of them,
every 0.2 s those with a running command. This builds N finished experiments plus one running
command, then times the first full scan, a later full scan and a poll of the running records
(CPU seconds of this process), and the wall time of `mlrunner --detach` for a one-command sweep.

    python3 benchmarks/follow.py [--experiments 10000]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import busy_cores  # noqa: E402
from mlrunner.view.follow import FULL_SCAN, POLL, Follower  # noqa: E402

FINISHED = """\
train: finished
_runs:
  train:
  - worker: '0'
    host: h
    start: 1764305401.123
    end: 1764305413.456
    seconds: 12.333
    status: finished
    log: output/X/log.train.20261128.045001
"""

RUNNING = """\
train: running
_runs:
  train:
  - worker: '0'
    host: h
    pid: 1
    start: {start}
    status: running
    log: output/Live/log.train.20261128.045001
"""


def cpu(call) -> float:
    start = time.process_time()
    call()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10000)
    args = parser.parse_args()
    print(f"busy cores (others) before: {busy_cores()}")
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "output"
        for index in range(args.experiments):
            directory = output / f"Old_{index}"
            directory.mkdir(parents=True)
            (directory / "stat").write_text(FINISHED)
            os.utime(directory / "stat", (time.time() - 3600,) * 2)  # they ended an hour ago
        live = output / "Live"
        live.mkdir()
        (live / "log.train.20261128.045001").write_text("a line\n")
        (live / "stat").write_text(RUNNING.format(start=time.time()))
        follower = Follower(str(output), None, io.BytesIO())
        first = cpu(follower.scan)
        full = cpu(follower.scan)
        poll = cpu(lambda: follower.scan(everything=False))
        steady = full / FULL_SCAN + poll / POLL
        print(f"{args.experiments} experiments: first full scan {first * 1000:.0f} ms CPU, later full scans "
              f"{full * 1000:.0f} ms, a poll of the running ones {poll * 1000:.2f} ms: "
              f"about {steady * 100:.1f} % of a core while following")

        (Path(scratch) / "params.yaml").write_text("template:\n  train: 'true'\nresource: [0]\n")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mlrunner", "--detach", "-o", "detached"], cwd=scratch, env=env,
                       stdout=subprocess.DEVNULL, check=True)
        print(f"mlrunner --detach returns after {(time.perf_counter() - start) * 1000:.0f} ms (wall)")
        deadline = time.monotonic() + 30
        while list((Path(scratch) / "detached").glob(".mlrunner-run.*")) and time.monotonic() < deadline:
            time.sleep(0.05)  # let the run end before its directory goes


if __name__ == "__main__":
    main()
