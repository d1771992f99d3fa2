"""The runs in progress on an output tree: one small record per run in the output root (SPEC D2, D3).

A run keeps `<output>/.mlrunner-run.<host>.<pid>` (YAML: who it is, what it runs, its counts)
while it schedules, rewrites it atomically as its counts change and removes it when it ends. A
record's process is checked by pid *and* the kernel's start time of that pid, so a reused pid is
never taken for the run; a record whose process is gone (a SIGKILLed runner) is stale and the
next reader deletes it. The run also answers on an abstract unix socket named by a random token
kept in its record, so `--stop` (stop.py) can prove that a pid is this run before signalling it.
"""

from __future__ import annotations

import glob
import os
import secrets
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .console import Console, clock
from .detach import announce_ready, console_log
from .processes import HOST, owner_alive, process_start

PREFIX = ".mlrunner-run."
UPDATE_INTERVAL = 2.0
SOCKET_PREFIX = b"\0mlrunner-run-"  # + the record's token: an abstract socket, no file to plant


def socket_name(token: str) -> bytes:
    return SOCKET_PREFIX + token.encode("ascii")


def is_alive(run: Dict[str, Any]) -> bool:
    """Is the process that wrote this record still the same process, alive? Another host's: unknown.

    A pid that is not a positive number is never alive: signalling 0 or -1 would reach far more
    than one process.
    """
    pid = run.get("pid")
    if run.get("host") == HOST and not (isinstance(pid, int) and pid > 0):
        return False
    return owner_alive(run)


def _write_atomically(path: str, data: Dict[str, Any]) -> None:
    temporary = f"{path}.{threading.get_ident()}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        yaml.safe_dump(data, stream, sort_keys=False, default_flow_style=False)
    os.replace(temporary, path)


class RunRecord:
    """This run's record, kept up to date from the console's counters while the `with` lasts."""

    def __init__(self, output: str, console: Console, grace: float = 10.0):
        self.console = console
        self.path = os.path.join(output, f"{PREFIX}{HOST}.{os.getpid()}")
        token = secrets.token_hex(16)
        self.data: Dict[str, Any] = {
            "pid": os.getpid(), "pid_start": process_start(os.getpid()), "host": HOST, "token": token,
            "grace": grace, "cwd": os.getcwd(), "argv": list(sys.argv), "started": round(time.time(), 3),
            "log": console_log(), "workers": console.workers}
        from .processes import OWNER
        if OWNER.get("job"):  # a Slurm element's run: the queue says whether it still lives (S2)
            self.data["job"] = OWNER["job"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._update, daemon=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(socket_name(token))
        self._listener.listen(8)
        self._listener.settimeout(UPDATE_INTERVAL)
        self._answering = threading.Thread(target=self._answer, daemon=True)

    def counts(self) -> Dict[str, Any]:
        console = self.console
        ended = console.done + console.failed + getattr(console, "interrupted", 0)
        left = max(console.total - ended - console.running, 0)  # not started yet
        still = left + console.running
        eta = console.seconds / console.done * still / console.workers if console.done and still else None
        return {"total": console.total, "done": console.done, "running": console.running,
                "failed": console.failed, "left": left, "eta": None if eta is None else round(eta)}

    def _update(self) -> None:
        written = None
        while not self._stop.wait(UPDATE_INTERVAL):
            counts = self.counts()
            if counts != written:
                _write_atomically(self.path, dict(self.data, **counts))
                written = counts

    def _answer(self) -> None:
        """Accept whoever connects to the token's socket: `--stop` reads our pid from the kernel
        (SO_PEERCRED), nothing from what is sent."""
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with connection:
                try:
                    connection.sendall(b"mlrunner\n")
                except OSError:
                    pass

    def __enter__(self) -> "RunRecord":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        _write_atomically(self.path, dict(self.data, **self.counts()))
        self._thread.start()
        self._answering.start()
        announce_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def read_records(output: str) -> List[Tuple[str, Optional[Dict[str, Any]]]]:
    """Every run record under `output`: (path, its mapping, or None when it is not one)."""
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(output), PREFIX + "*"))):
        if path.endswith(".tmp"):
            continue
        try:
            with open(path, encoding="utf-8") as stream:
                run = yaml.safe_load(stream)
        except FileNotFoundError:  # it ended while we looked
            continue
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            run = None
        found.append((path, run if isinstance(run, dict) else None))
    return found


def live_runs(output: str) -> List[Dict[str, Any]]:
    """The runs in progress on `output`, oldest first; stale records of this host are deleted."""
    runs = []
    for path, run in read_records(output):
        if run is None or not is_alive(run):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        runs.append(dict(run, path=path))
    return sorted(runs, key=lambda r: (r.get("started") or 0, r.get("pid") or 0))


def describe(run: Dict[str, Any]) -> str:
    """One line for `--status`: who, since when, how far, how long still."""
    started = run.get("started") or 0
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    text = (f"pid {run.get('pid')} on {run.get('host')}, started {when} ({clock(time.time() - started)} ago): "
            f"done {run.get('done', 0)}/{run.get('total', 0)}, running {run.get('running', 0)}, "
            f"failed {run.get('failed', 0)}, left {run.get('left', 0)}")
    if isinstance(run.get("eta"), int):  # as of the record's last writing: less by now (T3)
        text += f", ETA {clock(max(run['eta'] - _age(run), 0))}"
    elif run.get("running") or run.get("left"):
        text += ", ETA once a command has finished"
    if run.get("host") != HOST and not run.get("job"):  # a Slurm element's was checked with the queue
        text += " (another host: not checked from here)"
    if run.get("log"):
        text += f"; console: {run['log']}"
    return text


def _age(run: Dict[str, Any]) -> float:
    """Seconds since the record was last written (it is rewritten only when its counts change)."""
    try:
        return max(time.time() - os.stat(run["path"]).st_mtime, 0.0)
    except (KeyError, OSError):
        return 0.0


def print_runs(output: str) -> None:
    """The head of `--status` (D2): nothing when no run is in progress."""
    runs = live_runs(output) if os.path.isdir(output) else []
    if runs:
        print(f"Runs in progress on {output}: {len(runs)}")
        for run in runs:
            print(f"  {describe(run)}")
        print(flush=True)
    from ..backends.slurm.watch import print_submissions
    print_submissions(output)  # the Slurm jobs of the tree, when it has any (S2)
