"""Helpers for the tests of runs that outlive the terminal: detached runs, their processes, waiting."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Callable, List

from runlib import run

PID_RE = re.compile(r"Detached: pid (\d+) ")


def wait_until(condition: Callable[[], object], timeout: float = 30, what: str = "condition") -> object:
    """Poll `condition` until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def processes_in(directory: Path) -> List[int]:
    """Live (not zombie) processes whose working directory is `directory`: a run and its commands."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") != str(directory):
                continue
            with open(f"/proc/{entry}/stat") as stream:
                if stream.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def kill_all_in(directory: Path) -> None:
    """End whatever a failed test left running in `directory`, so no test leaks processes."""
    for pid in processes_in(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def detach(args: List[str], cwd: Path) -> int:
    """`mlrunner --detach ARGS`; the daemon's pid, which the foreground prints."""
    code, out, err = run(["--detach", *args], cwd)
    assert code == 0, (out, err)
    assert "Traceback" not in err
    match = PID_RE.search(out)
    assert match, out
    return int(match.group(1))


def run_records(output: Path) -> List[Path]:
    return sorted(output.glob(".mlrunner-run.*"))
