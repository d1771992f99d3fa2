"""`--follow` and progress bars redrawn with carriage returns (SPEC T8).

A real bash command draws a tqdm-like bar (`\\rstep  7/30 ...`, no newline until the end) while
`--follow` reads its log: piped, each state it shows is a line, a few a second, the final state
once; on a terminal (a real pty) the bar is redrawn in place, cut to the terminal's width.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import List, Tuple

import pytest

from longrun import kill_all_in, wait_until
from mlrunner.view.follow import PROGRESS_RATE, Follower, Tail
from runlib import environment, start, write

BAR = """\
#!/bin/bash
for i in $(seq 1 "$1"); do printf '\\rstep %2d/%d%s' "$i" "$1" "$2"; sleep "$3"; done
printf '\\n'
echo after
"""

STEPS = 30
STATE = re.compile(r"^Name_a train step +(\d+)/30(\.*)$")


@pytest.fixture
def tree(tmp_path: Path):
    bar = tmp_path / "bar.sh"
    bar.write_text(BAR)
    bar.chmod(0o755)
    yield tmp_path
    kill_all_in(tmp_path)


def _start_bar(tree: Path, pad: int = 0, pause: float = 0.1) -> subprocess.Popen:
    """A run whose one command draws the bar; returns once the bar has begun."""
    write(tree, f"template:\n  train: ./bar.sh {STEPS} '{'.' * pad}' {pause}\nresource: ['']\n---\nname: a\n")
    runner = start([], tree)
    wait_until(lambda: any("step" in log.read_text() for log in tree.glob("output/Name_a/log.train.*")),
               what="the bar's first state")
    return runner


def test_t8_piped_each_state_shown_is_a_line_while_it_runs_and_the_final_state_once(tree: Path):
    runner = _start_bar(tree)
    follower = start(["--follow"], tree)
    seen: List[Tuple[float, str]] = []
    for line in follower.stdout:
        seen.append((time.monotonic(), line.rstrip("\n")))
    follower.wait(timeout=60)
    runner.communicate(timeout=60)
    assert follower.returncode == 0, follower.stderr.read()
    lines = [text for _, text in seen]
    assert lines[-1] == "Name_a train after", lines
    states = [int(STATE.match(text).group(1)) for text in lines[:-1]]  # every other line is a bar state
    assert states[-1] == STEPS and states == sorted(set(states)), lines  # in order; the final state once
    assert len(states) >= 4, f"the bar was shown only {len(states)} times in 3 s: {lines}"
    assert seen[-2][0] - seen[0][0] >= 1.0, "states came while the bar ran, not all at its newline"
    assert len(states) <= 3 * PROGRESS_RATE + 2  # 30 states in 3 s: at most a few a second


def test_t8_on_a_terminal_the_bar_is_redrawn_in_place_and_cut_to_its_width(tree: Path):
    runner = _start_bar(tree, pad=80)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
    follower = subprocess.Popen([sys.executable, "-m", "mlrunner", "--follow"], cwd=tree, env=environment(),
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:  # the pty's other end closed
            chunk = b""
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    follower.wait(timeout=30)
    runner.communicate(timeout=60)
    text = b"".join(chunks).decode()
    assert follower.returncode == 0, follower.stderr.read()
    drawn = [part for part in text.split("\r\x1b[K") if part]
    redrawn = [part for part in drawn if not part.endswith("\n")]  # the bar's states, each in place
    assert len({part for part in redrawn}) >= 4, drawn
    assert all(len(part) <= 49 for part in redrawn), "a redrawn line must not wrap"
    assert all(STATE.match(part[:49]) or part.startswith("Name_a train step ") for part in redrawn)
    final = [part for part in drawn if part.endswith("\n")]
    assert final == [f"Name_a train step 30/30{'.' * 80}\r\nName_a train after\r\n"], final


def _read_pty(master: int, until, timeout: float = 30) -> bytes:
    """What the pty shows, until `until(text so far)` or the other end closes."""
    chunks: List[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(b"".join(chunks)):
        ready, _, _ = select.select([master], [], [], 0.5)
        try:
            chunk = os.read(master, 65536) if ready else None
        except OSError:  # the pty's other end closed
            break
        if chunk == b"":
            break
        chunks.append(chunk or b"")
    return b"".join(chunks)


def test_t8_ctrl_c_on_a_terminal_ends_the_redrawn_line(tree: Path):
    """Ctrl-C while a bar is drawn: exit 130, and the shell's prompt gets a line of its own."""
    runner = _start_bar(tree, pause=0.5)
    master, slave = pty.openpty()
    follower = subprocess.Popen([sys.executable, "-m", "mlrunner", "--follow"], cwd=tree, env=environment(),
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    shown = _read_pty(master, lambda text: text.count(b"train step") >= 2)
    assert shown.count(b"train step") >= 2, shown
    follower.send_signal(signal.SIGINT)
    follower.wait(timeout=30)
    shown += _read_pty(master, lambda text: False, timeout=2)
    os.close(master)
    runner.send_signal(signal.SIGINT)
    runner.communicate(timeout=60)
    assert follower.returncode == 130 and b"Traceback" not in follower.stderr.read()
    assert shown.endswith(b"\r\n") and not shown.endswith(b"\r\n\r\n"), shown[-200:]


def _follower_of(log: Path) -> Tuple[Follower, io.BytesIO]:
    out = io.BytesIO()
    follower = Follower(str(log.parent), None, out)
    follower.tails[str(log)] = Tail(b"x train ", str(log.parent / "stat"))
    return follower, out


def test_t8_at_most_progress_rate_states_a_second(tmp_path: Path):
    """A bar redrawn at every look for 1 s: a few of its states are shown, not each one."""
    log = tmp_path / "log.train.1"
    log.write_bytes(b"")
    follower, out = _follower_of(log)
    began, step = time.monotonic(), 0
    while time.monotonic() - began < 1.0:
        step += 1
        with open(log, "ab") as stream:
            stream.write(b"\rstep %d" % step)
        follower.show()
    lines = out.getvalue().decode().splitlines()
    assert step > 50 and 2 <= len(lines) <= PROGRESS_RATE + 1, (step, lines)
    assert lines[0] == "x train step 1" and all(line.startswith("x train step ") for line in lines)


def test_t8_a_bar_that_never_ends_its_line_stays_one_state(tmp_path: Path):
    """10^5 states without a newline (700 kB) are one state, never a 64 KiB "line" of them."""
    log = tmp_path / "log.train.1"
    log.write_bytes(b"".join(b"\r%06d" % i for i in range(100_000)))
    follower, out = _follower_of(log)
    follower.show()
    assert out.getvalue() == b"x train 099999\n"
    with open(log, "ab") as stream:
        stream.write(b"\r100000 done\n")
    follower.show()
    assert out.getvalue() == b"x train 099999\nx train 100000 done\n"
    assert len(follower.tails[str(log)].partial) == 0
