"""`--follow`: the running commands' logs as they grow, tagged `<experiment> <command>` (SPEC D4).

The commands print a numbered line every 0.2 s; one worker runs the experiments one after
another, so most commands start after `--follow` began and must be picked up as they start. The
`test` command ends in a flash (between two polls), with a progress-bar style carriage return.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import List

import pytest

from longrun import detach, kill_all_in, wait_until
from runlib import alive, run, start, write

TICK = """\
#!/bin/bash
for i in $(seq 1 "$2"); do echo "$1 line $i"; sleep 0.2; done
"""

CONFIG = """\
template:
  train: ./tick.sh {name} 6
  test: printf '%s half\\r%s tested\\r\\n' {name} {name}
default:
  name: a
resource: [0]
---
name: [a, b, c]
"""


@pytest.fixture
def tree(tmp_path: Path):
    tick = tmp_path / "tick.sh"
    tick.write_text(TICK)
    tick.chmod(0o755)
    write(tmp_path, CONFIG)
    yield tmp_path
    kill_all_in(tmp_path)


def first_line_logged(tree: Path) -> bool:
    return any("line 1" in log.read_text() for log in tree.glob("output/Name_a/log.train.*"))


def follow(tree: Path, *regex: str) -> subprocess.Popen:
    return start(["--follow", *regex], tree)


def expected(names: str) -> List[str]:
    lines = []
    for name in names:
        lines += [f"Name_{name} train {name} line {i}" for i in range(1, 7)] + [f"Name_{name} test {name} tested"]
    return lines


def by_command(lines: List[str]) -> List[str]:
    """Lines grouped per experiment and command, keeping each log's own order (logs interleave)."""
    return sorted(lines, key=lambda line: tuple(line.split()[:2]))


@pytest.mark.parametrize("detached, flags", [(True, []), (False, []), (True, ["--no-subdir"])],
                         ids=["detached", "another-terminal", "no-subdir"])
def test_d4_follow_shows_every_line_once_tagged_including_commands_that_start_later(tree: Path, detached: bool,
                                                                                    flags: List[str]):
    if detached:
        runner = None
        pid = detach(flags, tree)
    else:
        runner = start(flags, tree)
        pid = runner.pid
    logs = "output/log.train.*.Name_a" if flags else "output/Name_a/log.train.*"
    wait_until(lambda: any("line 1" in log.read_text() for log in tree.glob(logs)),
               what="the first command's first line")
    everything = follow(tree)
    only_b = follow(tree, "_b$")
    out, err = everything.communicate(timeout=60)
    out_b, err_b = only_b.communicate(timeout=60)
    if runner:
        runner.communicate(timeout=60)
    wait_until(lambda: not alive(pid), what="the run to end")

    assert everything.returncode == 0 and only_b.returncode == 0, err + err_b
    lines = out.splitlines()
    assert len(lines) == len(set(lines))  # every line once
    assert by_command(lines) == by_command(expected("abc"))
    assert out_b.splitlines() == expected("b")  # one command at a time: the log's own order


def test_d4_ctrl_c_ends_follow_with_130_and_no_traceback(tree: Path) -> None:
    write(tree, CONFIG.replace("6", "300"))
    pid = detach([], tree)
    wait_until(lambda: first_line_logged(tree), what="the first command's first line")
    follower = follow(tree)
    wait_until(lambda: follower.stdout.readline(), what="a followed line")
    follower.send_signal(signal.SIGINT)
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 130 and "Traceback" not in err
    assert alive(pid)  # following never touches the run
    code, _, _ = run(["--stop"], tree)
    assert code == 0 and not alive(pid)


def test_d4_follow_with_nothing_running_or_a_bad_regex(tree: Path) -> None:
    code, out, err = run(["--follow"], tree)
    assert (code, out) == (0, "") and err == "mlrunner: no run in progress on output; nothing to follow\n"
    code, out, err = run(["--follow", "Name_["], tree)
    assert code == 2 and out == "" and err.startswith("mlrunner: --follow: bad regular expression")
    assert err.count("\n") == 1
