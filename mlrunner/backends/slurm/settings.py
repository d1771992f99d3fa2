"""The `slurm:` key of params.yaml, checked, and the sbatch flags it becomes (SPEC S1, C10).

Pure: no Slurm command runs here, so every check is tested without a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from ...errors import UserError, shown

KEYS = ("partition", "gpus", "cpus", "mem", "time", "account", "max_running", "options", "max_requeue", "signal")
MEM_RE = re.compile(r"\d+[KMGT]?\Z")
TIME_RE = re.compile(r"(\d+-)?\d+(:\d+){0,2}\Z")


@dataclass
class Settings:
    """What each array element asks Slurm for; None leaves the cluster's default."""

    partition: Optional[str] = None
    gpus: int = 1  # one task ran on one worker's GPU locally: the same here unless told
    cpus: int = 1
    mem: Optional[str] = None
    time: Optional[str] = None
    account: Optional[str] = None
    max_running: Optional[int] = None
    options: List[str] = field(default_factory=list)
    max_requeue: int = 3  # how often an element requeues itself after USR2 (S4)
    signal: int = 90  # seconds before the time limit that Slurm sends USR2 (S4)


def parse(value: Any, path: str, line: Callable[..., Optional[int]]) -> Settings:
    """`slurm:` of document 1 -> Settings; a mistake is one `file:line: message` (C10).

    `line(*keys)` is the line of `slurm` (no keys) or of one of its keys.
    """
    def fail(message: str, *keys: str) -> UserError:
        return UserError(f"'slurm': {message}", path, line(*keys))

    if value is None:
        return Settings()
    if not isinstance(value, dict):
        raise fail("must be a mapping, e.g. {partition: gpu, gpus: 1, time: '24:00:00'}")
    settings = Settings()
    for key, item in value.items():
        if key not in KEYS:
            raise fail(f"unknown key '{key}' (allowed: {', '.join(KEYS)})", key)
        if key in ("gpus", "cpus", "max_running", "max_requeue", "signal"):
            least = 0 if key in ("gpus", "max_requeue") else 1
            if isinstance(item, bool) or not isinstance(item, int) or item < least:
                raise fail(f"'{key}' must be a whole number >= {least}, not {shown(item)}", key)
        elif key == "options":
            if not isinstance(item, list) or not all(isinstance(o, str) and o.startswith("-") for o in item):
                raise fail("'options' must be a list of sbatch flags, e.g. ['--constraint=a100']", key)
        elif key == "mem":
            item = str(item) if isinstance(item, (str, int)) else item
            if not isinstance(item, str) or not MEM_RE.match(item):
                raise fail(f"'mem' must be a size such as 32G or 4000M, not {shown(item)}", key)
        elif key == "time":
            if not isinstance(item, str) or not TIME_RE.match(item):
                raise fail(f"'time' must be a quoted Slurm time such as '24:00:00' or '1-12:00:00', "
                           f"not {shown(item)}", key)
        elif not isinstance(item, str) or not item.strip() or any(c.isspace() for c in item):
            raise fail(f"'{key}' must be one word, not {shown(item)}", key)
        setattr(settings, key, item)
    return settings


def sbatch_argv(settings: Settings, *, array: str, log: str, name: str, script: str,
                script_args: List[str], after: Optional[str] = None) -> List[str]:
    """The one `sbatch` call that submits an array chunk: `--array=<indices>[%max_running]`.

    A throttle holds per array, so with `after` (the previous chunk's job) a chunk starts only
    once that one has ended: never more than `max_running` tasks of one sweep at once.
    """
    throttle = f"%{settings.max_running}" if settings.max_running else ""
    argv = ["sbatch", "--parsable", f"--array={array}{throttle}", f"--job-name={name}", f"--output={log}",
            "--open-mode=append", "--requeue", f"--signal=B:USR2@{settings.signal}",
            f"--cpus-per-task={settings.cpus}"]
    if after:
        argv.append(f"--dependency=afterany:{after}")
    if settings.gpus:
        argv.append(f"--gres=gpu:{settings.gpus}")
    for key in ("partition", "mem", "time", "account"):
        value = getattr(settings, key)
        if value is not None:
            argv.append(f"--{key}={value}")
    return argv + list(settings.options) + [script] + script_args
