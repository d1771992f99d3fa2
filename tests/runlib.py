"""Helpers for the tests that really run mlrunner: a config writer and a process launcher."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
STAND_INS = REPO / "tests" / "bin"


def write(directory: Path, text: str, name: str = "params.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("CUDA_DEVICE_ORDER", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)  # one inherited from a GPU job would renumber `resource` (G11)
    env.update(extra or {})
    return env


def start(args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlrunner", *args], cwd=cwd, env=environment(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run(args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None, timeout: float = 60):
    process = start(args, cwd, env)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def statuses(directory: Path) -> dict:
    return {k: v for k, v in load(directory / "stat").items() if not k.startswith("_")}


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped between open and read
        return False


def wait_for_file(path: Path, lines: int = 1, timeout: float = 20) -> List[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            content = path.read_text().split()
            if len(content) >= lines:
                return content
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {lines} lines in {timeout}s")


def wait_until(condition, timeout: float = 20) -> bool:
    """Poll `condition` every 50 ms until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
