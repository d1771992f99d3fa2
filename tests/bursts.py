"""One burst of SIGINT/SIGTERM/SIGHUP sent to a real run, and what it left (SPEC R8, R10).

Shared by tests/test_signal_bursts.py (a few bursts, in CI) and benchmarks/signals.py (many).
The run has real commands under bash: some ignore SIGTERM, some spawn children, and every one of
them carries a token in its environment, so any process the run left behind is found in /proc
whatever its pid or group.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parent.parent
NAMES = {signal.SIGINT: "INT", signal.SIGTERM: "TERM", signal.SIGHUP: "HUP"}
EXPECTED = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
# `warm` staggers the starts over about a second; `main` never ends by itself.
CONFIG = textwrap.dedent("""
    template:
      warm: sleep 0.{i}
      main: >-
        case {kind} in
        stubborn) trap '' TERM; sleep 100 & wait;;
        children) (sleep 100; echo never) & sleep 100 & wait;;
        *) sleep 100;;
        esac
    resource: [0, 1, 2]
    ---
    kind: [stubborn, children, plain]
    i: [1, 5, 9]
    """).lstrip()
STARTUP_FAILED = "Fatal Python error: init_import_site"  # Ctrl-C while the interpreter imports `site`
TOGETHER = 0.05  # seconds: signals this close may be handled in either order
LATEST = 1.2  # seconds after the runner's start: the last moment a burst may begin


@dataclass
class Burst:
    delay: float  # seconds after the runner's start
    signals: List[Tuple[int, float]]  # (signal, seconds after the previous one)

    @classmethod
    def draw(cls, rng: random.Random) -> "Burst":
        count = rng.randint(2, 5)
        return cls(rng.uniform(0, LATEST),
                   [(rng.choice(list(NAMES)), 0.0 if n == 0 else cls._gap(rng)) for n in range(count)])

    @staticmethod
    def _gap(rng: random.Random) -> float:
        """0-300 ms, a third of them back to back and a third within 10 ms: the signals that come
        close together are the ones that found the races."""
        return rng.choice((0.0, rng.uniform(0, 0.01), rng.uniform(0, 0.3)))

    def first_codes(self) -> List[int]:
        """The exit statuses the first signal may give. Signals that arrive before the interpreter
        runs any handler are handled in the order of their numbers, not of their arrival: those
        sent within TOGETHER of the first count as first."""
        codes, elapsed = [], 0.0
        for number, gap in self.signals:
            elapsed += gap
            if elapsed <= TOGETHER:
                codes.append(EXPECTED[number])
        return sorted(set(codes))

    def __str__(self) -> str:
        return f"at {self.delay:.3f}s: " + ", ".join(f"{NAMES[s]}+{gap * 1000:.0f}ms" for s, gap in self.signals)


@dataclass
class Result:
    burst: Burst
    code: Optional[int]  # None: still running at the deadline (a hang)
    seconds: float  # from the first signal to the runner's exit (or to the deadline)
    problems: List[str] = field(default_factory=list)

    console: str = ""

    @property
    def early(self) -> bool:
        """The signal came while Python itself was still starting, before mlrunner's recorder was
        installed (nothing had started): the interpreter died of it, or failed its own start-up
        (`site`) with a KeyboardInterrupt."""
        return self.code is not None and (self.code < 0 or STARTUP_FAILED in self.console)


def _as_on_a_terminal() -> None:
    """The signals' default actions, as a shell on a terminal gives them: started in the background
    (`cmd &`, nohup) this process would pass SIGINT or SIGHUP on ignored, and a burst that lands
    before mlrunner's recorder is installed would then be silently dropped."""
    for number in NAMES:
        signal.signal(number, signal.SIG_DFL)


def _tagged(token: str) -> List[int]:
    """Pids of live processes whose environment holds the token (zombies have none)."""
    found = []
    needle = f"MLRUNNER_BURST={token}".encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as stream:
                    if needle in stream.read().split(b"\0"):
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def _statuses(output: Path) -> List[Tuple[str, str, object]]:
    rows = []
    for stat in sorted(output.glob("*/stat")):
        for command, status in (yaml.safe_load(stat.read_text()) or {}).items():
            if not command.startswith("_"):
                rows.append((stat.parent.name, command, status))
    return rows


def run_burst(directory: Path, burst: Burst, grace: float = 1.0) -> Result:
    """Start a run in `directory`, send the burst, and check what R10 promises."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(CONFIG)
    token = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(REPO), MLRUNNER_BURST=token, MLRUNNER_FSYNC="0")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    runner = subprocess.Popen([sys.executable, "-m", "mlrunner", "--grace", f"{grace:g}s"], cwd=directory, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_as_on_a_terminal)
    began = time.monotonic()
    time.sleep(max(0.0, began + burst.delay - time.monotonic()))
    first = time.monotonic()
    for number, gap in burst.signals:
        time.sleep(gap)
        if runner.poll() is None:
            runner.send_signal(number)
    limit = grace + 1.0
    try:
        out, _ = runner.communicate(timeout=max(0.0, first + limit + 5 - time.monotonic()))
        code: Optional[int] = runner.returncode
    except subprocess.TimeoutExpired:
        code, out = None, ""
    seconds = time.monotonic() - first
    if code is None:
        runner.kill()
        out = runner.communicate()[0]
    result = Result(burst, code, seconds, console=out)
    problems = result.problems
    if code is None:
        problems.append(f"hang: still running {seconds:.1f}s after the first signal")
    elif seconds > limit:
        problems.append(f"ended {seconds:.2f}s after the first signal: more than the grace + 1 s")
    if code is not None and not result.early and code not in burst.first_codes():
        problems.append(f"exit status {code}, not {' or '.join(map(str, burst.first_codes()))} (the first signal's)")
    deadline = time.monotonic() + 1.0  # the kernel reaps a killed tree's processes a moment later
    left = _tagged(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _tagged(token)
    if left:
        problems.append(f"processes left: {left}")
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for name, command, status in _statuses(directory / "output"):
        if status != "interrupted" and not (command == "warm" and status == "finished"):
            problems.append(f"{name} {command}: {status}, not interrupted")
    if problems:
        problems.append("console:\n" + textwrap.indent(out[-3000:], "    "))
    return result
