"""After the runner itself is killed, its commands that still run are orphans, and shown as such
(SPEC R12, I3): `--status` says `running (orphaned, pid N)`, not `interrupted`; the next run says it
is ending them before it waits the grace, ends their whole groups, and runs the commands again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from runlib import alive, load, run, start, statuses, wait_for_file, write

# A shell that ignores SIGTERM and a grandchild: only the whole group's SIGKILL after the grace ends it.
CONFIG = """
    template:
      train: if [ -e second ]; then echo again; else trap '' TERM; echo $$ >> pids; sleep 100 & echo $! >> pids; wait; fi
    resource: [0, 1]
    ---
    i: [1, 2]
    """


def test_r12_status_shows_orphans_and_the_next_run_ends_them_first(tmp_path: Path):
    write(tmp_path, CONFIG)
    runner = start([], tmp_path)
    pids = [int(p) for p in wait_for_file(tmp_path / "pids", 4)]
    shells = [load(tmp_path / "output" / f"I_{i}" / "stat")["_runs"]["train"][-1]["pgid"] for i in (1, 2)]
    assert set(shells) < set(pids)
    runner.kill()  # SIGKILL: nobody ends the commands
    runner.wait()

    code, out, _ = run(["--status"], tmp_path)
    assert code == 0
    for shell in shells:
        assert f"train: running (orphaned, pid {shell})" in out, out
    assert "interrupted" not in out
    assert "orphaned: 2" in out
    assert all(alive(p) for p in pids)

    (tmp_path / "second").touch()
    began = time.monotonic()
    code, out, err = run(["--grace", "1s"], tmp_path)
    assert code == 0, out + err
    assert time.monotonic() - began < 15
    for shell in shells:
        note = (f"NOTE    ending process group {shell}, left running by a dead mlrunner (pid {runner.pid}): "
                f"SIGTERM, then SIGKILL after 1s")
        assert note in out, out
    assert [p for p in pids if alive(p)] == []
    assert [statuses(tmp_path / "output" / f"I_{i}") for i in (1, 2)] == [{"train": "finished"}] * 2

    code, out, _ = run(["--status"], tmp_path)
    assert "orphaned" not in out and "train: finished" in out


def test_r12_a_dead_runners_command_that_ended_is_interrupted(tmp_path: Path):
    write(tmp_path, """
        template:
          train: echo $$ >> pids; sleep 100
        resource: [0]
        """)
    runner = start([], tmp_path)
    shell = int(wait_for_file(tmp_path / "pids", 1)[0])
    runner.kill()
    runner.wait()
    os.killpg(shell, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(shell) and time.monotonic() < deadline:
        time.sleep(0.05)
    code, out, _ = run(["--status"], tmp_path)
    assert "train: interrupted" in out and "orphaned" not in out
