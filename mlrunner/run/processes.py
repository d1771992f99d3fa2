"""Processes on this machine: who owns a record, whether a recorded process or group still
runs, and ending a group (SPEC R8, I3). A pid is only trusted together with its start time, so a
reused pid is never taken for the one a record names.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any, Dict, Optional

HOST = socket.gethostname()


def process_start(pid: int) -> Optional[int]:
    """The kernel's start time of `pid`, so that a reused pid is not taken for the old one.

    None for a zombie too: where init does not reap orphans (some containers), a detached runner
    that was killed stays in the process table as one, and must not look alive.
    """
    try:
        descriptor = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            text = os.read(descriptor, 4096)  # a few hundred bytes, which the kernel gives in one read
        finally:
            os.close(descriptor)
        fields = text.rsplit(b")", 1)[1].split()
        return None if fields[0] in (b"Z", b"X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


OWNER = {"host": HOST, "pid": os.getpid(), "pid_start": process_start(os.getpid())}


def owner_alive(run: Dict[str, Any]) -> bool:
    """Is the run that wrote this `running` record still alive? Unknown hosts count as alive."""
    if run.get("job"):  # a Slurm element's: the queue knows (S3)
        from ..backends.slurm.queue import job_alive, own_job
        job = str(run["job"])
        if job == own_job():  # alive only in the very process that wrote it: a requeued element is a new one
            return all(run.get(key) == OWNER[key] for key in ("host", "pid", "pid_start"))
        return job_alive(job)
    if run.get("host") != HOST:
        return run.get("host") is not None
    pid = run.get("pid")
    if not isinstance(pid, int):
        return False
    if pid == OWNER["pid"] and run.get("pid_start") == OWNER["pid_start"]:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    recorded = run.get("pid_start")
    return recorded is None or recorded == process_start(pid)


def group_running(pgid: int) -> bool:
    """Does any process of the group still run? `killpg(pgid, 0)` also counts zombies that
    nobody has reaped yet, so this reads the process table."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stream:
                fields = stream.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


def group_alive(pgid: int, leader_start: Optional[int]) -> bool:
    """Is the process group that a record names still the one it names, and running?

    The kernel never hands out a pid that is still some group's id, so a live group whose leader
    is gone is the recorded one; a live leader must have the recorded start time.
    """
    started = process_start(pgid)
    if started is not None and started != leader_start:
        return False
    return group_running(pgid)


def end_group(pgid: int, grace: float) -> None:
    """SIGTERM a process group, then SIGKILL what is left after `grace` seconds (R8)."""
    deadline = time.monotonic() + grace
    for number in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, number)
        except (ProcessLookupError, PermissionError):
            return
        while time.monotonic() < deadline:
            if not group_running(pgid):
                return
            time.sleep(0.05)
