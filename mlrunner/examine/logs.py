"""Reading a finished log for its metrics with bounded memory (SPEC T13, E6).

A log may be gigabytes, or one line of hundreds of megabytes (a progress bar that never ends
its line). It is read a chunk at a time, as whole lines: `\\n` and `\\r` end a line (a bar rewritten
in place is each of its states, as early_stop's watch reads it), and a line is looked at up to
`LINE_LIMIT` bytes, the rest of it is skipped. A value is found within one line.

A series (a metric with `step:`) is every value with the progress counter of its line,
kept to at most `MAX_POINTS` evenly spaced points while it is read, the last one always kept.
"""

from __future__ import annotations

import re
from collections import deque
from itertools import islice
from typing import Any, Iterator, List, Optional, Pattern, Tuple

from ..run.early_stop.watch import LINE_LIMIT, number

CHUNK = 1 << 20  # bytes read at a time
MAX_POINTS = 500  # of one series: a chart is a few hundred pixels wide
MAX_CHART_POINTS = 200_000  # of one chart of curves: 10^4 experiments stay a few MB
MIN_POINTS = 20


def points_per_curve(curves: int) -> int:
    """How many points each of `curves` curves in one chart keeps: 500, down to 20 at 10^4.

    >>> points_per_curve(3), points_per_curve(10_000), points_per_curve(10**6)
    (500, 20, 20)
    """
    return max(MIN_POINTS, min(MAX_POINTS, MAX_CHART_POINTS // max(curves, 1)))
_END = re.compile(rb"[\r\n]")


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
    when twice `size` are kept, every other one goes and the stride doubles. `due()` says which
    point is the next to keep, so that the others need not even be parsed.

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

    def due(self, index: int) -> int:
        """The first index from `index` (counted over the whole sequence) that is one to keep."""
        return index + -index % self.stride

    def keep(self, point: Tuple[float, float]) -> None:
        self.kept.append(point)
        self.last = point
        if len(self.kept) >= 2 * self.size:
            self.kept, self.stride = self.kept[::2], self.stride * 2

    def add(self, step: float, value: float) -> None:
        if self.due(self.seen) == self.seen:
            self.keep((step, value))
        else:
            self.last = (step, value)
        self.seen += 1

    def points(self) -> List[Tuple[float, float]]:
        kept = self.kept[::2] if len(self.kept) > self.size else list(self.kept)
        if self.last is not None and (not kept or kept[-1] is not self.last):
            kept = kept[:self.size - 1] + [self.last] if len(kept) >= self.size else kept + [self.last]
        return kept


def _first_on_line(value_re: Pattern[str]) -> Pattern[str]:
    """A regex that finds only the first value of each line (lines end in `\\n` here); the value is
    its group 2 when `value_re` has a group, else its group 1."""
    return re.compile(r"^[^\n]*?(" + value_re.pattern + ")", value_re.flags | re.MULTILINE)


def read_series(path: str, step_re: Pattern[str], value_re: Pattern[str],
                size: int = MAX_POINTS) -> List[Tuple[float, float]]:
    """(step, value) of every line with a value once a step is known, as early_stop reads them
    (`watch.parse_line`: a line's own step wins over the last one seen; the first value of a
    line), thinned to `size` points, in the log's order; non-numbers and NaN are left out.
    Only the points kept are parsed: 10^4 logs of 1000 steps are read in seconds."""
    thinned = Thinned(size)
    try:
        first, group = _first_on_line(value_re), 2 if value_re.groups else 1
    except re.error:  # inline flags in the middle of the user's regex: it cannot be wrapped
        first, group = value_re, 1 if value_re.groups else 0
    step: Optional[float] = None  # the counter of the lines read so far
    for block in blocks(path):
        block = block.replace("\r", "\n")
        looked_to = 0  # `step` is the counter of the lines before this offset

        def step_to(end: int) -> Optional[float]:
            """The step of the line that ends at `end`: its own counter, else the last one before."""
            nonlocal step, looked_to
            for counter in reversed(step_re.findall(block, looked_to, end)):  # strings: no match objects
                found = number(counter if isinstance(counter, str) else counter[0])
                if found is not None:
                    step = int(found) if found.is_integer() else found
                    break
            looked_to = max(looked_to, end)
            return step

        def point(found: Any) -> Optional[Tuple[float, float]]:
            line_end = block.find("\n", found.end())
            at, value = step_to(len(block) if line_end < 0 else line_end), number(found.group(group))
            return None if at is None or value is None else (at, value)

        # Only the values kept are made into points; the others are skipped inside islice (a list
        # of 10^7 match objects was most of the time).
        matches, base = first.finditer(block), thinned.seen
        consumed, unlooked = 0, None  # values read from the block; the last, when not looked at
        while True:
            target = thinned.due(base + consumed) - base
            skipped = deque(enumerate(islice(matches, target - consumed), consumed + 1), maxlen=1)
            if skipped:
                consumed, unlooked = skipped[0]
            found = next(matches, None)
            if found is None:
                break
            consumed, unlooked = consumed + 1, None
            kept = point(found)
            if kept is not None:
                thinned.keep(kept)
        thinned.seen = base + consumed
        if unlooked is not None:  # the block's last value
            thinned.last = point(unlooked) or thinned.last
        step_to(len(block))
    return thinned.points()
