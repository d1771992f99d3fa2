"""`--follow [REGEX]`: the running commands' logs as they grow, tagged like `parallel --tag` (SPEC D4).

The `stat` files say which commands run and (`_runs[cmd][-1].log`) which log they write; older
records have no `log`, and then the newest `log.<cmd>.*` written since the command started is
taken. A log already running when following begins starts at its last lines, as `tail -f` does;
a command that starts later is shown from its first line, each line once. Following ends when no
run is in progress on the tree any more, after the last lines are shown, or on Ctrl-C.

A line that a progress bar rewrites with carriage returns is shown as it changes, at most
PROGRESS_RATE times a second per command (T8): on a terminal in one line at the bottom, redrawn
in place; elsewhere each state shown is a line of its own. Its final state (when the newline
comes) is printed once.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import IO, Any, Dict, Iterator, Optional, Set, Tuple

from ..run.console import CLEAR_LINE, fit
from ..errors import EXIT_OK, UserError
from ..run.runs import live_runs
from ..run.state import RUNNING, RUNS, STAT, Corrupt, read_record, runs_of

POLL = 0.2
FULL_SCAN = 2.0  # every experiment's record, for commands that started; in between only running ones
FIRST_LINES = 10  # of a log that was already running when following began
LONGEST_LINE = 65536  # a longer run of bytes without a newline is shown as it is
PROGRESS_RATE = 4  # most states of one command's redrawn line shown per second


@dataclass
class Tail:
    """One followed log: where we are in it and the line not ended yet."""

    tag: bytes
    stat: str  # the record that says whether its command still runs
    position: int = 0
    partial: bytes = b""
    ended: bool = False  # its command ended: show the rest, then forget it
    state: bytes = b""  # the state of its redrawn line shown last, until the newline comes (T8)
    shown_at: float = -1e9  # when (time.monotonic) that state was shown


def _start_time(run: Dict[str, Any]) -> Optional[float]:
    if isinstance(run.get("start"), (int, float)):
        return float(run["start"])
    try:  # the older `started: 2026-11-28 04:50:01`, local time
        return time.mktime(time.strptime(str(run.get("started")), "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None


def _mentions_running(path: str) -> bool:
    """A cheap test before parsing: a record without the word has no running command."""
    with open(path, "rb") as stream:
        return RUNNING.encode() in stream.read()


def _as_shown(line: bytes) -> bytes:
    """What a terminal shows of a line that progress bars rewrote with carriage returns."""
    line = line.rstrip(b"\r")
    return line[line.rfind(b"\r") + 1:]


def _redrawn(partial: bytes) -> bytes:
    """A line not ended yet, cut to what the next carriage return can still show: a progress bar
    that redraws for hours without a newline keeps one state, not all of them."""
    cut = partial.rfind(b"\r", 0, len(partial.rstrip(b"\r")))
    return partial[cut:] if cut > 0 else partial


def _last_lines_offset(path: str, count: int) -> int:
    """Where the last `count` lines of a file begin."""
    with open(path, "rb") as stream:
        end = stream.seek(0, os.SEEK_END)
        start = max(0, end - LONGEST_LINE)
        stream.seek(start)
        data = stream.read()
    cut = len(data)
    for _ in range(count + (1 if data.endswith(b"\n") else 0)):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return start
    return start + cut + 1


class Follower:
    """Polls the `stat` files under one output root and prints what the followed logs add."""

    def __init__(self, output: str, pattern: Optional[re.Pattern], out: IO[bytes]):
        self.output = output
        self.pattern = pattern
        self.out = out
        self.began = time.time()
        self.unchanged_before = int((self.began - 1) * 1e9)  # a margin for coarse file system clocks
        self.tails: Dict[str, Tail] = {}
        self.done: Set[str] = set()  # logs followed to their end
        self.quiet: Dict[str, int] = {}  # stat path -> mtime seen, while none of its commands runs
        self.watched: Dict[str, str] = {}  # stat path -> experiment name, while one of its commands runs
        self.first = True
        self.terminal = out.isatty()
        self.live: Optional[Tail] = None  # on a terminal: whose redrawn line is at the bottom
        self.drawn = False  # that line is on the screen now

    def _stats(self) -> Iterator[Tuple[str, str]]:
        """(stat path, experiment name) of every experiment: `<name>/stat`, or `stat.<name>` (--no-subdir)."""
        try:
            with os.scandir(self.output) as entries:
                found = sorted((e.name, e.is_dir()) for e in entries)
        except FileNotFoundError:
            return
        for name, is_dir in found:
            if is_dir:
                yield os.path.join(self.output, name, STAT), name
            elif name.startswith(STAT + ".") and ".corrupt." not in name and not name.endswith(".tmp"):
                yield os.path.join(self.output, name), name[len(STAT) + 1:]

    def _logs(self, directory: str, stat: Dict[str, Any]) -> Iterator[Tuple[str, str, bool]]:
        """(command, log path, running) of the runs to show from one `stat`."""
        for command, status in stat.items():
            if command == RUNS:
                continue
            runs = runs_of(stat, command)
            for run in runs:
                start = _start_time(run)
                running = status == RUNNING and run is runs[-1]
                if not running and (start is None or start < self.began):
                    continue  # ended before we began following
                log = self._log_path(directory, command, run, start)
                if log:
                    yield command, log, running

    @staticmethod
    def _log_path(directory: str, command: str, run: Dict[str, Any], start: Optional[float]) -> Optional[str]:
        if run.get("log"):  # recorded relative to where the run started: the file is in this directory
            return os.path.join(directory, os.path.basename(str(run["log"])))
        logs = glob.glob(os.path.join(glob.escape(directory), f"log.{glob.escape(command)}.*"))
        newest = max(logs, key=lambda p: os.stat(p).st_mtime, default=None) if logs else None
        if newest is None or (start is not None and os.stat(newest).st_mtime < start - 1):
            return None  # its log is not there yet (an older run's is): look again at the next poll
        return newest

    def scan(self, everything: bool = True, final: bool = False) -> None:
        """Find logs to follow; mark those whose command ended.

        Reading every record of a big tree costs; between full scans only the records with a
        running command are read. A command that starts and ends between two full scans is still
        shown whole at the next one: its run is recorded with its start time.
        """
        for path, name in self._stats() if everything else list(self.watched.items()):
            if self.pattern and not self.pattern.search(name):
                continue
            try:
                mtime = os.stat(path).st_mtime_ns
                if not final and self.quiet.get(path) == mtime:
                    continue
                if mtime < self.unchanged_before and not _mentions_running(path):
                    self.quiet[path] = mtime  # nothing ran there since we began: no need to parse it
                    continue
                stat = read_record(path)
            except (OSError, Corrupt):  # gone meanwhile, not a file, being set aside
                continue
            directory = os.path.dirname(path)
            active = {}
            for command, log, running in self._logs(directory, stat):
                active[log] = running
                if log not in self.tails and log not in self.done:
                    tag = f"{name} {command} ".encode()
                    tail = Tail(tag, path)
                    if self.first and running and os.path.exists(log):
                        tail.position = _last_lines_offset(log, FIRST_LINES)
                    self.tails[log] = tail
            for log, tail in self.tails.items():
                if tail.stat == path and not active.get(log, False):
                    tail.ended = True
            if RUNNING in stat.values():  # read again next time: a log may not be there yet
                self.quiet.pop(path, None)
                self.watched[path] = name
            else:
                self.quiet[path] = mtime
                self.watched.pop(path, None)
        self.first = False

    def show(self) -> None:
        """Print every followed log's new complete lines and the redrawn lines' new states; finish
        the logs whose command ended."""
        now = time.monotonic()
        for log, tail in list(self.tails.items()):
            try:
                with open(log, "rb") as stream:
                    stream.seek(tail.position)
                    data = stream.read()
            except FileNotFoundError:
                data = b""
            tail.position += len(data)
            lines = (tail.partial + data).split(b"\n")
            tail.partial = _redrawn(lines.pop())
            if len(tail.partial) > LONGEST_LINE:
                lines.append(tail.partial)
                tail.partial = b""
            if tail.ended:
                if tail.partial:
                    lines.append(tail.partial)
                    tail.partial = b""
                del self.tails[log]
                self.done.add(log)
            for line in lines:
                self._line(tail, _as_shown(line))
            state = _as_shown(tail.partial) if b"\r" in tail.partial else b""
            if state and state != tail.state and now - tail.shown_at >= 1 / PROGRESS_RATE:
                tail.state, tail.shown_at = state, now
                self._progress(tail)
        if self.terminal and self.live is not None and not self.drawn:
            self.out.write(CLEAR_LINE.encode() + self._cut(self.live.tag + self.live.state))
            self.drawn = True
        self.out.flush()

    def _line(self, tail: Tail, text: bytes) -> None:
        """A complete line; the final state of a redrawn line that was just shown is not repeated."""
        repeated = text == tail.state
        tail.state = b""
        if self.terminal:
            self._erase()
            if self.live is tail:
                self.live = None
        elif repeated:
            return
        self.out.write(tail.tag + text + b"\n")

    def _progress(self, tail: Tail) -> None:
        if self.terminal:
            self.live, self.drawn = tail, False  # drawn again, over the old, at the end of `show`
        else:
            self.out.write(tail.tag + tail.state + b"\n")

    def leave(self) -> None:
        """Ctrl-C: end the redrawn line, so that the shell's prompt starts on a line of its own."""
        if self.drawn:
            self.out.write(b"\n")
            self.out.flush()
            self.drawn = False

    def _erase(self) -> None:
        if self.drawn:
            self.out.write(CLEAR_LINE.encode())
            self.drawn = False

    def _cut(self, text: bytes) -> bytes:
        """Cut to the terminal's width: a line that wraps could not be redrawn in place."""
        try:
            columns = os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError):
            columns = 80
        return fit(text.decode("utf-8", "replace"), columns).encode()


def _in_progress(output: str) -> bool:
    """A local run, or a Slurm element still queued (asked at most once per few seconds, S2)."""
    from ..backends.slurm.watch import active
    return bool(live_runs(output)) or active(output)


def follow(output: str, regex: Optional[str]) -> int:
    """Follow the runs in progress on `output` until they end (D4); Ctrl-C ends it too (exit 130)."""
    try:
        pattern = re.compile(regex) if regex else None
    except re.error as error:
        raise UserError(f"--follow: bad regular expression {regex!r}: {error}")
    if not os.path.isdir(output) or not _in_progress(output):
        print(f"mlrunner: no run in progress on {output}; nothing to follow", file=sys.stderr)
        return EXIT_OK
    follower = Follower(output, pattern, sys.stdout.buffer)
    scanned = 0.0
    try:
        while _in_progress(output):
            everything = time.monotonic() - scanned >= FULL_SCAN
            scanned = time.monotonic() if everything else scanned
            follower.scan(everything)
            follower.show()
            time.sleep(POLL)
    except KeyboardInterrupt:
        follower.leave()
        raise
    follower.scan(final=True)
    for tail in follower.tails.values():  # a `running` left by a killed run ends here too
        tail.ended = True
    follower.show()
    return EXIT_OK
