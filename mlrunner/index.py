"""A cache of what an output tree's records said, so that a rerun, `--status` and `--examine` of
10^5 finished experiments read one file instead of 10^5 directories (issue 15).

`<output>/.mlrunner-index.<section>` (`review`, `examine`) is JSON: per experiment, a digest of
the signatures of the files an entry was made from (and of what else it depends on), and what
was learnt from them. An entry is used only while every one of those files still has the same
inode, size, mtime and ctime, so an edit by hand, a run elsewhere or a sync from a remote host is
seen. A file whose ctime is less than `YOUNG` seconds old is not trusted to the cache: the clock
that stamps files ticks coarsely, and a second change within one tick would keep the signature.
A run adds what it wrote itself through a `Journal`, merged into the index by the next reading.

It is only a cache. A missing, unreadable or foreign index is ignored and made again; writing it
can fail (a read-only tree) without changing what any command prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

NAME = ".mlrunner-index"
VERSION = 1
YOUNG = 2.0  # seconds

Signature = Tuple[int, int, int, int]
_NOTHING: Signature = (0, 0, 0, 0)


def signature(path: str) -> Signature:
    """(inode, size, mtime, ctime) of `path`; zeros when there is nothing there."""
    try:
        info = os.stat(path)
    except OSError:
        return _NOTHING
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class Index:
    """`<root>/.mlrunner-index.<section>`: name -> (digest, value). The digest covers the
    signatures of the files the value was read from and whatever else it depends on."""

    def __init__(self, root: str, section: str):
        self.path = os.path.join(root, f"{NAME}.{section}")
        self.entries: Dict[str, Any] = {}
        try:
            with open(self.path, "rb") as stream:
                loaded = json.loads(stream.read())
            if isinstance(loaded, dict) and loaded.get("version") == VERSION and isinstance(loaded.get("entries"), dict):
                self.entries = loaded["entries"]
        except (OSError, ValueError):
            pass
        self._fresh: Dict[str, Any] = {}  # entries made by this process, kept by `save`
        self._journal = self.path + ".journal"
        self._fresh.update(_journal_entries(self._journal))
        self.entries.update(self._fresh)
        self._oldest_young = (time.time() - YOUNG) * 1e9

    @staticmethod
    def inputs(*parts: Any) -> str:
        """A digest of what a value depends on besides its files (made of str, int, float, tuple)."""
        return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()

    @staticmethod
    def digest(signatures: Sequence[Signature], inputs: str) -> str:
        """The key of a value: its files' signatures and `inputs`. The hash of a tuple of ints is
        the same in every process of one Python version (a str's is not)."""
        return f"{hash(tuple(signatures)) & 0xFFFFFFFFFFFFFFFF:x}-{inputs}"

    def get(self, name: str, digest: str) -> Any:
        """The value kept for `name` under this digest; None when there is none."""
        entry = self.entries.get(name)
        if type(entry) is list and len(entry) == 2 and entry[0] == digest:
            return entry[1]
        return None

    def put(self, name: str, digest: str, signatures: Sequence[Signature], value: Any) -> None:
        """Keep `value` unless one of its files is too young to be told apart from its next change,
        or it would not read back the same from JSON (a tuple, an int key, a date)."""
        if any(s[3] >= self._oldest_young for s in signatures):
            return
        try:
            if json.loads(json.dumps(value)) != value:
                return
        except (TypeError, ValueError):
            return
        self._fresh[name] = [digest, value]

    def save(self, gone: Callable[[str], bool]) -> None:
        """Write the index with this process's new entries, less those of experiments that are
        `gone`, atomically; a failure is ignored."""
        if not self._fresh:
            return
        self.entries.update(self._fresh)
        self.entries = {name: entry for name, entry in self.entries.items() if not gone(name)}
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as stream:
                stream.write(json.dumps({"version": VERSION, "entries": self.entries}, separators=(",", ":")))
            os.replace(temporary, self.path)
            if os.path.exists(self._journal):
                os.unlink(self._journal)  # in the index now; lines a run adds meanwhile are lost: a cache
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        self._fresh = {}


def _journal_entries(path: str) -> Dict[str, Any]:
    """The entries a run appended to the journal (later lines win); a torn or foreign line is skipped."""
    entries: Dict[str, Any] = {}
    try:
        with open(path, "rb") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return entries
    for line in lines:
        try:
            name, digest, value = json.loads(line)
        except (ValueError, TypeError):
            continue
        if isinstance(name, str) and isinstance(digest, str):
            entries[name] = [digest, value]
    return entries


class Journal:
    """Entries a run adds as its tasks end, from what it wrote itself rather than from a reading:
    one line each, appended to `<root>/.mlrunner-index.<section>.journal`, which the next reading
    merges into the index. The young-file rule does not apply to them: the run wrote the file and
    knows what it holds; only another program rewriting it in place, to the same size, within the
    same tick of the file clock (a few ms) would go unseen."""

    def __init__(self, root: str, section: str):
        self.path = os.path.join(root, f"{NAME}.{section}.journal")
        self._lock = threading.Lock()
        self._descriptor: Optional[int] = None

    def add(self, name: str, digest: str, value: Any) -> None:
        line = json.dumps([name, digest, value], separators=(",", ":")).encode() + b"\n"
        with self._lock:  # one write per line, O_APPEND: lines of two runs never interleave
            try:
                if self._descriptor is None:
                    self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(self._descriptor, line)
            except OSError:
                pass  # a cache: the next reading reads the records instead

    def close(self) -> None:
        with self._lock:
            if self._descriptor is not None:
                os.close(self._descriptor)
                self._descriptor = None
