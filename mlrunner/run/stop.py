"""`--stop`: end the runs in progress on a tree, each only once it is proven to be one (SPEC D3, R11).

Anyone who can write into the output tree can plant a `.mlrunner-run.*` record, so a record is
only a claim. Before a signal is sent, a run must show three things: its pid is a positive number
whose kernel start time is the recorded one; the record's random token names an abstract unix
socket that answers; and the kernel says (SO_PEERCRED) that the process answering is that pid, of
this user. The pid is pinned with a pidfd before the checks, so a pid reused meanwhile is never
signalled. A record that fails a check is reported in one line and left alone (one whose process
simply ended is deleted, as `--status` does). A run that does
not end within its grace plus MARGIN seconds is reported with what to do: `--stop` never hangs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import EXIT_FAILED, EXIT_OK
from .processes import HOST, process_start
from .runs import read_records, socket_name

MARGIN = 5.0  # seconds past the run's grace that --stop waits for it to end (R11)
ANSWER_TIMEOUT = 2.0  # seconds a run's socket may take to answer
TOKEN_RE = re.compile(r"[0-9a-f]{32}\Z")


class Refused(Exception):
    """A record that does not prove its run: one line; `stale` when its process simply ended."""

    def __init__(self, message: str, stale: bool = False):
        super().__init__(message)
        self.stale = stale


@dataclass
class Target:
    pid: int
    start: int
    grace: float
    pidfd: Optional[int]
    sent: float = 0.0


def _pidfd(pid: int) -> Optional[int]:
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # an old kernel or Python, or the pid is gone: checked next
        return None


def _answerer(token: str) -> Optional[tuple]:
    """(pid, uid) of the process listening on the token's socket, as the kernel says; None when
    nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(ANSWER_TIMEOUT)
        try:
            connection.connect(socket_name(token))
            credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    pid, uid, _gid = struct.unpack("3i", credentials)
    return pid, uid


def verify(name: str, run: Optional[Dict[str, Any]]) -> Target:
    """The run a record names, proven to be an mlrunner run of this tree; Refused otherwise."""
    if run is None:
        raise Refused(f"{name}: not a run record: left alone")
    pid, start, token, grace = run.get("pid"), run.get("pid_start"), run.get("token"), run.get("grace")
    if type(pid) is not int or pid <= 0:
        raise Refused(f"{name}: pid {pid!r} is not a process id: left alone")
    if type(start) is not int:
        raise Refused(f"{name}: no pid_start, so pid {pid} cannot be told from a reused pid: left alone")
    pidfd = _pidfd(pid)
    try:
        now = process_start(pid)
        if now is None:
            raise Refused(f"{name}: pid {pid} is not running (gone, or a zombie): nothing to stop", stale=True)
        if now != start:
            raise Refused(f"{name}: pid {pid} is another process now (it started at another time): nothing to stop",
                          stale=True)
        if not isinstance(token, str) or not TOKEN_RE.match(token):
            raise Refused(f"{name}: no token, so pid {pid} cannot be proven to be an mlrunner run: left alone")
        answer = _answerer(token)
        if answer is None:
            raise Refused(f"{name}: pid {pid} does not answer on its record's token: not proven to be an mlrunner "
                          f"run: left alone")
        if answer[0] != pid:
            raise Refused(f"{name}: its token is answered by pid {answer[0]}, not pid {pid}: left alone")
        if answer[1] != os.geteuid() and os.geteuid() != 0:
            raise Refused(f"{name}: pid {pid} is another user's run (uid {answer[1]}): left alone; ask them")
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        raise
    good_grace = isinstance(grace, (int, float)) and not isinstance(grace, bool) and 0 <= grace < 10 ** 6
    return Target(pid, start, float(grace) if good_grace else 10.0, pidfd)


def _terminate(target: Target) -> None:
    """SIGTERM the verified run, through its pidfd where there is one (never a reused pid)."""
    try:
        if target.pidfd is not None:
            signal.pidfd_send_signal(target.pidfd, signal.SIGTERM)  # type: ignore[attr-defined]
        else:
            os.kill(target.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended meanwhile
    except PermissionError:
        raise Refused(f"pid {target.pid}: not permitted to signal it (another user's): left alone") from None
    target.sent = time.monotonic()


def _wait(target: Target) -> bool:
    """Wait until the run ended or its grace plus MARGIN passed; True when it ended."""
    deadline = target.sent + target.grace + MARGIN
    while process_start(target.pid) == target.start:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def stop(output: str) -> int:
    """`--stop` (D3): end this host's proven runs on `output` as SIGTERM does, wait for them, report.
    Exit 0 when every run found ended (or none was there), 1 when one was refused or did not end."""
    from ..backends.slurm.watch import stop_submissions

    records = read_records(output) if os.path.isdir(output) else []
    cancelled = stop_submissions(output)  # the Slurm jobs of the tree, when it has any (S2)
    status = EXIT_OK
    stopping: List[Target] = []
    for path, run in records:
        if run is not None and run.get("job"):  # a Slurm element's: cancelled with its job above
            continue
        if run is not None and run.get("host") != HOST:
            print(f"mlrunner: --stop: pid {run.get('pid')} runs on {run.get('host')}: run --stop there", file=sys.stderr)
            status = EXIT_FAILED
            continue
        try:
            target = verify(os.path.basename(path), run)
            try:
                _terminate(target)
            finally:
                if target.pidfd is not None:
                    os.close(target.pidfd)
        except Refused as refusal:
            print(f"mlrunner: --stop: {refusal}", file=sys.stderr)
            if refusal.stale:  # its run ended without removing it (SIGKILL): as --status, delete it
                _remove(path)
            else:
                status = EXIT_FAILED
            continue
        print(f"Stopping pid {target.pid} (SIGTERM): its commands are ended and recorded as interrupted", flush=True)
        stopping.append(target)
    if not stopping and status == EXIT_OK and not cancelled:
        print(f"mlrunner: no run in progress on {output}; nothing to stop")
    for target in stopping:
        if _wait(target):
            print(f"Stopped pid {target.pid} after {time.monotonic() - target.sent:.1f}s", flush=True)
        else:
            print(f"mlrunner: --stop: pid {target.pid} did not end within {target.grace + MARGIN:g}s of SIGTERM "
                  f"(its grace {target.grace:g}s + {MARGIN:g}s); end it with: kill -9 {target.pid} "
                  f"(the next run ends the commands it leaves)", file=sys.stderr)
            status = EXIT_FAILED
    return status
