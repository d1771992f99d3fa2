"""Code push (SPEC H13): copy local paths into a host's workdir before its first command.

Which files: inside a git work tree, those git tracks or that are untracked but not ignored
(`provenance.git_files`, which snapshots share: P2); elsewhere every file but `sync.exclude`.
Only files whose size or mtime (nanoseconds) differ on the host travel, as tar bundles over SFTP
that the agent unpacks. A symlink travels as a symlink when it points inside the working
directory; one that points outside is refused and reported.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import sys
import tarfile
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ...plan.hosts import HostSpec
from ...run.provenance import git_files, work_tree
from .login import HostError

BUNDLE_BYTES = 256 << 20  # a bundle closes past this size, so that no temporary file grows without bound

Local = Tuple[str, int, int, str]  # relative path, size, mtime_ns, kind ("f" or "l")


def _walk(path: str, exclude: Sequence[str]) -> List[str]:
    if not os.path.isdir(path) or os.path.islink(path):
        return [path]
    found = []
    for directory, subdirectories, names in os.walk(path):
        subdirectories[:] = [d for d in subdirectories if not any(fnmatch.fnmatch(d, g) for g in exclude)]
        for name in names + [d for d in subdirectories if os.path.islink(os.path.join(directory, d))]:
            relative = os.path.normpath(os.path.join(directory, name))
            if not any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(relative, g) for g in exclude):
                found.append(relative)
    return found


def local_files(paths: Sequence[str], exclude: Sequence[str],
                plain: bool = False) -> Tuple[List[Local], List[Tuple[str, str]]]:
    """What to push from the working directory, and the symlinks refused (path, why); `plain`:
    every file, git or not (a code snapshot, which lies in the ignored output tree: P2)."""
    top = os.path.realpath(".")
    names: Dict[str, None] = {}
    for path in paths:
        for name in (git_files(path) if not plain and work_tree(path) else _walk(path, exclude)):
            names.setdefault(os.path.normpath(name).replace(os.sep, "/"), None)
    chosen: List[Local] = []
    refused: List[Tuple[str, str]] = []
    for name in names:
        try:
            info = os.lstat(name)
        except OSError:
            continue  # tracked but deleted here
        if stat.S_ISREG(info.st_mode):
            chosen.append((name, info.st_size, info.st_mtime_ns, "f"))
        elif stat.S_ISLNK(info.st_mode):
            target = os.path.realpath(name)
            if target == top or target.startswith(top + os.sep):
                chosen.append((name, info.st_size, info.st_mtime_ns, "l"))
            else:
                refused.append((name, f"a symlink to {os.readlink(name)}, outside the working directory"))
    return chosen, refused


def changed(files: Sequence[Local], remote: Sequence[Any]) -> List[Local]:
    """The files whose size, mtime_ns or kind on the host (`stat` reply rows, None: missing) differ."""
    return [local for local, there in zip(files, remote) if there is None or list(there) != list(local[1:])]


def _bundles(files: Sequence[Local]) -> List[List[Local]]:
    groups: List[List[Local]] = [[]]
    size = 0
    for entry in files:
        if groups[-1] and size + entry[1] > BUNDLE_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += entry[1]
    return groups


def push(request: Callable[..., Dict[str, Any]], sftp: Any, workdir: str, spec: HostSpec) -> List[str]:
    """Bring the host's workdir up to date with `spec.push`, or with the run's code snapshot, once
    per host and digest (P2); returns the relative paths sent."""
    began = time.monotonic()
    files, refused = local_files([spec.code], [], plain=True) if spec.code else local_files(spec.push, spec.exclude)
    for name, why in refused:
        print(f"warning: host {spec.name}: push: refused '{name}': {why}", file=sys.stderr, flush=True)
    todo = changed(files, request("stat", root=workdir, files=[f[0] for f in files])["stats"])
    if not todo:
        print(f"host {spec.name}: code up to date ({len(files)} files)", flush=True)
        return []
    total = sum(f[1] for f in todo)
    print(f"host {spec.name}: pushing {len(todo)} of {len(files)} files ({total / 1e6:.1f} MB)", flush=True)
    for group in _bundles(todo):
        with tempfile.TemporaryFile() as stream:
            with tarfile.open(fileobj=stream, mode="w") as archive:
                for name, _, _, _ in group:
                    try:
                        archive.add(name, arcname=name, recursive=False)
                    except OSError as error:
                        raise HostError(f"push to {spec.name}: cannot read {name}: {error}") from None
            stream.seek(0)
            remote = request("temporary")["path"]
            sftp.putfo(stream, remote)
            request("unpack", root=workdir, path=remote, mtimes={name: mtime for name, _, mtime, _ in group})
    print(f"host {spec.name}: pushed {len(todo)} files in {time.monotonic() - began:.1f}s", flush=True)
    return [f[0] for f in todo]
