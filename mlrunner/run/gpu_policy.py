"""The `gpu:` policy of a shared server (SPEC G1, G3, G5): sizes, per-command memory, OOM messages.

Pure: parsing and checking what the user wrote, and recognising an out-of-memory end in a log.
The allocator (`allocator.py`) applies the policy.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

from ..errors import UserError

GIB = 1024  # MiB
DEFAULT_BUSY_ABOVE = GIB  # MiB used by others that make a GPU busy (canhazgpu's 1 GiB)
PER_GPU_LIMIT = 16  # workers per GPU when `memory` decides and `per_gpu` is not set
OOM_TRIES = 3
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|TiB|KB|MB|GB|TB)\s*\Z", re.I)
_UNITS_MIB = {"kib": 1 / 1024, "mib": 1, "gib": 1024, "tib": 1024 ** 2,
              "kb": 1e3 / 2 ** 20, "mb": 1e6 / 2 ** 20, "gb": 1e9 / 2 ** 20, "tb": 1e12 / 2 ** 20}
_PARAM_RE = re.compile(r"\{([A-Za-z0-9_-]+)\}\Z")
# Out-of-memory messages of PyTorch, TensorFlow, JAX/XLA and the CUDA runtime (peers.md).
OOM_RE = re.compile(rb"CUDA out of memory|OutOfMemoryError|OOM when allocating|RESOURCE_EXHAUSTED: Out of memory"
                    rb"|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation")


def parse_size(text: Any) -> int:
    """`20GiB`, `512 MiB`, `1.5GB` -> MiB (rounded up); ValueError otherwise."""
    match = _SIZE_RE.match(str(text)) if not isinstance(text, bool) else None
    if not match:
        raise ValueError(f"{text!r} is not a size (write e.g. 20GiB or 512MiB)")
    return math.ceil(float(match.group(1)) * _UNITS_MIB[match.group(2).lower()])


def gib(mib: float) -> str:
    return f"{mib / GIB:.1f} GiB"


@dataclass
class GpuPolicy:
    """`gpu:` of document 1 (G1); memory sizes in MiB, or the name of the param that holds one."""

    busy_above: int = DEFAULT_BUSY_ABOVE
    wait: bool = True
    memory: Dict[str, Any] = field(default_factory=dict)  # command -> MiB or "{param}"; "*" for every command
    per_gpu: Optional[int] = None

    def size(self, command: str, params: Dict[str, Any]) -> int:
        """MiB a command needs; a `{param}` size reads the task's value of that param."""
        spec = self.memory.get(command, self.memory.get("*", 0))
        if isinstance(spec, str):
            return parse_size(params[spec])
        return spec

    def slots_per_gpu(self) -> int:
        if self.per_gpu is not None:
            return self.per_gpu
        return PER_GPU_LIMIT if self.memory else 1


def parse_policy(raw: Any, commands: Sequence[str], fail: Callable[..., Exception]) -> GpuPolicy:
    """Check `gpu:`; `fail(message, *keys)` makes the one-line `file:line:` error (C10)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise fail("'gpu' must be a mapping like {busy_above: 1GiB, wait: true, memory: 20GiB, per_gpu: 4}", "gpu")
    policy = GpuPolicy()
    for key, value in raw.items():
        if key == "busy_above":
            policy.busy_above = _size(value, fail, "busy_above")
        elif key == "wait":
            if not isinstance(value, bool):
                raise fail("gpu: 'wait' must be true or false", "gpu", key)
            policy.wait = value
        elif key == "per_gpu":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fail("gpu: 'per_gpu' must be a whole number >= 1", "gpu", key)
            policy.per_gpu = value
        elif key == "memory":
            items = value.items() if isinstance(value, dict) else [("*", value)]
            for command, size in items:
                if command != "*" and command not in commands:
                    raise fail(f"gpu: memory: unknown command '{command}' (commands: {', '.join(commands)})",
                               "gpu", "memory", command)
                if isinstance(size, str) and _PARAM_RE.match(size):
                    policy.memory[command] = _PARAM_RE.match(size).group(1)
                else:
                    policy.memory[command] = _size(size, fail, "memory", *([command] if command != "*" else []))
        else:
            raise fail(f"gpu: unknown key '{key}' (allowed: busy_above, wait, memory, per_gpu)", "gpu", key)
    return policy


def _size(value: Any, fail: Callable[..., Exception], *keys: str) -> int:
    try:
        return parse_size(value)
    except ValueError as error:
        raise fail(f"gpu: {' '.join(keys)}: {error}", "gpu", *keys) from None


def oom_in_log(path: Optional[str]) -> bool:
    """Does the end of a log say the command ran out of GPU memory (G5)?"""
    if not path:
        return False
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(stream.tell() - 65536, 0))
            return OOM_RE.search(stream.read()) is not None
    except OSError:
        return False


def check_sizes(policy: GpuPolicy, tasks: Sequence[Any], path: str) -> None:
    """Every `{param}` memory size reads as a size, before anything starts (C10)."""
    for task in tasks:
        params = task.params
        for command in task.commands:
            try:
                policy.size(command, params)
            except KeyError as error:
                raise UserError(f"gpu: the memory of '{command}' is the param {error}, which {task.output} does not set",
                                path) from None
            except ValueError as error:
                raise UserError(f"gpu: the memory of '{command}' for {task.output}: {error}", path) from None
