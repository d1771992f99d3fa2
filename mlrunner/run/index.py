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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

NAME = ".mlrunner-index"
VERSION = 2  # 1: one JSON object per entry
YOUNG = 2.0  # seconds

Signature = Tuple[int, int, int, int]
Entry = Tuple[str, Any, Any]  # digest, shared, own
_NOTHING: Signature = (0, 0, 0, 0)


def signature(path: str) -> Signature:
    """(inode, size, mtime, ctime) of `path`; zeros when there is nothing there."""
    try:
        info = os.stat(path)
    except OSError:
        return _NOTHING
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class Index:
    """`<root>/.mlrunner-index.<section>`: name -> (digest, shared, own). The digest covers the
    signatures of the files the entry was read from and whatever else it depends on. `shared` is a
    value many entries have alike (an experiment's statuses), kept once in the file; `own` is the
    entry's own (its seconds, its metrics). The file is a few flat JSON lists, one per column, which
    read ten times faster than one object per entry."""

    def __init__(self, root: str, section: str):
        self.path = os.path.join(root, f"{NAME}.{section}")
        self._at: Dict[str, int] = {}  # name -> its row in the columns read from the file
        self._digests: List[Any] = []
        self._kinds: List[int] = []  # the row's shared value, as a position in _shared
        self._own: List[Any] = []
        self._shared: List[Any] = []
        try:
            with open(self.path, "rb") as stream:
                self._load(json.loads(stream.read()))
        except (OSError, ValueError, RecursionError):  # RecursionError: `[[[[…` nested past the limit
            pass
        self._journal = self.path + ".journal"
        self._fresh: Dict[str, Entry] = _journal_entries(self._journal)  # kept by `save`
        self._oldest_young = (time.time() - YOUNG) * 1e9

    def _load(self, loaded: Any) -> None:
        """Take the file's columns when they are what this version writes; else nothing."""
        if not isinstance(loaded, dict) or loaded.get("version") != VERSION:
            return
        columns = [loaded.get(key) for key in ("names", "digests", "kinds", "own", "shared")]
        if not all(type(column) is list for column in columns) or len({len(c) for c in columns[:4]}) != 1:
            return
        names, digests, kinds, own, shared = columns
        if not all(type(name) is str for name in names):
            return
        if kinds and not (all(type(k) is int for k in kinds) and 0 <= min(kinds) and max(kinds) < len(shared)):
            return
        self._at = dict(zip(names, range(len(names))))
        self._digests, self._kinds, self._own, self._shared = digests, kinds, own, shared

    @staticmethod
    def inputs(*parts: Any) -> str:
        """A digest of what a value depends on besides its files (made of str, int, float, tuple)."""
        return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()

    @staticmethod
    def digest(signatures: Sequence[Signature], inputs: str) -> str:
        """The key of a value: its files' signatures and `inputs`. The hash of a tuple of ints is
        the same in every process of one Python version (a str's is not)."""
        return f"{hash(tuple(signatures)) & 0xFFFFFFFFFFFFFFFF:x}-{inputs}"

    def get(self, name: str, digest: str) -> Optional[Tuple[Any, Any]]:
        """(shared, own) kept for `name` under this digest; None when there is none."""
        fresh = self._fresh.get(name)
        if fresh is not None:
            return fresh[1:] if fresh[0] == digest else None
        row = self._at.get(name)
        if row is None or self._digests[row] != digest:
            return None
        return self._shared[self._kinds[row]], self._own[row]

    def put(self, name: str, digest: str, signatures: Sequence[Signature], shared: Any, own: Any = None) -> None:
        """Keep an entry unless one of its files is too young to be told apart from its next change,
        or it would not read back the same from JSON (a tuple, an int key, a date)."""
        if any(s[3] >= self._oldest_young for s in signatures):
            return
        try:
            if json.loads(json.dumps([shared, own])) != [shared, own]:
                return
        except (TypeError, ValueError):
            return
        self._fresh[name] = (digest, shared, own)

    def save(self, gone: Callable[[str], bool]) -> None:
        """Write the index with this process's new entries, less those of experiments that are
        `gone`, atomically; a failure is ignored."""
        if not self._fresh:
            return
        names: List[str] = []
        digests: List[str] = []
        kinds: List[int] = []
        own: List[Any] = []
        shared: List[Any] = []
        known: Dict[str, int] = {}  # a shared value's JSON -> its position

        def kind(value: Any) -> int:
            text = json.dumps(value, sort_keys=True)
            if text not in known:
                known[text] = len(shared)
                shared.append(value)
            return known[text]

        renumbered: Dict[int, int] = {}
        for name, row in self._at.items():
            if name not in self._fresh and not gone(name):
                old = self._kinds[row]
                if old not in renumbered:
                    renumbered[old] = kind(self._shared[old])
                names.append(name)
                digests.append(self._digests[row])
                kinds.append(renumbered[old])
                own.append(self._own[row])
        for name, (digest, value, mine) in self._fresh.items():
            if not gone(name):
                names.append(name)
                digests.append(digest)
                kinds.append(kind(value))
                own.append(mine)
        columns = {"version": VERSION, "names": names, "digests": digests, "kinds": kinds, "own": own, "shared": shared}
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as stream:
                stream.write(json.dumps(columns, separators=(",", ":")))
            os.replace(temporary, self.path)
            if os.path.exists(self._journal):
                os.unlink(self._journal)  # in the index now; lines a run adds meanwhile are lost: a cache
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        self._load(columns)
        self._fresh = {}


def _journal_entries(path: str) -> Dict[str, Entry]:
    """The entries a run appended to the journal (later lines win); a torn or foreign line is skipped."""
    entries: Dict[str, Entry] = {}
    try:
        with open(path, "rb") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return entries
    for line in lines:
        try:
            name, digest, shared, own = json.loads(line)
        except (ValueError, TypeError, RecursionError):
            continue
        if isinstance(name, str) and isinstance(digest, str):
            entries[name] = (digest, shared, own)
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

    def add(self, name: str, digest: str, shared: Any, own: Any = None) -> None:
        line = json.dumps([name, digest, shared, own], separators=(",", ":")).encode() + b"\n"
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
