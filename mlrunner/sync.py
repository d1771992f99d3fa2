"""Copy an experiment's remote output directory back, only what changed (SPEC H5).

The host's agent lists the whole directory in one reply; files whose size or mtime differ from
the local copy come back over SFTP. Small ones, when there are many, come as one tar the agent
packs, because fetching a thousand small files one request at a time costs seconds.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import tarfile
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

RECORDS = ("param", "stat")  # the local files are the record (H4): a host's copy never replaces them
SMALL = 1 << 20  # bytes: files up to this size may travel in a bundle
BUNDLE_MIN = 16  # fewer small files than this are fetched one by one

Entry = Tuple[str, int, int]  # relative path, size, mtime (whole seconds)


def _excluded(relative: str, globs: Sequence[str]) -> bool:
    name = posixpath.basename(relative)
    return any(fnmatch.fnmatch(relative, g) or fnmatch.fnmatch(name, g) for g in globs)


def changed(listing: Iterable[Entry], local_dir: str, exclude: Sequence[str] = ()) -> List[Entry]:
    """The remote files to copy: new, or another size or mtime than the local copy; not excluded."""
    wanted = []
    for relative, size, mtime in listing:
        if relative in RECORDS or _excluded(relative, exclude):
            continue
        try:
            info = os.stat(os.path.join(local_dir, *relative.split("/")))
            if info.st_size == size and int(info.st_mtime) == mtime:
                continue
        except FileNotFoundError:
            pass
        wanted.append((relative, size, mtime))
    return wanted


def _place(local_dir: str, relative: str, mtime: int, write: Callable[[str], None]) -> None:
    """Write a file under a temporary name, rename it into place, give it the remote mtime."""
    local = os.path.join(local_dir, *relative.split("/"))
    os.makedirs(os.path.dirname(local), exist_ok=True)
    temporary = os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.sync")
    write(temporary)
    os.replace(temporary, local)
    os.utime(local, (mtime, mtime))


def _unbundle(stream: Any, local_dir: str, mtimes: Dict[str, int]) -> None:
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if not member.isfile() or member.name not in mtimes:  # only what was asked for: no ../
                continue
            source = archive.extractfile(member)

            def write(path: str, source: Any = source) -> None:
                with open(path, "wb") as target:
                    while True:
                        block = source.read(1 << 16)
                        if not block:
                            break
                        target.write(block)
            _place(local_dir, member.name, mtimes[member.name], write)


def pull(request: Callable[..., Dict[str, Any]], sftp: Any, remote_dir: str, local_dir: str,
         exclude: Sequence[str] = ()) -> List[str]:
    """Bring `remote_dir` up to date in `local_dir`; returns the relative paths copied.

    `request` asks the host's agent (`list`, `pack`, `unlink`); `sftp` moves the bytes.
    """
    todo = changed((tuple(f) for f in request("list", path=remote_dir)["files"]), local_dir, exclude)
    copied = [relative for relative, _, _ in todo]
    small = [entry for entry in todo if entry[1] <= SMALL]
    if len(small) >= BUNDLE_MIN:
        bundle = request("pack", path=remote_dir, files=[relative for relative, _, _ in small])["path"]
        try:
            with sftp.open(bundle, "rb") as stream:
                stream.prefetch()
                _unbundle(stream, local_dir, {relative: mtime for relative, _, mtime in small})
        finally:
            request("unlink", path=bundle)
        todo = [entry for entry in todo if entry[1] > SMALL]
    for relative, _, mtime in todo:
        remote = posixpath.join(remote_dir, relative)
        _place(local_dir, relative, mtime, lambda path, remote=remote: sftp.get(remote, path))
    return copied
