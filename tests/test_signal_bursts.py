"""Any burst of SIGINT, SIGTERM and SIGHUP, at any moment, ends the run in time (SPEC R10, R8, I3).

A property test on real runs: each iteration starts a run of real bash commands (some ignore
SIGTERM, some spawn children), waits a random moment from before the first command starts to
after the last one did, and sends 2-5 signals 0-300 ms apart. The run must end within the grace
plus one second, leave no process behind and record every command it started `interrupted`.

MLRUNNER_BURST_SEED=<seed> replays a failing draw; benchmarks/signals.py runs the same property
thousands of times.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bursts import Burst, run_burst

ITERATIONS = 12
GRACE = 1.0


def test_r10_every_burst_of_signals_ends_the_run_within_the_grace(tmp_path: Path):
    seed = int(os.environ.get("MLRUNNER_BURST_SEED") or random.SystemRandom().randrange(10 ** 9))
    rng = random.Random(seed)
    for iteration in range(ITERATIONS):
        burst = Burst.draw(rng)
        result = run_burst(tmp_path / str(iteration), burst, GRACE)
        if result.problems:
            pytest.fail(f"burst {iteration} ({burst}) of seed {seed} (replay: MLRUNNER_BURST_SEED={seed}):\n"
                        + "\n".join(result.problems), pytrace=False)

