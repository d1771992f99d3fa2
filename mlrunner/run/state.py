"""The `param` and `stat` files: the record of every experiment (SPEC R5-R7, I3-I5, V2).

Both files are YAML, replaced atomically (temporary file + rename), and changed only under an
flock on the experiment's directory, so two runs on one tree never claim the same command. The
lock is released by the kernel when its holder dies, so a crash can never leave a tree locked.
A `param`, and a `stat` that ends a command, is fsync'd with its directory (temporary file fsync'd,
renamed, directory fsync'd) before the command starts or the task goes on, so it survives a
machine reset. A record that does not parse is never overwritten: it is set aside.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import yaml

from . import records
from .index import Signature, signature
from .processes import HOST, OWNER, end_group, group_alive, owner_alive, process_start
from ..plan.names import safe_name

PARAM, STAT = "param", "stat"
RUNS = "_runs"  # stat's per-command history: every run, its worker, times, status and owner
KEPT = "_kept"  # param's record of each --keep-changed: when, the values before, the lines kept (T5)
FINISHED, FAILED, RUNNING, INTERRUPTED, SKIPPED = "finished", "failed", "running", "interrupted", "skipped"
STOPPED = "stopped"  # ended by an early_stop rule (A2): done, as a rerun sees it, unless --rerun-stopped
CHANGED = "changed"  # shown by --dry-run and --status for a finished command whose config changed (I2)
RUN = "run"  # the verdict of a claim that started its command
ORPHANED = "orphaned"  # shown for a command still running after its runner died (R12)
MAX_RUNS = 20  # runs of one command kept in `_runs`, the newest
ENDED = (FINISHED, FAILED, STOPPED)  # records that must survive a reset before the task goes on (I5)
FSYNC = os.environ.get("MLRUNNER_FSYNC", "1") != "0"  # 0: no fsync, for benchmarks and scratch runs

def _read(path: str) -> bytes:
    """A whole file with plain os calls: open, read to the end, close (no buffer object, no fstat)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(descriptor)


