"""Which code made a result (SPEC P1), and which files are "the code" (shared by P2 and H13).

A run asks git a few questions once, never per command: the commit of the working directory, a
digest of what differs from it (`git diff HEAD`, submodules' own diffs included, plus the
untracked files that are not ignored, names and contents), the commits of the submodules. The
answer is plain data (`Code`) that every `_runs` entry of the run copies. Outside a git work
tree, or with no git on PATH, there is no answer and no error: the fields are left out.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .state import Corrupt, read_record

GIT_TIMEOUT_S = 60.0
DIGEST_CHARS = 16  # of a sha256: enough to tell trees apart, short enough for a table column


def git(args: List[str], cwd: str = ".") -> Optional[bytes]:
    """git's stdout, or None when git is missing, fails, or hangs: provenance never stops a run."""
    try:
        done = subprocess.run(["git", "-C", cwd] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def work_tree(path: str = ".") -> Optional[str]:
    """The top of the git work tree that holds `path`, or None (no git, not a work tree)."""
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    out = git(["rev-parse", "--show-toplevel"], directory)
    return os.fsdecode(out.strip()) if out and out.strip() else None


def git_files(path: str = ".", submodules: bool = False, cwd: str = ".") -> List[str]:
    """The files git tracks or would track (untracked, not ignored) under `path`, relative to
    `cwd`; with `submodules`, the files of checked-out submodules instead of their directories.
    Raises OSError outside a work tree or without git."""
    listed = git(["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", path], cwd)
    if listed is None:
        raise OSError(f"{path}: not in a git work tree (or git is not on PATH)")
    names = [os.fsdecode(n) for n in listed.split(b"\0") if n]
    if not submodules:
        return names
    inside = git(["ls-files", "-z", "--cached", "--recurse-submodules", "--", path], cwd) or b""
    found = set(names)
    modules = {m for m in (os.fsdecode(n) for n in inside.split(b"\0") if n) if m not in found}
    return sorted({n for n in names if os.path.islink(os.path.join(cwd, n)) or not os.path.isdir(os.path.join(cwd, n))}
                  | modules)


def outside(names: Iterable[str], top: str, exclude: Sequence[str]) -> List[str]:
    """`names` (relative to `top`) less those under an excluded absolute path (the output tree)."""
    prefixes = [os.path.relpath(os.path.realpath(e), top) + os.sep for e in exclude]
    prefixes = [p for p in prefixes if not p.startswith(".." + os.sep)]
    return [n for n in names if not any((n + os.sep).startswith(p) for p in prefixes)]


def _untracked_digest(sha: Any, top: str, names: List[str]) -> None:
    for name in sorted(names):
        sha.update(os.fsencode(name) + b"\0")
        try:
            with open(os.path.join(top, name), "rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    sha.update(chunk)
        except OSError as error:  # a directory (an untracked repo), a socket, no permission
            sha.update(f"<{type(error).__name__}>".encode())
        sha.update(b"\0")


@dataclass(frozen=True)
class Code:
    """The state of the working directory's code at one moment; None fields: unknown."""

    commit: Optional[str] = None  # HEAD, also when detached
    dirty: Optional[str] = None  # digest of the differences from HEAD; None when clean
    submodules: Dict[str, str] = field(default_factory=dict)  # path -> checked-out commit

    @property
    def known(self) -> bool:
        return self.commit is not None or self.dirty is not None

    @property
    def digest(self) -> str:
        """One name for this exact tree: the snapshot's directory (P2)."""
        sha = hashlib.sha256(f"{self.commit}\0{self.dirty}\0".encode())
        for path, commit in sorted(self.submodules.items()):
            sha.update(f"{path}\0{commit}\0".encode())
        return sha.hexdigest()[:DIGEST_CHARS]

    def fields(self) -> Dict[str, Any]:
        """What a `_runs` entry records of it: nothing outside git."""
        out: Dict[str, Any] = {}
        if self.commit is not None:
            out["commit"] = self.commit
        if self.known:
            out["dirty"] = self.dirty or False
        if self.submodules:
            out["submodules"] = dict(self.submodules)
        return out


def code_state(path: str = ".", exclude: Sequence[str] = ()) -> Code:
    """The code of the work tree at `path` now (a few git calls); Code() outside git. Files under
    `exclude` (the output tree, when it lies inside the work tree unignored) are not code."""
    top = work_tree(path)
    if top is None:
        return Code()
    head = git(["rev-parse", "--verify", "-q", "HEAD"], top)
    commit = head.decode().strip() if head else None
    submodules = {}
    for line in (git(["submodule", "status", "--recursive"], top) or b"").decode(errors="replace").splitlines():
        parts = line[1:].split()
        if len(parts) >= 2 and line[:1] != "-":  # "-": not checked out
            submodules[parts[1]] = parts[0]
    sha = hashlib.sha256()
    if commit is not None:
        sha.update(git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", "--submodule=diff"], top) or b"")
        others = git(["ls-files", "-z", "--others", "--exclude-standard"], top) or b""
    else:  # no commit yet: every file is a difference
        others = git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"], top) or b""
    names = outside([os.fsdecode(n) for n in others.split(b"\0") if n], top, exclude)
    _untracked_digest(sha, top, names)
    clean = commit is not None and sha.digest() == hashlib.sha256().digest()
    return Code(commit, None if clean else sha.hexdigest()[:DIGEST_CHARS], submodules)


def python_of(environment: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The `python3` a command would find on PATH, and its version; the runner's own when none."""
    env = dict(os.environ if environment is None else environment)
    try:
        done = subprocess.run(["python3", "-c", "import sys; print(sys.executable); print(sys.version.split()[0])"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=env, timeout=30)
        executable, version = done.stdout.decode().split("\n")[:2]
        if done.returncode == 0 and executable:
            return {"python": executable, "python_version": version}
    except (OSError, subprocess.TimeoutExpired, ValueError, UnicodeDecodeError):
        pass
    return {"python": sys.executable, "python_version": sys.version.split()[0]}


def gpu_fields(resource: str, inventory: Dict[str, Any]) -> Dict[str, str]:
    """GPU name and UUID of a worker's `resource` ("0,1", a `GPU-...` UUID), from `index -> Gpu`
    of nvidia-smi; a UUID given as the resource is one even without nvidia-smi; {} when unknown."""
    names, uuids = [], []
    for entry in (e.strip() for e in resource.split(",") if e.strip()):
        gpu = inventory.get(entry) or next((g for g in inventory.values() if g.uuid == entry), None)
        if gpu is not None:
            names.append(gpu.name)
            uuids.append(gpu.uuid)
        elif entry.startswith(("GPU-", "MIG-")):
            uuids.append(entry)
    out = {}
    if names and len(names) == len(uuids):
        out["gpu_name"] = ",".join(names)
    if uuids:
        out["gpu_uuid"] = ",".join(uuids)
    return out


class Stamp:
    """What each command's `_runs` entry records of its provenance (P1): git and Python asked once
    per run, each machine's GPUs (with `gpu:`, which polls nvidia-smi anyway) once per run."""

    def __init__(self, code: Code, snapshot: Optional[str] = None, gpus: bool = False):
        shared = dict(code.fields(), **({"code": snapshot} if snapshot else {}))
        self.local = dict(shared, node=socket.gethostname(), **python_of())
        self.remote = shared  # the runner's Python says nothing of a host's
        self.gpus = gpus
        self._inventory: Dict[str, Dict[str, Any]] = {}
        self._lock = threading.Lock()

    def fields(self, executor: Any) -> Dict[str, Any]:
        """The entry's fields for a command that `executor` (local or a host's) starts."""
        base = self.local if executor.host == "localhost" else dict(self.remote, node=executor.host)
        return dict(base, **gpu_fields(executor.resource, self._gpus_of(executor.machine) if self.gpus else {}))

    def _gpus_of(self, machine: Any) -> Dict[str, Any]:
        from .gpus import QUERY_ARGS, parse_query_csv
        with self._lock:
            if machine.name not in self._inventory:
                inventory: Dict[str, Any] = {}
                try:
                    status, out, _ = machine.query(QUERY_ARGS)
                    if status == 0:
                        inventory = {gpu.index: gpu for gpu in parse_query_csv(out)}
                except Exception:  # a host lost, odd output: the GPU stays unknown, the command runs
                    pass
                self._inventory[machine.name] = inventory
            return self._inventory[machine.name]


# -- reading it back: --examine columns, the --status / --dry-run note -------------------------

COLUMNS = ("commit", "dirty", "submodules", "node", "python", "python_version", "gpu_name", "gpu_uuid")


def recorded(stat: Dict[str, Any]) -> Dict[str, Any]:
    """The provenance of an experiment's newest run of a command that recorded one ({} for none)."""
    runs = stat.get("_runs")
    newest: Dict[str, Any] = {}
    for value in (runs.values() if isinstance(runs, dict) else []):
        for run in (value if isinstance(value, list) else [value]):
            if (isinstance(run, dict) and ("commit" in run or "dirty" in run or "code" in run)
                    and _number(run.get("start")) >= _number(newest.get("start"))):
                newest = run
    return {key: newest[key] for key in ("code",) + COLUMNS if key in newest}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("-inf")


def differs(stat: Dict[str, Any], now: Code) -> Optional[Tuple[Any, ...]]:
    """The recorded code of a finished experiment, as a key, when it is not `now`'s; else None."""
    if not now.known or "finished" not in stat.values():
        return None
    then = recorded(stat)
    if "commit" not in then and "dirty" not in then:
        return None  # recorded before P1, or outside git: nothing to compare
    key = (then.get("commit"), then.get("dirty") or False, tuple(sorted((then.get("submodules") or {}).items())))
    mine = (now.commit, now.dirty or False, tuple(sorted(now.submodules.items())))
    return None if key == mine else key


def code_notes(stats: Iterable[Dict[str, Any]], now: Code) -> List[str]:
    """One line per group of finished experiments whose code is not the work tree's now (P1):
    information only, since most edits change nothing that matters and nothing reruns for it."""
    groups: Dict[Tuple[Any, ...], int] = {}
    for stat in stats:
        key = differs(stat, now)
        if key is not None:
            groups[key] = groups.get(key, 0) + 1
    lines = []
    for (commit, dirty, _), count in sorted(groups.items(), key=lambda item: -item[1]):
        what = f"commit {commit[:12]}" if commit else "no commit"
        what += f" with changes {dirty}" if dirty else ""
        lines.append(f"Code: {count} finished experiment(s) ran {what}, not the code here now "
                     "(information only: nothing reruns for it)")
    return lines


def print_code_notes(output: str, stat_paths: Iterable[str]) -> None:
    """P1: the finished experiments whose code is not the work tree's now, one line per code."""
    now = code_state(".", exclude=[output])
    if not now.known:
        return
    stats = []
    for path in stat_paths:
        try:
            stats.append(read_record(path))
        except (Corrupt, OSError):
            pass  # --status warns about it on its own
    for line in code_notes(stats, now):
        print(line)
