"""How a run stops, and what it says (issue 14's console paper cuts, SPEC R3, R4, R8).

Ctrl-C during the grace period says what is happening and a second Ctrl-C kills at once; the
summary's counts agree with the status line's; a failure names its log and shows its last lines;
`--fail-fast` starts nothing after the first failure.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from runlib import alive, run, start, statuses, wait_for_file, write

STUBBORN = """
    template:
      stubborn: trap '' TERM; echo $$ >> pids; sleep 100 & echo $! >> pids; wait
    resource: [0, 1]
    ---
    i: [1, 2]
    """


def test_r8_ctrl_c_says_what_happens_and_a_second_one_kills_at_once(tmp_path: Path):
    write(tmp_path, STUBBORN)
    runner = start(["--grace", "60s"], tmp_path)
    pids = [int(p) for p in wait_for_file(tmp_path / "pids", 4)]
    runner.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert runner.poll() is None  # the trees ignore SIGTERM: the grace of 60 s runs
    began = time.monotonic()
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=30)
    assert time.monotonic() - began < 15  # not the 60 s grace
    assert runner.returncode == 130
    assert "SIGINT: ending 2 running command(s): SIGTERM, then SIGKILL after 60s; Ctrl-C again to kill them now" in out
    assert "Ctrl-C again: killing every running command now (SIGKILL)" in out
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []
    assert "interrupted: 2" in out and "failed: 0" in out
    assert [statuses(tmp_path / "output" / f"I_{i}") for i in (1, 2)] == [{"stubborn": "interrupted"}] * 2


def test_r3_a_failure_names_its_log_and_shows_its_last_lines(tmp_path: Path):
    line = "for i in 1 2 3 4 5 6 7; do echo \"line $i\"; done; echo 'Traceback: boom' >&2; exit 3"
    write(tmp_path, f"template:\n  train: {json.dumps(line)}\n  test: echo never\nresource: [0]\n")
    code, out, _ = run([], tmp_path)
    assert code == 1
    summary = out[out.index("Failed:"):]
    log = next((tmp_path / "output" / "default").glob("log.train.*"))
    assert f"    output/default (train: exit status 3)\n        log: output/default/{log.name}\n" in summary
    assert "        | line 4\n        | line 5\n        | line 6\n        | line 7\n        | Traceback: boom\n" in summary
    assert "line 3" not in summary


def test_r4_fail_fast_starts_nothing_after_the_first_failure(tmp_path: Path):
    write(tmp_path, """
        template:
          t: if [ {i} = 2 ]; then exit 1; fi; sleep 1; echo {i} >> ran
        resource: [0, 1]
        ---
        i: [1, 2, 3, 4, 5, 6]
        """)
    code, out, _ = run(["--fail-fast"], tmp_path)
    assert code == 1
    assert "--fail-fast: no new command starts; running ones finish" in out
    assert (tmp_path / "ran").read_text().split() == ["1"]  # task 1 was running and finished
    assert "Tasks not run (--fail-fast stopped the run): 4" in out
    assert not (tmp_path / "output" / "I_3").exists()


def test_r2_without_fail_fast_every_task_runs(tmp_path: Path):
    write(tmp_path, "template:\n  t: if [ {i} = 2 ]; then exit 1; fi; echo {i} >> ran\nresource: [0]\n---\ni: [1, 2, 3]\n")
    code, out, _ = run([], tmp_path)
    assert code == 1 and sorted((tmp_path / "ran").read_text().split()) == ["1", "3"]
