"""Read a growing log incrementally into (step, value) pairs (SPEC A1).

It also runs on a remote host, inside the agent (backends/agent.py), to read a log where it is
written: Python >= 3.6, standard library only, no relative import.

Only new bytes are read at each poll; a line is cut at `LINE_LIMIT` bytes, so memory stays bounded
whatever the command prints; `\\r` ends a line as `\\n` does, so a progress bar rewritten in
place is read as each of its states.
"""

import os
from typing import List, Optional, Pattern, Tuple

LINE_LIMIT = 64 * 1024  # bytes of one line that are looked at
CHUNK = 1 << 20  # bytes read at most per poll


def number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # not NaN


def parse_line(line: str, step_re: Pattern[str], value_re: Pattern[str],
               step: Optional[float]) -> Tuple[Optional[float], Optional[float]]:
    """(the step now, the value on this line or None): a line's own step wins over the last one seen.

    >>> import re
    >>> step_re, value_re = re.compile(r"epoch (\\d+)"), re.compile(r"val_loss ([\\d.]+)")
    >>> parse_line("epoch 3 val_loss 0.25", step_re, value_re, 2)
    (3, 0.25)
    >>> parse_line("val_loss 0.5", step_re, value_re, 4.0), parse_line("val_loss 0.5", step_re, value_re, None)
    ((4.0, 0.5), (None, None))
    """
    found = step_re.search(line)
    counter = number(found.group(1)) if found is not None else None
    if counter is not None:
        step = int(counter) if counter.is_integer() else counter
    if step is None:
        return None, None
    value = value_re.search(line)
    if value is None:
        return step, None
    return step, number(value.group(1) if value_re.groups else value.group(0))


class LogWatch:
    """One log, read from where the last poll stopped.

    >>> import re, tempfile
    >>> path = tempfile.mktemp()
    >>> watch = LogWatch(path, re.compile(r"epoch (\\d+)"), re.compile(r"loss ([\\d.]+)"))
    >>> watch.poll()
    []
    >>> _ = open(path, "w").write("epoch 1 [==  ]\\repoch 1 loss 0.9\\nepoch 2 loss 0.")
    >>> watch.poll()
    [(1, 0.9)]
    >>> _ = open(path, "a").write("7\\n")
    >>> watch.poll()
    [(2, 0.7)]
    """

    def __init__(self, path: str, step_re: Pattern[str], value_re: Pattern[str]):
        self.path = path
        self.step_re = step_re
        self.value_re = value_re
        self.offset = 0
        self.partial = b""  # the line not ended yet, at most LINE_LIMIT bytes of it
        self.step: Optional[float] = None

    def poll(self, final: bool = False) -> List[Tuple[float, float]]:
        """The (step, value) pairs of the lines ended since the last poll (`final`: the last line too)."""
        pairs: List[Tuple[float, float]] = []
        while True:  # one chunk, or with `final` every chunk to the end: the command has ended
            data = self._read()
            lines = (self.partial + data).replace(b"\r", b"\n").split(b"\n")
            self.partial = lines.pop()[:LINE_LIMIT]
            if final and not data and self.partial:
                lines.append(self.partial)
                self.partial = b""
            for raw in lines:
                self.step, value = parse_line(raw[:LINE_LIMIT].decode("utf-8", "replace"), self.step_re,
                                              self.value_re, self.step)
                if value is not None:
                    pairs.append((self.step, value))
            if not (final and data):
                return pairs

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self.offset)
                data = stream.read(CHUNK)
        except OSError:
            return b""
        self.offset += len(data)
        return data


def read_all(path: str, step_re: Pattern[str], value_re: Pattern[str]) -> List[Tuple[float, float]]:
    """Every (step, value) of a log that has ended."""
    if not os.path.exists(path):
        return []
    return LogWatch(path, step_re, value_re).poll(final=True)
