"""The live status line (SPEC R3): on a real terminal (a pty, and tmux at 40/80/200 columns)
it never wraps, counts what the event lines and the summary count, and leaves nothing behind."""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import List

import pytest

from mlrunner.run.console import Console
from runlib import environment, write


def _pty(columns: int):
    """A real terminal pair whose size is `columns` x 24; the console writes to the slave side."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return master, os.fdopen(slave, "w")


def _status(console: Console) -> str:
    with console._lock:
        return console._status()


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_r3_status_line_fits_the_terminal(columns):
    master, stream = _pty(columns)
    try:
        console = Console(total=1000, workers=8, stream=stream)
        for _ in range(7):
            console.started_command()
        assert len(_status(console)) <= columns - 1
        assert _status(console).startswith("[commands done 0/1000, running 7"[:columns - 1])
    finally:
        stream.close()
        os.close(master)


def test_r3_status_line_follows_a_resized_terminal():
    master, stream = _pty(200)
    try:
        console = Console(total=10, workers=2, stream=stream)
        wide = _status(console)
        fcntl.ioctl(stream.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 24, 30, 0, 0))  # as SIGWINCH does
        assert wide.endswith("]") and len(wide) > 29
        assert _status(console) == wide[:29]
    finally:
        stream.close()
        os.close(master)


def test_r3_counts_interrupted_apart_and_left_excludes_running():
    master, stream = _pty(200)
    try:
        console = Console(total=10, workers=2, stream=stream)
        for _ in range(6):
            console.started_command()
        console.ended_command("finished", 2.0)
        console.ended_command("failed", 1.0)
        console.ended_command("timeout", 1.0)
        console.ended_command("interrupted", 1.0)
        # 10 commands: 1 done, 2 failed, 1 interrupted, 2 still running, so 4 not started.
        assert (console.done, console.failed, console.interrupted, console.running, console.left()) == (1, 2, 1, 2, 4)
        text = _status(console)
        assert text.startswith("[commands done 1/10, running 2, failed 2, interrupted 1, left 4, elapsed 0:00:0")
        assert text.endswith(", ETA 0:00:06]")  # 2 s a command, 6 commands to go, 2 workers
    finally:
        stream.close()
        os.close(master)


def test_r3_no_status_line_when_not_a_terminal(tmp_path):
    with open(tmp_path / "out", "w") as stream:
        with Console(total=2, workers=1, stream=stream) as console:
            console.print("START   x")
            console.print("Finished: 1")
    assert (tmp_path / "out").read_text() == "START   x\nFinished: 1\n"


# Under tmux: a real terminal of a given width, read back as the user would see it --------------

CONFIG = """
template:
  t: touch s.{i}; while [ ! -e release ]; do sleep 0.05; done
resource: [0, 1]
---
i: [1, 2, 3]
"""
KNOWN = ("Orphan params:", "Tasks:", "START ", "DONE ", "Finished:", "exit ", "[commands ")


@pytest.fixture
def tmux(tmp_path):
    if not shutil.which("tmux"):
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("CI=true but tmux is missing", pytrace=False)
        pytest.skip("tmux is missing")
    socket = str(tmp_path / "tmux.sock")

    def call(*args: str) -> str:
        return subprocess.run(["tmux", "-S", socket, "-f", "/dev/null", *args], check=True,
                              stdout=subprocess.PIPE, text=True, timeout=30).stdout

    yield call
    (tmp_path / "release").touch()  # a test that failed half-way leaves no command waiting for it
    subprocess.run(["tmux", "-S", socket, "kill-server"], stderr=subprocess.DEVNULL)


def _rows(tmux, *options: str) -> List[str]:
    """The pane's rows as shown, wrapped lines not joined (unless -J): a wrapped status line shows as two rows."""
    return [row.rstrip() for row in tmux("capture-pane", "-p", *options, "-t", "run").splitlines() if row.strip()]


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_r3_status_line_never_wraps_under_tmux_and_leaves_nothing(tmp_path: Path, tmux, columns):
    write(tmp_path, CONFIG)
    env = environment()
    command = (f"cd {tmp_path} && PYTHONPATH={env['PYTHONPATH']} {sys.executable} -m mlrunner -o o; "
               "echo exit $?; exec sleep 600")
    tmux("new-session", "-d", "-s", "run", "-x", str(columns), "-y", "30", command)
    deadline = time.monotonic() + 60
    while not ((tmp_path / "s.1").exists() and (tmp_path / "s.2").exists()):
        assert time.monotonic() < deadline, _rows(tmux)
        time.sleep(0.05)
    # Watch the pane across several refreshes (every 0.5 s): one status row, within the width.
    seen, counted = 0, False
    watch_until = time.monotonic() + 2.0
    while time.monotonic() < watch_until:
        rows = _rows(tmux)
        status = [row for row in rows if row.startswith("[commands ")]
        if status:
            seen += 1
            assert len(status) == 1 and len(status[0]) < columns, rows
            assert all(row.startswith(KNOWN) for row in rows), rows  # a wrapped tail would start otherwise
            counted |= "running 2, failed 0, left 1," in status[0]
        time.sleep(0.1)
    assert seen >= 5
    assert counted or columns < 80  # at 40 columns the counts are cut off
    (tmp_path / "release").touch()
    while not any(row.startswith("exit ") for row in _rows(tmux)):
        assert time.monotonic() < deadline + 60, _rows(tmux)
        time.sleep(0.05)
    rows = _rows(tmux, "-J")  # the summary line may wrap at 40 columns: join it
    assert all(row.startswith(KNOWN) for row in rows), rows
    assert not any("[commands" in row for row in rows), rows  # no stale status line after the summary
    assert rows[-2].startswith("Finished: 3, failed: 0") and rows[-1] == "exit 0", rows
