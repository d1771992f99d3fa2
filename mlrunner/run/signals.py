"""Signals: a handler only records them; the run acts on them from its main thread (SPEC R8, R10, I3).

A handler that did the stopping itself (took the scheduler's lock, wrote to the console) could
deadlock with the code it interrupted, a second signal's handler included. Here the handler
appends the signal's number to a deque, and the interpreter writes a byte to a non-blocking
socket (`signal.set_wakeup_fd`), so a main thread waiting on that socket wakes at once.

`__main__` installs the recorder before it imports anything else, so a signal during planning is
seen too: the planning checks `checkpoint()`, the scheduler's main loop `Stopper.wait`. Modes
where Ctrl-C must raise KeyboardInterrupt as usual (--follow, --status, a Slurm --wait, the
foreground of --detach) `release` it.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Set

from ..errors import EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_BY_SIGNAL = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED, signal.SIGHUP: EXIT_HANGUP}
POLL = 0.1  # seconds between looks at the worker threads while no signal comes


class Interrupted(Exception):
    """A signal came before any command started: the run ends with nothing started."""

    def __init__(self, number: int):
        super().__init__(signal.Signals(number).name)
        self.number = number


class Recorder:
    """Records SIGINT, SIGTERM and SIGHUP; the main thread takes them with `take` or `wait`."""

    def __init__(self) -> None:
        self.received: Deque[int] = deque()
        self._reader: Optional[socket.socket] = None
        self._writer: Optional[socket.socket] = None
        self._previous: Dict[int, Any] = {}

    def _record(self, number: int, _frame: Any) -> None:
        self.received.append(number)  # all a handler does (R10): deque.append needs no lock

    def install(self) -> bool:
        """Record from now on (main thread only); False when it was already installed, or cannot be."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return False
        self._wakeup()
        self._previous = {number: signal.signal(number, self._record) for number in STOP_SIGNALS}
        return True

    def _wakeup(self) -> None:
        self._close()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)

    def _close(self) -> None:
        for end in (self._reader, self._writer):
            if end is not None:
                end.close()
        self._reader = self._writer = None

    def after_fork(self) -> None:
        """In a forked daemon: a wake-up socket of its own, not one shared with its parent."""
        if self._previous:
            self._wakeup()

    def release(self, quiet: bool = False) -> None:
        """Give the signals back to their earlier handlers, for modes that rely on KeyboardInterrupt.
        A signal recorded meanwhile is acted on now, unless `quiet`: SIGINT as KeyboardInterrupt,
        others as Interrupted."""
        if not self._previous:
            return
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
        signal.set_wakeup_fd(-1)
        self._close()
        pending = self.take()
        if pending and not quiet:
            raise KeyboardInterrupt if pending[0] == signal.SIGINT else Interrupted(pending[0])

    def take(self) -> List[int]:
        """The signals recorded since the last take, oldest first."""
        taken = []
        while self.received:
            taken.append(self.received.popleft())
        return taken

    def wait(self, timeout: float) -> None:
        """Sleep up to `timeout` seconds, or less: a signal wakes it at once."""
        if self.received:
            return
        if self._reader is None:
            threading.Event().wait(timeout)
            return
        select.select([self._reader], [], [], timeout)
        try:
            while self._reader.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def checkpoint(self) -> None:
        """Between planning steps: end the run here when a signal came (nothing has started yet)."""
        pending = self.take()
        if pending:
            if signal.SIGHUP in pending:
                quiet_console()
            raise Interrupted(pending[0])


RECORDER = Recorder()


def quiet_console() -> None:
    """The terminal closed (SIGHUP): the console goes to /dev/null, since writing to a hung-up
    terminal fails (I3)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for descriptor in (1, 2):
        if os.isatty(descriptor):
            os.dup2(devnull, descriptor)
    os.close(devnull)


class Stopper:
    """Ends a run's commands on the signals the recorder saw, from the main thread (R8, R10).

    The first SIGINT, SIGTERM or SIGHUP closes the pool and ends every running tree (SIGTERM, then
    SIGKILL after the grace), each in a thread of its own; a second SIGINT kills them at once. A
    command that starts after the stop began is ended as soon as it is known (`started`).
    """

    def __init__(self, grace: float, say: Callable[[str], None], close_pool: Callable[[], None],
                 recorder: Recorder = RECORDER):
        self.grace = grace
        self.say = say
        self.close_pool = close_pool
        self.recorder = recorder
        self.stopping = threading.Event()
        self.signal_number: Optional[int] = None
        self._killing = False
        self._lock = threading.Lock()  # the running set, shared by the workers and the main thread
        self._running: Set[Any] = set()
        self._enders: List[threading.Thread] = []

    def started(self, process: Any) -> None:
        """A worker started `process`; one that starts after a stop is ended at once."""
        with self._lock:
            self._running.add(process)
            stopping, killing = self.stopping.is_set(), self._killing
        if killing:
            process.signal(signal.SIGKILL)
        elif stopping:
            self._end_in_background(process)

    def ended(self, process: Any) -> None:
        with self._lock:
            self._running.discard(process)

    def wait(self, threads: Iterable[threading.Thread]) -> None:
        """Wait for `threads`, acting on every signal as it comes; then for the trees being ended."""
        threads = list(threads)
        while True:
            self.act()
            threads = [thread for thread in threads if thread.is_alive()]
            if not threads:
                with self._lock:
                    threads = [ender for ender in self._enders if ender.is_alive()]
                if not threads:
                    return
            self.recorder.wait(POLL)

    def act(self) -> None:
        """Do what the signals recorded since the last call ask for."""
        for number in self.recorder.take():
            self._on(number)

    def _on(self, number: int) -> None:
        if number == signal.SIGHUP:
            quiet_console()
        with self._lock:
            again = self.stopping.is_set()
            self.signal_number = self.signal_number or number
            self.stopping.set()
            kill_now = again and number == signal.SIGINT and not self._killing
            self._killing = self._killing or kill_now
            running = list(self._running)
        self.close_pool()
        if kill_now:
            for process in running:
                process.signal(signal.SIGKILL)
            self._say("Ctrl-C again: killing every running command now (SIGKILL)")
        elif not again:
            for process in running:
                self._end_in_background(process)
            self._announce(number, len(running))

    def _say(self, text: str) -> None:
        """Print, after the stopping work: a console that is gone (a closed pipe, a hung-up
        terminal) must not keep the trees from being ended."""
        try:
            self.say(text)
        except (OSError, ValueError):
            pass

    def _announce(self, number: int, running: int) -> None:
        name = signal.Signals(number).name
        if running:
            self._say(f"{name}: ending {running} running command(s): SIGTERM, then SIGKILL after {self.grace:g}s"
                     + ("; Ctrl-C again to kill them now" if number == signal.SIGINT else ""))
        else:
            self._say(f"{name}: stopping; no command is running")

    def _end_in_background(self, process: Any) -> None:
        ender = threading.Thread(target=process.end, args=(self.grace,), daemon=True)
        ender.start()
        with self._lock:
            self._enders.append(ender)
