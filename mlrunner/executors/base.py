"""The executor interface: local and remote workers fill the same few hooks (start, wait, signal).

The loop that waits, times out and ends a command's process tree is written once, here.
"""

from __future__ import annotations

import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional


class Process(ABC):
    """A started command: a shell and everything it spawned, in one process group."""

    @abstractmethod
    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """The exit status, or None if it is still running after `timeout` seconds."""

    @abstractmethod
    def signal(self, number: int) -> None:
        """Send a signal to the whole process group."""

    @abstractmethod
    def group_alive(self) -> bool:
        """Is any process of the group still running (the shell may be gone, a child not)?"""

    def end(self, grace: float) -> None:
        """SIGTERM the whole tree, then SIGKILL what is left after `grace` seconds (R8)."""
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        self.wait(grace)
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.signal(signal.SIGKILL)
        self.wait()


class Executor(ABC):
    """One worker's way to run a shell line with its GPUs."""

    label: str  # as shown after `gpu:` in console lines, e.g. "0" or "gpu1:0"
    host: str  # what `{_host}` renders to
    resource: str  # the CUDA_VISIBLE_DEVICES string

    @abstractmethod
    def prepare(self, directory: str) -> None:
        """Make sure the experiment's output directory exists where the command runs."""

    @abstractmethod
    def start(self, line: str, debug: bool = False) -> Process:
        """Start `line` under bash in its own process group."""


@dataclass
class Outcome:
    code: Optional[int]  # None when the command was ended (timeout or interrupt)
    seconds: float
    reason: Optional[str] = None  # why it failed, when the exit status does not say


def wait_for(process: Process, timeout: Optional[float], grace: float) -> Outcome:
    """Wait for a command; past `timeout` end its tree and report it as timed out."""
    started = time.monotonic()
    code = process.wait(timeout)
    if code is None:
        process.end(grace)
        return Outcome(None, time.monotonic() - started, f"timed out after {timeout:g}s")
    return Outcome(code, time.monotonic() - started, None if code == 0 else f"exit status {code}")
