"""What the user sees while a run goes on: START/DONE/FAIL lines, a live status line, a summary (R3)."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Optional

STATUS_INTERVAL = 0.5


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Console:
    """Thread-safe console. On a terminal one status line stays at the bottom; elsewhere plain lines."""

    def __init__(self, total: int, workers: int, stream: Optional[IO[str]] = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.total = total
        self.workers = max(workers, 1)
        self.done = self.failed = self.running = 0
        self.seconds = 0.0  # total duration of the finished commands, for the ETA
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def print(self, text: str) -> None:
        with self._lock:
            if self.live:
                self.stream.write("\r\x1b[K")
            self.stream.write(text + "\n")
            if self.live:
                self.stream.write(self._status())
            self.stream.flush()

    def started_command(self) -> None:
        with self._lock:
            self.running += 1

    def ended_command(self, ok: bool, seconds: float) -> None:
        with self._lock:
            self.running -= 1
            if ok:
                self.done += 1
                self.seconds += seconds
            else:
                self.failed += 1

    def _status(self) -> str:
        elapsed = time.monotonic() - self.started
        left = max(self.total - self.done - self.failed, 0)
        text = (f"[done {self.done}/{self.total}, running {self.running}, failed {self.failed}, "
                f"left {left}, elapsed {clock(elapsed)}")
        if self.done and left:
            text += f", ETA {clock(self.seconds / self.done * left / self.workers)}"
        return text + "]"

    def _refresh(self) -> None:
        while not self._stop.wait(STATUS_INTERVAL):
            with self._lock:
                self.stream.write("\r\x1b[K" + self._status())
                self.stream.flush()

    def __enter__(self) -> "Console":
        if self.live:
            self._thread = threading.Thread(target=self._refresh, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
            with self._lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
