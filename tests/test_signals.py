"""Ctrl-C, SIGTERM, --timeout and SIGKILL of the runner, on real process trees (SPEC R4, R7, R8)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import yaml

from runlib import alive, load, run, start, statuses, wait_for_file, write

# Each command records its shell's pid and a grandchild's pid, then waits on a second child.
TREE = """
    template:
      tree: echo $$ >> pids; sleep 100 & echo $! >> pids; sleep 100
      after: echo never
    resource: [0, 1]
    ---
    i: [1, 2, 3]
    """


def _pids(directory: Path, count: int) -> list:
    return [int(p) for p in wait_for_file(directory / "pids", count)]


def _wait_dead(pids: list, timeout: float = 5) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize("number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_r8_signal_ends_every_process_tree(tmp_path: Path, number: int, code: int):
    write(tmp_path, TREE)
    runner = start([], tmp_path)
    pids = _pids(tmp_path, 4)  # two workers, each a shell and a background grandchild
    runner.send_signal(number)
    out, _ = runner.communicate(timeout=30)
    assert runner.returncode == code
    assert _wait_dead(pids) == []
    assert "interrupted: 2" in out
    stats = [statuses(tmp_path / "output" / f"I_{i}") for i in (1, 2)]
    assert stats == [{"tree": "interrupted"}, {"tree": "interrupted"}]
    assert not (tmp_path / "output" / "I_3").exists()  # no task starts after the signal


def test_r8_sigkill_after_grace_for_a_tree_that_ignores_sigterm(tmp_path: Path):
    write(tmp_path, """
        template:
          stubborn: trap '' TERM; echo $$ >> pids; sleep 100 & echo $! >> pids; wait
        resource: [0]
        """)
    runner = start(["--grace", "1s"], tmp_path)
    pids = _pids(tmp_path, 2)
    began = time.monotonic()
    runner.send_signal(signal.SIGINT)
    runner.communicate(timeout=30)
    assert runner.returncode == 130
    assert 0.9 < time.monotonic() - began < 10  # waited for the grace, then killed
    assert _wait_dead(pids) == []
    assert statuses(tmp_path / "output" / "default") == {"stubborn": "interrupted"}


def test_r9_timeout_ends_the_tree_and_fails_the_command(tmp_path: Path):
    write(tmp_path, """
        template:
          slow: echo $$ >> pids; sleep 100 & echo $! >> pids; sleep 100
          next: echo skipped
        resource: [0]
        """)
    began = time.monotonic()
    code, out, _ = run(["--timeout", "1s", "--grace", "2s"], tmp_path)
    assert code == 1 and time.monotonic() - began < 20
    assert "FAIL    gpu: 0, slow: 1/ 1, output/default (timed out after 1s)" in out
    assert "    output/default (slow: timed out after 1s)" in out
    assert _wait_dead([int(p) for p in (tmp_path / "pids").read_text().split()]) == []
    assert statuses(tmp_path / "output" / "default") == {"slow": "failed", "next": "skipped"}
    assert load(tmp_path / "output" / "default" / "stat")["_runs"]["slow"][-1]["reason"] == "timed out after 1s"


def test_r7_sigkill_at_random_moments_loses_nothing(tmp_path: Path):
    """Kill the runner many times; every file must parse and no finished command may run again."""
    write(tmp_path, """
        template:
          a: echo "$ITERATION {_name} a" >> ledger; sleep 0.02
          b: echo "$ITERATION {_name} b" >> ledger; sleep 0.03
        resource: [0, 1, 2]
        ---
        x: [1, 2, 3, 4, 5, 6, 7, 8]
        y: [1, 2, 3]
        """)
    rng = random.Random(7)
    finished_before = {}  # iteration -> set of (name, command) finished before it started
    done = set()
    for iteration in range(12):
        finished_before[iteration] = set(done)
        runner = start([], tmp_path, {"ITERATION": str(iteration)})
        time.sleep(rng.uniform(0.15, 0.6))
        runner.kill()
        runner.wait()
        for stat_path in (tmp_path / "output").glob("*/stat"):
            stat = yaml.safe_load(stat_path.read_text())  # never torn
            param = yaml.safe_load((stat_path.parent / "param").read_text())
            assert isinstance(stat, dict) and isinstance(param, dict)
            done |= {(stat_path.parent.name, c) for c, s in stat.items() if s == "finished"}
    finished_before[12] = set(done)
    code, out, _ = run([], tmp_path, {"ITERATION": "12"}, timeout=120)
    assert code == 0, out
    for x in range(1, 9):
        for y in range(1, 4):
            assert statuses(tmp_path / "output" / f"X_{x}-Y_{y}") == {"a": "finished", "b": "finished"}
    for line in (tmp_path / "ledger").read_text().splitlines():
        iteration, name, command = line.split()
        assert (name, command) not in finished_before[int(iteration)], f"{name} {command} ran again"
