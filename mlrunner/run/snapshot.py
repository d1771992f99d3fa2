"""`code: snapshot` (SPEC P2): every command of a run starts in a frozen copy of the code.

Once per run, the work tree's tracked and untracked-not-ignored files (submodules' too) are
copied into `<output>/.mlrunner/code/<digest>/`, the digest being `provenance.Code.digest`, so
that an edit or a `git checkout` while a sweep runs changes nothing for the commands still to
start. A file whose size and mtime are those it had when the newest earlier snapshot copied it is
hard-linked from there, so twenty snapshots of a large repo with one edited file cost one file
each; the copies are read-only, so that no command can change a file that several snapshots
share. The tree is built in a temporary directory and renamed into place: a snapshot that
exists is whole. A manifest beside it (`<digest>.json`) keeps what each file was copied from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..options import Options
from ..errors import UserError
from .provenance import Code, code_state, git_files, outside, work_tree

DEFAULT_MAX_BYTES = 2 * 10 ** 9
ALLOWED = ("snapshot", "max_size")
_HOW = "'code: snapshot' or 'code: {snapshot: true, max_size: 5GB}'"

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*\Z", re.I)
_UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}

Entry = Tuple[str, int, int, int, Optional[str]]  # name, size, mtime_ns, mode, symlink target


@dataclass(frozen=True)
class Settings:
    """`code:` of document 1."""

    max_bytes: int = DEFAULT_MAX_BYTES


def parse(raw: Any, fail: Callable[..., Exception]) -> Optional[Settings]:
    """`code: snapshot`, or the mapping form; None when it asks for no snapshot (`snapshot: false`)."""
    if raw == "snapshot":
        return Settings()
    if not isinstance(raw, dict):
        return _refuse(fail, f"'code' must be {_HOW}", "code")
    for key in raw:
        if key not in ALLOWED:
            return _refuse(fail, f"code: unknown key '{key}' (allowed: {', '.join(ALLOWED)})", "code", key)
    if not isinstance(raw.get("snapshot", True), bool):
        return _refuse(fail, "code: 'snapshot' must be true or false", "code", "snapshot")
    settings = Settings()
    if "max_size" in raw:
        match = _SIZE_RE.match(str(raw["max_size"])) if not isinstance(raw["max_size"], bool) else None
        if not match:
            return _refuse(fail, f"code: max_size {raw['max_size']!r} is not a size (write e.g. 5GB)",
                           "code", "max_size")
        settings = Settings(int(float(match.group(1)) * _UNITS[match.group(2).lower()]))
    return settings if raw.get("snapshot", True) else None


def _refuse(fail: Callable[..., Exception], message: str, *keys: Any) -> Settings:
    raise fail(message, *keys)


def code_dir(output: str) -> str:
    return os.path.join(output, ".mlrunner", "code")


def files_of(top: str, output: str) -> List[Entry]:
    """What a snapshot of the work tree at `top` holds: regular files and symlinks, minus the
    output tree; a tracked file deleted from the work tree is left out, as git would check out."""
    entries = []
    for name in outside(git_files(".", submodules=True, cwd=top), top, [output]):
        try:
            info = os.lstat(os.path.join(top, name))
        except FileNotFoundError:
            continue
        except OSError as error:
            raise UserError(f"code: snapshot: cannot read {name}: {error.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            entries.append((name, 0, 0, 0, os.readlink(os.path.join(top, name))))
        elif stat.S_ISREG(info.st_mode):
            entries.append((name, info.st_size, info.st_mtime_ns, stat.S_IMODE(info.st_mode), None))
    return entries


def check(output: str) -> str:
    """The work tree's top, once `code: snapshot` can be honoured here; UserError (exit 2) if not."""
    top = work_tree(".")
    if top is None:
        raise UserError(f"code: snapshot needs a git work tree, and {os.getcwd()} is not in one "
                        "(or git is not on PATH): run mlrunner in your repository, or remove 'code:'")
    if not os.path.isabs(output) and os.path.normpath(output).split(os.sep)[0] == os.pardir:
        raise UserError(f"code: snapshot: -o {output} climbs out of the working directory, which commands "
                        f"cannot follow from the snapshot; give it as {os.path.abspath(output)}")
    return top


def _size_check(entries: List[Entry], settings: Settings) -> None:
    total = sum(entry[1] for entry in entries)
    if total > settings.max_bytes:
        raise UserError(f"code: snapshot: the work tree holds {_human(total)} in {len(entries)} files, over the "
                        f"limit of {_human(settings.max_bytes)}; ignore data and checkpoints in .gitignore, "
                        "or raise it: 'code: {snapshot: true, max_size: 5GB}'")


