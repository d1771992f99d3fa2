"""A cache of what an output tree's records said, so that a rerun, `--status` and `--examine` of
10^5 finished experiments read one file instead of 10^5 directories (issue 15).

`<output>/.mlrunner-index.<section>` (`review`, `examine`) is JSON: per experiment, a digest of
the signatures of the files an entry was made from (and of what else it depends on), and what
was learnt from them. An entry is used only while every one of those files still has the same
inode, size, mtime and ctime, so an edit by hand, a run elsewhere or a sync from a remote host is
seen. A file whose ctime is less than
`YOUNG` seconds old is not trusted to the cache: the clock that stamps files ticks coarsely, and a
second change within one tick would keep the signature.

It is only a cache. A missing, unreadable or foreign index is ignored and made again; writing it
can fail (a read-only tree) without changing what any command prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable, Dict, Sequence, Tuple

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
        self.entries = {name: entry for name, entry in self.entries.items() if not gone(name)}
        self.entries.update(self._fresh)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as stream:
                stream.write(json.dumps({"version": VERSION, "entries": self.entries}, separators=(",", ":")))
            os.replace(temporary, self.path)
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        self._fresh = {}
