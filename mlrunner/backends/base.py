"""The executor interface: local and remote workers fill the same few hooks (start, wait, signal).

The loop that waits, times out and ends a command's process tree is written once, here.
"""

from __future__ import annotations

import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Optional, Protocol, Tuple

from .sync import Scope


class HostLost(Exception):
    """The connection to a remote host broke while a command ran or was being started (H6)."""


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

    def follow_log(self, log: str, step_re: Any, value_re: Any) -> Any:
        """Where the log is written on another machine: an object whose `poll(final)` gives the new
        (step, value) pairs its host reads there (A2); None: the log is here, read it here."""
        return None

    def release(self) -> None:
        """Let the command run, now that the runner has recorded it (I3); a no-op where it already
        runs (a host's agent ends what it started when the runner goes away)."""

    def end(self, grace: float) -> None:
        """SIGTERM the whole tree, then SIGKILL what is left after `grace` seconds (R8)."""
        try:
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            self.wait(grace)
            while self.group_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.signal(signal.SIGKILL)
            self.wait()
        except HostLost:
            pass  # the host's agent ends what it ran when its connection closes


class Claims(Protocol):
    """A machine's shared claim directory (G4): `claims.ClaimDir` here, the agent's for a remote host."""

    def locked(self) -> ContextManager[None]: ...
    def claims(self) -> List[Dict[str, Any]]: ...
    def add(self, claim: Dict[str, Any]) -> str: ...
    def attach(self, path: str, sid: int) -> None: ...
    def remove(self, path: str) -> None: ...


class Machine(ABC):
    """Where commands run, as the `gpu:` policy sees it (G2-G6): its `nvidia-smi`, the sessions of its
    processes, and the claim directory every mlrunner there shares. This machine, or a remote host."""

    name: str  # "localhost", or the host as the user wrote it

    @abstractmethod
    def query(self, argv: List[str]) -> Tuple[int, str, str]:
        """Run `nvidia-smi` there: (status, stdout, stderr); a failure is a status, never an exception."""

    @abstractmethod
    def sessions(self, pids: List[int]) -> Dict[int, Optional[int]]:
        """The session of each process there; None for one that is gone. HostLost when the host is."""

    @abstractmethod
    def claim_dir(self) -> Claims:
        """The machine's claim directory, as seen from this runner (one object per run)."""

    def ready(self, finished: Callable[[], bool]) -> bool:
        """Wait until commands can start there; False when they never will (H6)."""
        return True


class Executor(ABC):
    """One worker's way to run a shell line with its GPUs."""

    label: str  # its place's name, "0", "cpu" or "gpu1:0": its worker slots are named from it (slots.py)
    host: str  # what `{_host}` renders to
    resource: str  # the CUDA_VISIBLE_DEVICES string
    machine: Machine  # where it runs

    @abstractmethod
    def prepare(self, directory: str) -> None:
        """Make sure the experiment's output directory exists where the command runs."""

    @abstractmethod
    def start(self, line: str, debug: bool = False) -> Process:
        """Start `line` under bash in its own process group."""

    def collect(self, directory: str, scope: Optional[Scope] = None) -> None:
        """Bring the experiment's files (those `scope` says are its) to the local output tree after a
        command (H5); raises when they did not all come (HostLost when the host went away)."""

    def close(self) -> None:
        """Release what the executor holds (a remote connection) when the run ends."""


@dataclass
class Outcome:
    code: Optional[int]  # None when the command was ended (timeout, interrupt, host lost)
    seconds: float
    reason: Optional[str] = None  # why it failed, when the exit status does not say
    lost: bool = False  # the host went away: the task goes back to the pool


def wait_for(process: Process, timeout: Optional[float], grace: float) -> Outcome:
    """Wait for a command; past `timeout` end its tree and report it as timed out."""
    started = time.monotonic()
    try:
        code = process.wait(timeout)
    except HostLost as error:
        return Outcome(None, time.monotonic() - started, f"host {error} lost", lost=True)
    if code is None:
        process.end(grace)
        return Outcome(None, time.monotonic() - started, f"timed out after {timeout:g}s")
    return Outcome(code, time.monotonic() - started, None if code == 0 else f"exit status {code}")