def _human(size: int) -> str:
    for unit, scale in (("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _previous(root: str) -> Tuple[str, Dict[str, List[int]]]:
    """The newest snapshot and its manifest (name -> [size, mtime_ns] of the file it copied)."""
    try:
        manifests = [e for e in os.scandir(root) if e.name.endswith(".json") and e.is_file()]
    except OSError:
        return "", {}
    for entry in sorted(manifests, key=lambda e: e.stat().st_mtime_ns, reverse=True):
        directory = os.path.join(root, entry.name[:-len(".json")])
        try:
            with open(entry.path) as stream:
                files = json.load(stream)
        except (OSError, ValueError):
            continue
        if os.path.isdir(directory) and isinstance(files, dict):
            return directory, files
    return "", {}


def _copy(source: str, target: str, entry: Entry, earlier: str, known: Dict[str, List[int]]) -> bool:
    """One file into the snapshot; True when it was linked from the earlier snapshot."""
    name, size, mtime, mode, link = entry
    if link is not None:
        os.symlink(link, target)
        return False
    if known.get(name) == [size, mtime]:
        try:
            if os.stat(os.path.join(earlier, name)).st_size == size:  # not cut short by a reset
                os.link(os.path.join(earlier, name), target)
                return True
        except OSError:
            pass  # gone, or too many links: a copy
    shutil.copyfile(source, target, follow_symlinks=False)
    os.chmod(target, mode & ~0o222)
    os.utime(target, ns=(mtime, mtime))
    return False


def make(output: str, settings: Settings, code: Code, top: str) -> Tuple[str, int, int]:
    """The snapshot of `code` under `output` (made now unless it exists): (its directory, files
    copied, files linked). UserError for a tree over the limit or a file that cannot be read."""
    root = code_dir(output)
    target = os.path.join(root, code.digest)
    if os.path.isdir(target):
        if _whole(target, os.path.join(root, f"{code.digest}.json")):
            return target, 0, 0
        aside = tempfile.mkdtemp(prefix=f".{code.digest}.broken.", dir=root)
        os.rename(target, os.path.join(aside, "tree"))
        shutil.rmtree(aside, ignore_errors=True)
    entries = files_of(top, output)
    _size_check(entries, settings)
    earlier, known = _previous(root)
    os.makedirs(root, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{code.digest}.", dir=root)
    os.chmod(temporary, 0o755)  # as any directory the snapshot holds, not mkdtemp's 0700
    copied = linked = 0
    try:
        made = {""}
        for entry in entries:
            parent = os.path.dirname(entry[0])
            if parent not in made:
                os.makedirs(os.path.join(temporary, parent), exist_ok=True)
                made.add(parent)
            try:
                if _copy(os.path.join(top, entry[0]), os.path.join(temporary, entry[0]), entry, earlier, known):
                    linked += 1
                else:
                    copied += 1
            except OSError as error:
                raise UserError(f"code: snapshot: cannot copy {entry[0]}: {error.strerror}; make it readable "
                                "or ignore it in .gitignore") from None
        manifest = {e[0]: [e[1], e[2]] for e in entries if e[4] is None}
        _write_json(os.path.join(root, f"{code.digest}.json"), manifest)
        try:
            os.rename(temporary, target)
        except OSError:
            if not os.path.isdir(target):  # not another run's, whole, in place already
                raise
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
    _fsync_dir(root)
    return target, copied, linked


def _whole(directory: str, manifest: str) -> bool:
    """Whether a snapshot holds every file of its manifest at its size. Files are not fsync'd one
    by one (10^4 fsyncs would cost more than the copy): a machine reset can cut one short, and
    such a snapshot is made again rather than run."""
    try:
        with open(manifest) as stream:
            files = json.load(stream)
        return isinstance(files, dict) and all(os.stat(os.path.join(directory, name)).st_size == entry[0]
                                               for name, entry in files.items())
    except (OSError, ValueError, TypeError, IndexError):
        return False


def _write_json(path: str, value: Any) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as stream:
        json.dump(value, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def _fsync_dir(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def workdir(snapshot: str, top: str, output: str) -> str:
    """Where commands start in the snapshot: the place of the current directory in the work tree.
    A relative `-o` is a symlink there to the output tree, relative so that it holds on a host
    that has the same layout, so that `{_output}` and the logs land where they do without one."""
    relative = os.path.relpath(os.path.realpath(os.getcwd()), top)
    start = snapshot if relative == "." else os.path.join(snapshot, relative)
    if not os.path.isabs(output):
        link = os.path.join(start, os.path.normpath(output))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        target = os.path.relpath(os.path.realpath(output), os.path.realpath(os.path.dirname(link)))
        try:
            os.symlink(target, link)
        except FileExistsError:
            if not os.path.islink(link):
                raise UserError(f"code: snapshot: -o {output} is a path of the repository; name another output "
                                "directory") from None
    return start


def take_snapshot(settings: Optional[Settings], output: str,
                  code: Code) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """For a run: (the snapshot's digest, where commands start, a console line), all None
    without `code: snapshot`."""
    if settings is None:
        return None, None, None
    top = check(output)
    directory, copied, linked = make(output, settings, code, top)
    how = f"{copied} files copied, {linked} linked" if copied or linked else "made before"
    return code.digest, workdir(directory, top, output), f"Code: snapshot {code.digest} ({how}): {directory}"


def code_for_run(settings: Optional[Settings], args: Options) -> Tuple[Code, Optional[str], Optional[str], Optional[str]]:
    """The run's code (P1) and snapshot (P2): (code, digest, where commands start, a console line).
    A Slurm element gets its submission's (`args.frozen_code`, from the manifest; `frozen_code` below) instead of its
    own: the tree may have changed since the submission, the snapshot has not."""
    frozen = args.frozen_code
    if frozen:
        code = Code(frozen.get("commit"), frozen.get("dirty"), dict(frozen.get("submodules") or {}))
        return code, frozen.get("digest"), frozen.get("start"), None
    code = code_state(".", exclude=[args.output])
    digest, start, note = take_snapshot(settings, args.output, code)
    return code, digest, start, note


def frozen_code(code: Code, digest: Optional[str], start: Optional[str]) -> Optional[Dict[str, Any]]:
    """What a Slurm submission records of its code for its elements (`Options.frozen_code`)."""
    return dict(commit=code.commit, dirty=code.dirty, submodules=code.submodules, digest=digest,
                start=start) if digest else None
