"""Reading a finished log for its metrics with bounded memory (SPEC T13, E6).

A log may be gigabytes, or one line of hundreds of megabytes (a progress bar that never ends
its line). It is read a chunk at a time, as whole lines: `\\n` and `\\r` end a line (a bar rewritten
in place is each of its states, as early_stop's watch reads it), and a line is looked at up to
`LINE_LIMIT` bytes, the rest of it is skipped. A value is found within one line.

A series (a metric with `step:`) is every value with the progress counter of its line,
kept to at most `MAX_POINTS` evenly spaced points while it is read, the last one always kept.
"""

from __future__ import annotations

import bisect
import re
from typing import Iterator, List, Optional, Pattern, Tuple

from ..early_stop.watch import LINE_LIMIT, number

CHUNK = 1 << 20  # bytes read at a time
MAX_POINTS = 500  # of one series: a chart is a few hundred pixels wide
_END = re.compile(rb"[\r\n]")
_TEXT_END = re.compile(r"[\r\n]")


def blocks(path: str, limit: int = LINE_LIMIT, chunk: int = CHUNK) -> Iterator[str]:
    """The log as text blocks of whole lines, each line cut at `limit` bytes; nothing when it is
    missing. Memory: one chunk and one cut line.

    >>> import tempfile
    >>> path = tempfile.mktemp()
    >>> _ = open(path, "w").write("a" * 10 + "\\nloss 1\\rloss 2\\n" + "b" * 9 + "end")
    >>> [block.splitlines() for block in blocks(path, limit=6, chunk=8)]
    [['aaaaaa'], ['loss 1'], ['loss 2'], ['bbbbbb']]
    """
    partial, skipping = b"", False  # skipping: the rest of a line already cut at `limit`
    try:
        stream = open(path, "rb")
    except OSError:
        return
    with stream:
        while True:
            data = stream.read(chunk)
            if not data:
                break
            if skipping:
                end = _first_end(data)
                if end < 0:
                    continue
                data, skipping = data[end:], False
            last = max(data.rfind(b"\n"), data.rfind(b"\r"))
            head, partial = (partial + data[:last + 1], data[last + 1:]) if last >= 0 else (b"", partial + data)
            if len(partial) > limit:
                partial, skipping = partial[:limit], True
            if head:
                yield _cut(head, limit).decode("utf-8", "replace")
    if partial:
        yield partial.decode("utf-8", "replace")


def _first_end(data: bytes) -> int:
    """Where the first `\\n` or `\\r` of `data` is, -1 when there is none (`bytes.find`: a regex
    is ten times slower on the rest of a long line)."""
    ends = [at for at in (data.find(b"\n"), data.find(b"\r")) if at >= 0]
    return min(ends) if ends else -1


def _cut(block: bytes, limit: int) -> bytes:
    """`block` with each of its lines cut at `limit` bytes (most blocks have no long line)."""
    if len(block) <= limit or all(len(line) <= limit for line in _END.split(block)):
        return block
    return b"\n".join(line[:limit] for line in _END.split(block))


def last_match(path: str, pattern: Pattern[str]) -> Optional[str]:
    """The first group (the whole match without one) of the last match of `pattern` in the log."""
    value = None
    for block in blocks(path):
        last = None
        for last in pattern.finditer(block):
            pass
        if last is not None:
            value = last.group(1) if pattern.groups else last.group(0)
    return value


class Thinned:
    """At most `size` evenly spaced points of a sequence of unknown length, and its last one:
    when twice `size` are kept, every other one goes and the stride doubles.

    >>> kept = Thinned(4)
    >>> for i in range(20):
    ...     kept.add(i, i)
    >>> [step for step, _ in kept.points()]
    [0, 8, 16, 19]
    """

    def __init__(self, size: int = MAX_POINTS):
        self.size = size
        self.stride = 1
        self.seen = 0
        self.kept: List[Tuple[float, float]] = []
        self.last: Optional[Tuple[float, float]] = None

    def add(self, step: float, value: float) -> None:
        self.last = (step, value)
        if self.seen % self.stride == 0:
            self.kept.append(self.last)
            if len(self.kept) >= 2 * self.size:
                self.kept, self.stride = self.kept[::2], self.stride * 2
        self.seen += 1

    def points(self) -> List[Tuple[float, float]]:
        kept = self.kept[::2] if len(self.kept) > self.size else list(self.kept)
        if self.last is not None and (not kept or kept[-1] is not self.last):
            kept = kept[:self.size - 1] + [self.last] if len(kept) >= self.size else kept + [self.last]
        return kept


def read_series(path: str, step_re: Pattern[str], value_re: Pattern[str],
                size: int = MAX_POINTS) -> List[Tuple[float, float]]:
    """(step, value) of every line with a value once a step is known, as early_stop reads them
    (`watch.parse_line`: a line's own step wins over the last one seen; the first value of a
    line), thinned to `size` points, in the log's order; non-numbers and NaN are left out."""
    thinned = Thinned(size)
    step: Optional[float] = None  # the counter the lines before this block ended with
    for block in blocks(path):
        starts, known = [], []  # each counter's position, and the step once its line is read
        for found in step_re.finditer(block):
            counter = number(found.group(1))
            starts.append(found.start())
            known.append((known[-1] if known else step) if counter is None
                         else int(counter) if counter.is_integer() else counter)
        line_end = -1
        for found in value_re.finditer(block):
            if found.start() < line_end:
                continue  # a second value on the line
            end = _TEXT_END.search(block, found.end())
            line_end = end.start() if end else len(block)
            at = bisect.bisect_left(starts, line_end)  # the counters before this line's end
            now = known[at - 1] if at else step
            value = number(found.group(1) if value_re.groups else found.group(0))
            if now is not None and value is not None:
                thinned.add(now, value)
        step = known[-1] if known else step
    return thinned.points()