class Corrupt(Exception):
    """A record that exists but does not parse as a YAML mapping."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_record(path: str, known: Optional[Tuple[bytes, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """A `param` or `stat` mapping; {} when missing; Corrupt when it exists but does not parse.

    `known`: the bytes this process last wrote there and their mapping, returned without parsing
    while the file still holds exactly those bytes.
    """
    try:
        data = _read(path)
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise Corrupt(path, "a directory, not a file") from None
    if known is not None and data == known[0]:
        return known[1]
    try:
        value = records.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise Corrupt(path, "not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise Corrupt(path, f"not valid YAML{where}") from None
    if not isinstance(value, dict):
        raise Corrupt(path, "empty" if value is None else "not a YAML mapping")
    return value


def read_yaml(path: str) -> Dict[str, Any]:
    """For readers that only show things (--follow): {} when missing or when it does not parse."""
    try:
        return read_record(path)
    except Corrupt:
        return {}


def write_record(path: str, data: Dict[str, Any], sort_keys: bool = True, durable: bool = False) -> bytes:
    """Replace `path` atomically; `durable` also fsyncs the file and its directory (I5). Returns the bytes."""
    directory = os.path.dirname(path) or "."
    temporary = f"{directory}/.{os.path.basename(path)[:64]}.{os.getpid()}.{threading.get_ident()}.tmp"
    text = records.dumps(data, sort_keys).encode("utf-8")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            written = 0
            while written < len(text):
                written += os.write(descriptor, text[written:])
            if durable and FSYNC:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if durable and FSYNC:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return text


_ASIDE_RE = re.compile(r"\.corrupt\.\d{8}\.\d{6}(?:\.\d+)?\Z")


def set_aside_name(name: str) -> bool:
    """Is this file name one `set_aside` made? Only its exact suffix: an experiment may well be
    called `x.corrupt.y` or `run.tmp` (a value's text), and must not vanish from the views."""
    return _ASIDE_RE.search(name) is not None


def set_aside(path: str) -> str:
    """Rename a record that does not parse to `<path>.corrupt.<time>`, so it is never overwritten."""
    target = f"{path}.corrupt.{time.strftime('%Y%m%d.%H%M%S')}"
    candidate, number = target, 1
    while os.path.lexists(candidate):
        number += 1
        candidate = f"{target}.{number}"
    os.rename(path, candidate)
    return candidate


@contextmanager
def locked(directory: str) -> Iterator[None]:
    """Hold the experiment directory's flock (on the directory itself: no lock file to create)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def runs_of(stat: Dict[str, Any], command: str) -> List[Dict[str, Any]]:
    """Every recorded run of a command, oldest first (a single mapping in older records)."""
    runs = stat.get(RUNS)
    value = runs.get(command) if isinstance(runs, dict) else None
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [run for run in value if isinstance(run, dict)]
    return []


def last_run(stat: Dict[str, Any], command: str) -> Dict[str, Any]:
    runs = runs_of(stat, command)
    return runs[-1] if runs else {}


def gpu_mib(stat: Dict[str, Any]) -> Optional[int]:
    """The most GPU memory any command's last run was seen to take (G12); None when none was read."""
    seen = [run.get("gpu_mib") for key in stat if key != RUNS for run in [last_run(stat, key)]]
    seen = [mib for mib in seen if type(mib) is int]
    return max(seen) if seen else None


def orphan(run: Dict[str, Any]) -> Optional[int]:
    """The process group (its leader's pid) that a dead runner left running on this host (R12):
    None when there is none. The group is checked with its leader's start time, never by pid alone."""
    pgid = run.get("pgid")
    if run.get("host") != HOST or type(pgid) is not int or pgid <= 0:
        return None
    return pgid if group_alive(pgid, run.get("pgid_start")) else None


def dead_owner_status(run: Dict[str, Any]) -> str:
    """What a `running` record whose runner is gone means: `interrupted` (R6), or, while the
    command still runs, `running (orphaned, pid N)` (R12)."""
    pgid = orphan(run)
    return INTERRUPTED if pgid is None else f"{RUNNING} ({ORPHANED}, pid {pgid})"


def statuses(stat: Dict[str, Any]) -> Dict[str, str]:
    """Command -> status; a `running` whose owner is gone as `dead_owner_status` says."""
    out = {}
    for key, status in stat.items():
        if key == RUNS:
            continue
        if status == RUNNING:
            run = last_run(stat, key)
            if not owner_alive(run):
                status = dead_owner_status(run)
        out[key] = status
    return out


def record_path(directory: str, kind: str, name: str, shared: bool) -> str:
    """`<dir>/stat`, or `<root>/stat.<name>` when experiments share the root (--no-subdir)."""
    return os.path.join(directory, safe_name(f"{kind}.{name}") if shared else kind)


def _reserve(path: str) -> str:
    """Create the log file under a name no earlier run used: `<log>`, else `<log>.2`, `<log>.3` (I6)."""
    directory, base = os.path.split(path)
    candidate, number = path, 1
    while True:
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return candidate
        except FileExistsError:
            number += 1
            candidate = os.path.join(directory, safe_name(f"{base}.{number}"))


@dataclass
class Claim:
    """How a command's start went: RUN with its process and log, FINISHED, or why another run has it."""

    verdict: str
    process: Any = None
    log: str = ""
    notes: List[str] = field(default_factory=list)  # what the console should say (set aside, leftovers ended)


class Experiment:
    """One experiment's records, as seen by one worker of this run."""

    def __init__(self, directory: str, name: str, shared: bool = False):
        self.directory = directory
        self.name = name
        self.stat_path = record_path(directory, STAT, name, shared)
        self.param_path = record_path(directory, PARAM, name, shared)
        # What this object last wrote to each record: read back unchanged, it needs no parsing.
        self._written: Dict[str, Tuple[bytes, Dict[str, Any]]] = {}
        # Each record's signature right after this object last wrote it, and the last stat it wrote:
        # what a run tells the next review (resume.Memory) about a task it ran whole.
        self.signed: Dict[str, Signature] = {}
        self.stat_written: Dict[str, Any] = {}

    def read_stat(self) -> Dict[str, Any]:
        return read_record(self.stat_path)

    def _load(self, path: str, notes: List[str]) -> Dict[str, Any]:
        """A record, or {} after setting aside one that does not parse (I5)."""
        try:
            return read_record(path, self._written.pop(path, None))  # the caller may change what it gets
        except Corrupt as error:
            aside = set_aside(path)
            notes.append(f"{path} did not parse ({error.reason}): kept as {aside}; its commands run again")
            return {}

    def _write_param(self, params: Dict[str, Any], notes: List[str]) -> None:
        """This run's params, keeping `_scripts` of commands that earlier runs ran (R5) and the
        record of kept changes (T5)."""
        old = self._load(self.param_path, notes)
        scripts = dict(old.get("_scripts") or {})
        scripts.update(params["_scripts"])
        kept = {KEPT: old[KEPT]} if KEPT in old and KEPT not in params else {}
        # durable like an ended `stat`: a reset never leaves a run whose `param` is missing or torn
        write_record(self.param_path, dict(params, _scripts=scripts, **kept), durable=True)
        self.signed[self.param_path] = signature(self.param_path)

    def _write_stat(self, stat: Dict[str, Any], durable: bool = False) -> None:
        """Commands in the order they ran, then their runs, so the file reads like the run."""
        ordered = {k: v for k, v in stat.items() if k != RUNS}
        ordered[RUNS] = stat.get(RUNS) if isinstance(stat.get(RUNS), dict) else {}
        self._written[self.stat_path] = (write_record(self.stat_path, ordered, sort_keys=False, durable=durable),
                                         ordered)
        self.signed[self.stat_path] = signature(self.stat_path)
        self.stat_written = ordered

    def start(self, command: str, *, rerun: bool, worker: str, log: str, line: Callable[[str], str],
              launch: Callable[[str], Any], param: Optional[Dict[str, Any]] = None, grace: float = 10.0,
              extra: Optional[Dict[str, Any]] = None, say: Optional[Callable[[str], None]] = None) -> Claim:
        """Claim a command and start it, in one locked step, unless it finished or a live run has it.

        `line(log)` is the shell line for the log this claim reserves; `launch(line)` starts it.
        `param`, given at a task's first start in this run, is written before the command starts.
        A `running` left by a dead run whose process group still lives is ended first (I3), after
        `say` told the console so (R12). `extra`: more of the run's entry (its provenance, P1).
        """
        notes: List[str] = []
        with locked(self.directory):
            stat = self._load(self.stat_path, notes)
            last = last_run(stat, command)
            if stat.get(command) == RUNNING:
                if owner_alive(last):
                    return Claim(f"running in another mlrunner (host {last.get('host')}, pid {last.get('pid')})")
                _end_leftover(last, grace, say or notes.append)
            elif stat.get(command) == FINISHED and not rerun:
                return Claim(FINISHED, notes=notes)
            reserved = _reserve(log)
            script = line(reserved)
            if param is not None or reserved != log:
                if param is None:
                    param = self._load(self.param_path, notes)
                scripts = dict(param.get("_scripts") or {}, **{command: script})
                self._write_param(dict(param, _scripts=scripts), notes)
            process = launch(script)
            run = dict(OWNER, worker=worker, start=round(time.time(), 3), status=RUNNING, log=reserved, **(extra or {}))
            pgid = getattr(process, "pgid", None)
            if pgid is not None:
                run.update(pgid=pgid, pgid_start=process_start(pgid))
            self._append_run(stat, command, run)
            stat[command] = RUNNING
            self._write_stat(stat)
            getattr(process, "release", lambda: None)()  # recorded: now it may run (I3)
        return Claim(RUN, process, reserved, notes)

    def finish(self, command: str, status: str, seconds: Optional[float] = None, reason: Optional[str] = None,
               skipped: Optional[List[str]] = None, details: Optional[Dict[str, Any]] = None,
               gpu_mib: Optional[int] = None) -> List[str]:
        """Record how a command ended (and mark the task's later ones skipped), with the peak GPU
        memory nvidia-smi showed for it when known (G12); returns notes. `details` go into the
        run's record (an early stop's decision: A2)."""
        notes: List[str] = []
        with locked(self.directory):
            stat = self._load(self.stat_path, notes)
            runs = runs_of(stat, command)
            run = runs[-1] if runs and _ours(runs[-1]) else None
            if run is None:  # it never got to start (I4), or its record was set aside meanwhile
                run = dict(OWNER, start=round(time.time() - (seconds or 0), 3))
                self._append_run(stat, command, run)
            for key in ("pid", "pid_start", "pgid", "pgid_start"):
                run.pop(key, None)
            run.update(end=round(time.time(), 3), status=status)
            if seconds is not None:
                run["seconds"] = round(seconds, 3)
            if reason:
                run["reason"] = reason
            if details:
                run.update(details)
            if gpu_mib is not None:
                run["gpu_mib"] = gpu_mib
            stat[command] = status
            for later in skipped or []:
                stat[later] = SKIPPED
            self._write_stat(stat, durable=status in ENDED)
        return notes

    @staticmethod
    def _append_run(stat: Dict[str, Any], command: str, run: Dict[str, Any]) -> None:
        runs = runs_of(stat, command) + [run]
        if not isinstance(stat.get(RUNS), dict):
            stat[RUNS] = {}
        stat[RUNS][command] = runs[-MAX_RUNS:]


def _ours(run: Dict[str, Any]) -> bool:
    return run.get("status") == RUNNING and run.get("pid") == OWNER["pid"] and run.get("pid_start") == OWNER["pid_start"]


def _end_leftover(run: Dict[str, Any], grace: float, say: Callable[[str], None]) -> None:
    """End the process group a dead run left behind on this host, before its command runs again
    (I3), saying so before the grace is waited (R12)."""
    pgid = orphan(run)
    if pgid is None:
        return
    say(f"ending process group {pgid}, left running by a dead mlrunner (pid {run.get('pid')}): "
        f"SIGTERM, then SIGKILL after {grace:g}s")
    end_group(pgid, grace)
