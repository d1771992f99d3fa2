"""What the user sees while a run goes on: START/DONE/FAIL lines, a live status line, a summary (R3)."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO, List, Optional

STATUS_INTERVAL = 0.5
FLUSH_INTERVAL = 0.1  # not a terminal: lines go out in batches, at most this much later
CLEAR_LINE = "\r\x1b[K"


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Console:
    """Thread-safe console. On a terminal one status line stays at the bottom; elsewhere plain lines.

    The status line counts commands (the event lines number tasks), and is cut to the terminal's
    width, read again at every refresh: a line that wraps could not be erased by `\\r`, and every
    refresh would leave one more line behind. Elsewhere (a file, a pipe), inside `with`, lines
    are flushed by a thread every FLUSH_INTERVAL rather than one write(2) each.
    """

    def __init__(self, total: int, workers: int, stream: Optional[IO[str]] = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.total = total
        self.workers = max(workers, 1)
        self.done = self.failed = self.interrupted = self.running = 0
        self.seconds = 0.0  # total duration of the finished commands, for the ETA
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._unflushed = False

    def print(self, text: str) -> None:
        with self._lock:
            if self.live:
                self.stream.write(CLEAR_LINE)
            self.stream.write(text + "\n")
            if self.live and not self._stop.is_set():
                self.stream.write(self._status())
            if self.live or self._thread is None or self._stop.is_set():
                self.stream.flush()
            else:
                self._unflushed = True

    def started_command(self) -> None:
        with self._lock:
            self.running += 1

    def ended_command(self, status: str, seconds: float) -> None:
        """Count a command that ended with `status`: `finished`; `interrupted` or `lost` (its host),
        counted apart so that the status line agrees with the summary; anything else is a failure."""
        with self._lock:
            self.running -= 1
            if status == "finished":
                self.done += 1
                self.seconds += seconds
            elif status == "stopped":  # by the early_stop rule (A2): ended as planned
                self.done += 1
            elif status in ("interrupted", "lost"):
                self.interrupted += 1
            else:
                self.failed += 1

    def left(self) -> int:
        """Commands not started yet: neither ended nor running."""
        return max(self.total - self.done - self.failed - self.interrupted - self.running, 0)

    def _status(self) -> str:
        left = self.left()
        text = f"[commands done {self.done}/{self.total}, running {self.running}, failed {self.failed}"
        if self.interrupted:
            text += f", interrupted {self.interrupted}"
        text += f", left {left}, elapsed {clock(time.monotonic() - self.started)}"
        if self.done and left + self.running:
            text += f", ETA {clock(self.seconds / self.done * (left + self.running) / self.workers)}"
        return fit(text + "]", self._width())

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80

    def _refresh(self) -> None:
        while not self._stop.wait(STATUS_INTERVAL):
            with self._lock:
                if not self._stop.is_set():
                    self.stream.write(CLEAR_LINE + self._status())
                    self.stream.flush()

    def _flush(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            with self._lock:
                if self._unflushed:
                    self._unflushed = False
                    self.stream.flush()

    def __enter__(self) -> "Console":
        self._thread = threading.Thread(target=self._refresh if self.live else self._flush, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stop.set()
            if self.live:
                self.stream.write(CLEAR_LINE)
            self.stream.flush()
        if self._thread:
            self._thread.join()


def fit(text: str, columns: int) -> str:
    """Cut to one column less than the terminal: writing the last column makes some terminals wrap.
    A terminal that does not say its width (0 columns: a pty nobody sized) counts as 80."""
    return text[:max((columns if columns > 1 else 80) - 1, 1)]


def log_tail(path: Optional[str], count: int = 5) -> List[str]:
    """The last non-blank lines of a log (its last 8 KiB), to show with a failure."""
    if not path:
        return []
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(stream.tell() - 8192, 0))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-count:]
