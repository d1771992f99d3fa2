"""Copy an experiment's remote output directory back, only what changed (SPEC H5, H11).

Three steps. `validate` (pure) keeps, from the host's listing, regular files whose path stays
strictly inside the directory, and says why it refused the rest: a host is not trusted. `plan`
keeps those whose size or mtime (nanoseconds) differ from the local copy. `apply` fetches them:
big files over SFTP, many small ones as one tar the agent packs (a thousand round trips cost
seconds), each tar member checked again by `check_member` (pure), and each file written under
a temporary name in a directory reached without following any symlink, then renamed into place
once it holds every byte the host listed: a broken transfer leaves no file that looks complete.

`Scope` says which of the host's files are the experiment's: never a record (`param`, `stat`) nor
a runner file (`.mlrunner-*`), and in a directory every experiment shares (--no-subdir) only the
logs of the command that ran and files that are no experiment's record, log or config copy.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

RECORDS = ("param", "stat")  # the local files are the record (H4): a host's copy never replaces them
RUNNER = (".mlrunner", ".param.", ".stat.")  # the runner's own files and its records' temporary names
SMALL = 1 << 20  # bytes: files up to this size may travel in a bundle
BUNDLE_MIN = 16  # fewer small files than this are fetched one by one

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: files copied back get the permissions a new file gets here

Entry = Tuple[str, int, int]  # relative path, size, mtime in nanoseconds
Refusal = Tuple[str, str]  # the path as the host gave it, why it was refused


@dataclass(frozen=True)
class Scope:
    """Which of the host's files belong to the command that ran. In a directory of its own, every
    file but the records; in one that every experiment shares, only `logs` (that command's log
    names) and outputs: no other log, no record, no `protected` name (the config copy, `<name>.<title>`)."""

    shared: bool = False
    logs: Tuple[str, ...] = ()
    protected: Tuple[str, ...] = ()


def foreign(relative: str, scope: Scope) -> bool:
    """True for a host file that is not the experiment's to bring back (whatever the host put there)."""
    top = relative.split("/")[0]
    if top in RECORDS or top.startswith(RUNNER):
        return True
    if not scope.shared:
        return False
    if top in scope.logs:
        return False
    return (top.startswith(("param.", "stat.", "log.")) or top in scope.protected
            or top.startswith(tuple(f"{kept}." for kept in scope.protected)))


@dataclass
class Result:
    copied: List[str] = field(default_factory=list)
    refused: List[Refusal] = field(default_factory=list)


def bad_path(relative: Any) -> Optional[str]:
    """Why a relative path from a host could leave its directory, or None when it cannot."""
    if not isinstance(relative, str) or not relative:
        return "not a path"
    if "\0" in relative or "\\" in relative:
        return "a character no output file has"
    if relative.startswith("/"):
        return "an absolute path"
    if any(part in ("", ".", "..") for part in relative.split("/")):
        return "'..', '.' or an empty part in the path"
    return None


def validate(listing: Iterable[Any]) -> Tuple[List[Entry], List[Refusal]]:
    """The host's listing rows ([path, size, mtime_ns, kind]) -> regular files to consider, refusals."""
    accepted: List[Entry] = []
    refused: List[Refusal] = []
    for row in listing:
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            refused.append((repr(row)[:80], "not a listing row"))
            continue
        relative, size, mtime, kind = row
        why = bad_path(relative)
        if why is None and kind != "f":
            why = "a symlink" if kind == "l" else "not a regular file"
        if why is None and not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (size, mtime)):
            why = "no valid size and mtime"
        if why:
            refused.append((str(relative)[:200], why))
        else:
            accepted.append((relative, size, mtime))
    return accepted, refused


def _excluded(relative: str, globs: Sequence[str]) -> bool:
    name = posixpath.basename(relative)
    return any(fnmatch.fnmatch(relative, g) or fnmatch.fnmatch(name, g) for g in globs)


def plan(entries: Iterable[Entry], local_dir: str, exclude: Sequence[str] = (), scope: Scope = Scope()) -> List[Entry]:
    """The files to copy: the experiment's, new or with another size or mtime_ns than the local copy; not excluded."""
    wanted = []
    for relative, size, mtime in entries:
        if foreign(relative, scope) or _excluded(relative, exclude):
            continue
        try:
            info = os.lstat(os.path.join(local_dir, *relative.split("/")))
            if stat.S_ISREG(info.st_mode) and info.st_size == size and info.st_mtime_ns == mtime:
                continue
        except OSError:
            pass
        wanted.append((relative, size, mtime))
    return wanted


