"""The `param` and `stat` files: the record of every experiment, and the resume rules (SPEC R5-R7).

Both files are YAML, replaced atomically (temporary file + rename), and changed only under an
flock on the experiment's directory, so two runs on one tree never claim the same command. The lock
is released by the kernel when its holder dies, so a crash can never leave a tree locked.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

import yaml

from . import records

PARAM, STAT = "param", "stat"
RUNS = "_runs"  # stat's per-command details: owner while running, duration when ended
FINISHED, FAILED, RUNNING, INTERRUPTED, SKIPPED = "finished", "failed", "running", "interrupted", "skipped"

HOST = socket.gethostname()


def _process_start(pid: int) -> Optional[int]:
    """The kernel's start time of `pid`, so that a reused pid is not taken for the old owner."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return int(stream.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


OWNER = {"host": HOST, "pid": os.getpid(), "pid_start": _process_start(os.getpid())}


def owner_alive(run: Dict[str, Any]) -> bool:
    """Is the run that wrote this `running` record still alive? Unknown hosts count as alive."""
    if run.get("host") != HOST:
        return run.get("host") is not None
    pid = run.get("pid")
    if not isinstance(pid, int):
        return False
    if pid == os.getpid() and run.get("pid_start") == OWNER["pid_start"]:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    recorded = run.get("pid_start")
    return recorded is None or recorded == _process_start(pid)


def read_yaml(path: str) -> Dict[str, Any]:
    """A YAML mapping, or {} when the file is missing, empty or not a mapping."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = records.loads(stream.read())
    except FileNotFoundError:
        return {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_yaml(path: str, data: Dict[str, Any], sort_keys: bool = True) -> None:
    """Replace `path` atomically: readers see the old file or the new one, never a torn one."""
    temporary = f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(records.dumps(data, sort_keys))
    os.replace(temporary, path)


@contextmanager
def locked(directory: str) -> Iterator[None]:
    """Hold the experiment directory's flock (on the directory itself: no lock file to create)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _write_stat(path: str, stat: Dict[str, Any]) -> None:
    """Commands in the order they ran, then their details, so the file reads like the run."""
    ordered = {k: v for k, v in stat.items() if k != RUNS}
    ordered[RUNS] = stat.get(RUNS) or {}
    write_yaml(path, ordered, sort_keys=False)


def statuses(stat: Dict[str, Any]) -> Dict[str, str]:
    """Command -> status, with a `running` whose owner is gone shown as `interrupted` (R6)."""
    runs = stat.get(RUNS) or {}
    out = {}
    for key, status in stat.items():
        if key == RUNS:
            continue
        if status == RUNNING and not owner_alive(runs.get(key) or {}):
            status = INTERRUPTED
        out[key] = status
    return out


def first_to_run(stat: Dict[str, Any], keys: Sequence[str], force: bool) -> Optional[int]:
    """Index of the first command to run, or None when all finished (R6: later ones follow it)."""
    if force:
        return 0
    for position, key in enumerate(keys):
        if stat.get(key) != FINISHED:
            return position
    return None


class Experiment:
    """One experiment directory's files, as seen by one worker of this run."""

    def __init__(self, directory: str, name: str, shared: bool = False):
        self.directory = directory
        self.name = name
        self.shared = shared  # --no-subdir: many experiments keep their records in one directory
        self.stat_path = os.path.join(directory, STAT)
        self.param_path = os.path.join(directory, PARAM)

    def key(self, command: str) -> str:
        return f"{command}.{self.name}" if self.shared else command

    def _write_param(self, params: Dict[str, Any]) -> None:
        """Write this run's params, keeping `_scripts` of commands that earlier runs ran (R5)."""
        whole = read_yaml(self.param_path)
        old = whole.get(self.name, {}) if self.shared else whole
        scripts = dict(old.get("_scripts") or {})
        scripts.update(params["_scripts"])
        new = dict(params, _scripts=scripts)
        if self.shared:
            whole[self.name] = new
            new = whole
        write_yaml(self.param_path, new)

    def claim(self, command: str, rerun: bool, worker: str, param: Optional[Dict[str, Any]] = None) -> str:
        """Mark `command` running for this run, unless it finished or another live run has it.

        Returns "run", FINISHED or a description of the live owner. `param`, when given, is
        written in the same locked step if the command is to run, before the task's first command.
        """
        key = self.key(command)
        with locked(self.directory):
            stat = read_yaml(self.stat_path)
            runs = stat.setdefault(RUNS, {})
            if stat.get(key) == RUNNING and owner_alive(runs.get(key) or {}):
                owner = runs[key]
                return f"running in another mlrunner (host {owner.get('host')}, pid {owner.get('pid')})"
            if stat.get(key) == FINISHED and not rerun:
                return FINISHED
            if param is not None:
                self._write_param(param)
            stat[key] = RUNNING
            runs[key] = dict(OWNER, worker=worker, started=time.strftime("%Y-%m-%d %H:%M:%S"))
            _write_stat(self.stat_path, stat)
        return "run"

    def record(self, updates: Dict[str, str], seconds: Optional[float] = None, reason: Optional[str] = None) -> None:
        """Set commands' statuses; the first one's run details get its duration (and why it failed)."""
        with locked(self.directory):
            stat = read_yaml(self.stat_path)
            runs = stat.setdefault(RUNS, {})
            for position, (command, status) in enumerate(updates.items()):
                key = self.key(command)
                stat[key] = status
                if position == 0 and seconds is not None:
                    run = runs.get(key) or {}
                    runs[key] = {"worker": run.get("worker"), "started": run.get("started"),
                                 "seconds": round(seconds, 3)}
                    if reason:
                        runs[key]["reason"] = reason
            _write_stat(self.stat_path, stat)

    def read_stat(self) -> Dict[str, Any]:
        return read_yaml(self.stat_path)

    def keys(self, commands: Sequence[str]) -> List[str]:
        return [self.key(command) for command in commands]
