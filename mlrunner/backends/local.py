"""Run commands on this machine, each in its own session so its whole tree can be ended."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

from ..run.gpus import run_tool
from ..run.processes import group_running
from .base import Executor, Machine, Process
from .claims import ClaimDir, lock_dir, session_of


# Every command's stdin, opened once: subprocess.DEVNULL opens and closes /dev/null at each start.
STDIN = os.open(os.devnull, os.O_RDONLY)


class LocalProcess(Process):
    """A command's shell, held at its first line until `release` (see LocalExecutor.start)."""

    def __init__(self, popen: "subprocess.Popen[bytes]", gate: int):
        self.popen = popen
        self.pgid = popen.pid  # start_new_session makes the shell its group's leader
        self._gate: Optional[int] = gate

    def release(self) -> None:
        if self._gate is None:
            return
        try:
            os.write(self._gate, b"\n")
        except OSError:
            pass  # the shell is gone already: its exit status tells
        os.close(self._gate)
        self._gate = None

    def __del__(self) -> None:
        if self._gate is not None:
            os.close(self._gate)  # never released (an error of ours): the shell reads EOF and exits

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, number: int) -> None:
        try:
            os.killpg(self.pgid, number)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        # Not killpg(pgid, 0): it counts zombies, which nothing reaps where pid 1 is no init (a
        # container), and an ended tree would then hold Ctrl-C for the whole grace.
        return group_running(self.pgid)


class LocalMachine(Machine):
    """This machine: nvidia-smi and /proc read here, claims in its lock directory."""

    name = "localhost"

    def query(self, argv: List[str]) -> Tuple[int, str, str]:
        return run_tool(argv)

    def sessions(self, pids: List[int]) -> Dict[int, Optional[int]]:
        return {pid: session_of(pid) for pid in pids}

    def claim_dir(self) -> ClaimDir:
        return ClaimDir(lock_dir())


LOCAL = LocalMachine()


class LocalExecutor(Executor):
    host = "localhost"
    machine = LOCAL

    bash = shutil.which("bash") or "bash"  # looked up once, not along PATH at every start
    cwd: Optional[str] = None  # where commands start: the run's code snapshot (P2), else here

    def __init__(self, resource: str):
        self.resource = resource
        self.label = resource or "cpu"
        self.env = dict(os.environ, CUDA_VISIBLE_DEVICES=resource)
        # GPU numbers mean what nvidia-smi shows only in PCI order (R1); the user's choice wins.
        self.env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

    def prepare(self, directory: str) -> None:
        try:
            os.mkdir(directory)  # the usual case, one call; makedirs checks its parent first
        except OSError:
            os.makedirs(directory, exist_ok=True)

    def start(self, line: str, debug: bool = False) -> Process:
        """Start `line` under bash, held until `release`: its shell first reads a pipe that only
        the runner writes to, after it has recorded the command's process group. A runner killed
        in between closes the pipe, the shell reads EOF and exits 125 without running the line,
        so no command ever runs without a `running` record that the next run can end (I3)."""
        gate, held = os.pipe()
        guarded = f"read -r _ <&{gate} || exit 125; exec {gate}<&-\n{line}"
        argv = [self.bash, "-o", "pipefail", "-c", guarded] if debug else [self.bash, "-c", guarded]
        try:
            popen = subprocess.Popen(argv, env=self.env, stdin=STDIN, start_new_session=True, pass_fds=(gate,),
                                     cwd=self.cwd)
        except BaseException:
            os.close(held)
            raise
        finally:
            os.close(gate)
        return LocalProcess(popen, held)