def check_member(member: tarfile.TarInfo, wanted: Dict[str, Entry]) -> Optional[str]:
    """Why a member of a host's bundle must not be written, or None when it is one we asked for."""
    why = bad_path(member.name)
    if why:
        return why
    if not member.isfile():
        return "not a regular file"
    if member.name not in wanted:
        return "not asked for"
    return None


class Unsafe(Exception):
    """The local target is not a plain place inside the directory (a symlink, a directory in the way)."""


class Incomplete(OSError):
    """A transfer that brought fewer bytes than the host listed: nothing was placed; try again."""


def _target(local_dir: str, relative: str) -> str:
    """The local path for `relative`, making its directories, never through a symlink."""
    parts = relative.split("/")
    directory = local_dir
    for part in parts[:-1]:
        directory = os.path.join(directory, part)
        try:
            info = os.lstat(directory)
        except FileNotFoundError:
            os.mkdir(directory)
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise Unsafe(f"'{directory}' is not a directory here")
    target = os.path.join(directory, parts[-1])
    if os.path.isdir(target) and not os.path.islink(target):
        raise Unsafe(f"'{target}' is a directory here")
    return target


def _place(local_dir: str, relative: str, size: int, mtime: int, write: Callable[[str], None]) -> None:
    """Write a file under a temporary name, rename it into place (a symlink there is replaced, not
    followed) once it holds at least the `size` bytes listed, give it the remote mtime in nanoseconds."""
    target = _target(local_dir, relative)
    handle, temporary = tempfile.mkstemp(prefix=".sync-", dir=os.path.dirname(target))
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_UMASK)
        write(temporary)
        got = os.lstat(temporary).st_size
        if got < size:
            raise Incomplete(f"'{relative}': {got} of {size} bytes came")
        os.utime(temporary, ns=(mtime, mtime))
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def _copy_to(source: Any, path: str) -> None:
    with open(path, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 16)


def _unbundle(stream: Any, local_dir: str, wanted: Dict[str, Entry], result: Result) -> None:
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            why = check_member(member, wanted)
            if why:
                result.refused.append((member.name[:200], f"in the bundle: {why}"))
                continue
            source = archive.extractfile(member)
            try:
                _place(local_dir, member.name, member.size, wanted[member.name][2], lambda path: _copy_to(source, path))
            except Unsafe as error:
                result.refused.append((member.name, str(error)))
                continue
            result.copied.append(member.name)


def pull(request: Callable[..., Dict[str, Any]], sftp: Any, remote_dir: str, local_dir: str,
         exclude: Sequence[str] = (), scope: Scope = Scope()) -> Result:
    """Bring the experiment's files in `remote_dir` up to date in `local_dir`: what was copied, what
    was refused and why. Raises when a transfer breaks (the files that came are in place, whole).

    `request` asks the host's agent (`list`, `pack`, `discard`); `sftp` moves the bytes.
    """
    entries, refused = validate(request("list", path=remote_dir)["files"])
    os.makedirs(local_dir, exist_ok=True)
    result = Result(refused=refused)
    todo = plan(entries, local_dir, exclude, scope)
    small = [entry for entry in todo if entry[1] <= SMALL]
    if len(small) >= BUNDLE_MIN:
        bundle = request("pack", path=remote_dir, files=[relative for relative, _, _ in small])["path"]
        try:
            with sftp.open(bundle, "rb") as stream:
                stream.prefetch()
                _unbundle(stream, local_dir, {entry[0]: entry for entry in small}, result)
        finally:
            request("discard", path=bundle)
        todo = [entry for entry in todo if entry[1] > SMALL]
    for relative, size, mtime in todo:
        remote = posixpath.join(remote_dir, relative)
        try:
            _place(local_dir, relative, size, mtime, lambda path: sftp.get(remote, path))
        except Unsafe as error:
            result.refused.append((relative, str(error)))
            continue
        result.copied.append(relative)
    return result
