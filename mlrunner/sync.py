"""Copy an experiment's remote output directory back over SFTP, only what changed (SPEC H5)."""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat
from typing import Any, List, Sequence

# The local files are the record (H4): a host's copy never replaces them.
RECORDS = ("param", "stat")


def _excluded(relative: str, globs: Sequence[str]) -> bool:
    name = posixpath.basename(relative)
    return any(fnmatch.fnmatch(relative, g) or fnmatch.fnmatch(name, g) for g in globs)


def _unchanged(local: str, size: int, mtime: int) -> bool:
    try:
        info = os.stat(local)
    except FileNotFoundError:
        return False
    return info.st_size == size and int(info.st_mtime) == mtime


def pull(sftp: Any, remote_dir: str, local_dir: str, exclude: Sequence[str] = ()) -> List[str]:
    """Copy new or changed files (by size and mtime) from `remote_dir`; return their relative paths.

    Each file lands under a temporary name and is renamed into place, then given the remote
    mtime, so the next pull of an unchanged file costs one directory listing.
    """
    copied = []
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        for entry in sftp.listdir_attr(posixpath.join(remote_dir, relative_dir) if relative_dir else remote_dir):
            relative = posixpath.join(relative_dir, entry.filename) if relative_dir else entry.filename
            if (not relative_dir and entry.filename in RECORDS) or _excluded(relative, exclude):
                continue
            local = os.path.join(local_dir, *relative.split("/"))
            if stat.S_ISDIR(entry.st_mode or 0):
                os.makedirs(local, exist_ok=True)
                pending.append(relative)
            elif stat.S_ISREG(entry.st_mode or 0) and not _unchanged(local, entry.st_size, entry.st_mtime):
                temporary = os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.sync")
                sftp.get(posixpath.join(remote_dir, relative), temporary)
                os.replace(temporary, local)
                os.utime(local, (entry.st_atime, entry.st_mtime))
                copied.append(relative)
    return copied
