"""Run commands on this machine, each in its own session so its whole tree can be ended."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

from ..gpus import run_tool
from ..processes import group_running
from .base import Executor, Machine, Process
from .claims import ClaimDir, lock_dir, session_of


# Every command's stdin, opened once: subprocess.DEVNULL opens and closes /dev/null at each start.
STDIN = os.open(os.devnull, os.O_RDONLY)


class LocalProcess(Process):
    def __init__(self, popen: "subprocess.Popen[bytes]"):
        self.popen = popen
        self.pgid = popen.pid  # start_new_session makes the shell its group's leader

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
        argv = [self.bash, "-o", "pipefail", "-c", line] if debug else [self.bash, "-c", line]
        return LocalProcess(subprocess.Popen(argv, env=self.env, stdin=STDIN, start_new_session=True))

