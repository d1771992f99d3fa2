"""Find the GPUs of this machine with `nvidia-smi` (SPEC R1: `resource: auto`), and poll their memory (G6).

The parsers are pure functions so that they are tested against golden samples of the
tool's output; only `discover` starts a process, through an injectable runner.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

QUERY_FIELDS = ("index", "name", "uuid", "memory.total", "memory.used",
                "memory.free", "utilization.gpu")
QUERY_ARGS = ["nvidia-smi", "--query-gpu=" + ",".join(QUERY_FIELDS),
              "--format=csv,noheader,nounits"]
_LIST_ARGS = ["nvidia-smi", "-L"]
TIMEOUT_S = float(os.environ.get("MLRUNNER_NVIDIA_SMI_TIMEOUT") or 10)  # seconds before nvidia-smi counts as hung

_Runner = Callable[[List[str]], Tuple[int, str, str]]

_CPU_ONLY = "running one CPU worker (CUDA_VISIBLE_DEVICES='')"
_NUMBER = re.compile(r"^(\d+)\s*(?:MiB|%)?$")
_GPU_LINE = re.compile(r"^GPU (\d+):")
_INDEX = re.compile(r"[0-9]+\Z")
_MIG_LINE = re.compile(r"^\s+MIG\b.*\(UUID: (MIG-[^)\s]+)\)")


@dataclass(frozen=True)
class Gpu:
    """One row of `nvidia-smi --query-gpu`; memory in MiB, utilization in percent.

    A number the card cannot report (`[N/A]`, `[Not Supported]`) is None, so that a
    GeForce or MIG-enabled card is still listed rather than failing discovery.
    """

    index: str
    name: str
    uuid: str
    memory_total: Optional[int]
    memory_used: Optional[int]
    memory_free: Optional[int]
    utilization: Optional[int]


def _number(field: str) -> Optional[int]:
    """Read `81559`, `81559 MiB` or `97 %`; anything else is unknown."""
    match = _NUMBER.match(field)
    return int(match.group(1)) if match else None


def parse_query_csv(text: str) -> list[Gpu]:
    """Parse query output for QUERY_FIELDS, with or without header and units.

    Both forms are accepted because a user pasting `--format=csv` output, or an older
    driver, should not need a different code path.
    """
    gpus = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if fields[0] == "index":
            continue
        if len(fields) != len(QUERY_FIELDS):
            raise ValueError(
                f"nvidia-smi output line {lineno}: expected {len(QUERY_FIELDS)} "
                f"fields ({', '.join(QUERY_FIELDS)}), got {len(fields)}: {line.strip()!r}")
        index, name, uuid = fields[:3]
        total, used, free, util = (_number(f) for f in fields[3:])
        gpus.append(Gpu(index, name, uuid, total, used, free, util))
    return gpus


def parse_list(text: str) -> list[str]:
    """Parse `nvidia-smi -L` into CUDA_VISIBLE_DEVICES entries, in listed order.

    A GPU with MIG devices is replaced by their `MIG-...` UUIDs: with MIG enabled,
    CUDA addresses the MIG devices, not the parent GPU's index.
    """
    devices: list[str] = []
    gpu: Optional[str] = None
    migs: list[str] = []

    def flush() -> None:
        if gpu is not None:
            devices.extend(migs or [gpu])

    for line in text.splitlines():
        gpu_match = _GPU_LINE.match(line)
        mig_match = _MIG_LINE.match(line)
        if gpu_match:
            flush()
            gpu, migs = gpu_match.group(1), []
        elif mig_match and gpu is not None:
            migs.append(mig_match.group(1))
    flush()
    return devices


_GPU_ID = re.compile(r"[0-9]+|(?:GPU|MIG)-[A-Za-z0-9][A-Za-z0-9/-]*\Z")
GPU_ID_HINT = "a GPU id is a number, a comma list of them like \"0,1\", a GPU-... or MIG-... UUID, or \"\" (no GPU)"


def gpu_id(entry: object) -> Optional[str]:
    """A `resource` entry or `-r` value as CUDA_VISIBLE_DEVICES reads it (G11); None when it is not
    one, so that `gpu0` is refused before anything starts instead of running on no GPU."""
    if isinstance(entry, bool) or not isinstance(entry, (int, str)):
        return None
    text = str(entry).strip()
    if text == "":
        return ""
    parts = [part.strip() for part in text.split(",")]
    return ",".join(parts) if all(_GPU_ID.match(part) for part in parts) else None


def inherited_devices() -> Optional[List[str]]:
    """The CUDA_VISIBLE_DEVICES mlrunner itself was given (a Slurm job, a container); None when unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def translate(entry: str, visible: Optional[List[str]]) -> str:
    """An entry's GPU numbers counted within the inherited CUDA_VISIBLE_DEVICES, as the physical
    GPUs they are there (`1` of `3,5` is `5`), since a command's CUDA_VISIBLE_DEVICES replaces the
    inherited one (G11). ValueError for a number past what is visible."""
    if visible is None or entry == "":
        return entry
    out = []
    for part in entry.split(","):
        if part.isdigit():
            if int(part) >= len(visible):
                shown = ",".join(visible)
                raise ValueError(f"GPU {part} is not visible: CUDA_VISIBLE_DEVICES={shown!r} "
                                 f"makes {len(visible)} GPU(s) visible, numbered from 0")
            part = visible[int(part)]
        out.append(part)
    return ",".join(out)


def run_tool(args: List[str]) -> Tuple[int, str, str]:
    """Run a command; return code 127 when it is not on PATH (looked up at call time)."""
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=TIMEOUT_S)
    except FileNotFoundError:
        return 127, "", f"{args[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{args[0]} timed out after {TIMEOUT_S} s"
    except OSError as exc:
        return 126, "", f"{args[0]}: {exc}"
    return proc.returncode, proc.stdout, proc.stderr


def _first_line(*texts: str) -> str:
    """The tool's own message; nvidia-smi writes some errors to stdout, so try both."""
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                return line.strip()
    return "no message"


def discover(run: _Runner = run_tool) -> tuple[list[str], Optional[str]]:
    """Return (one CUDA_VISIBLE_DEVICES string per worker, warning or None).

    The stable query mode decides whether there are GPUs and gives their indices;
    `-L` is read afterwards only to swap a MIG-enabled GPU for its MIG devices, since
    query mode does not list them. If `-L` fails, the indices are still right for
    every GPU without MIG, so they are kept. Any failure of the query itself means
    no usable GPU: one CPU worker (`""`) and a one-line warning saying why.
    """
    code, out, err = run(QUERY_ARGS)
    if code == 127:
        return [""], f"nvidia-smi not found: {_CPU_ONLY}"
    if code == 6:
        return [""], f"nvidia-smi found no GPU ({_first_line(err, out)}): {_CPU_ONLY}"
    if code != 0:
        return [""], (f"nvidia-smi failed (exit {code}: {_first_line(err, out)}): "
                      f"{_CPU_ONLY}")
    try:
        gpus = parse_query_csv(out)
    except ValueError as exc:
        return [""], f"could not read {exc}: {_CPU_ONLY}"
    if not gpus:
        return [""], f"nvidia-smi listed no GPU: {_CPU_ONLY}"
    indices = [gpu.index for gpu in gpus]
    code, out, _ = run(_LIST_ARGS)
    listed = parse_list(out) if code == 0 else []
    return (listed if any(d.startswith("MIG-") for d in listed) else indices), None


# -- the shared-GPU poller (SPEC G6) ------------------------------------------------------------

POLL_GPU_ARGS = ["nvidia-smi", "--query-gpu=index,uuid,memory.total,memory.used",
                 "--format=csv,noheader,nounits"]
POLL_APPS_ARGS = ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory",
                  "--format=csv,noheader,nounits"]
POLL_INTERVAL = 2.0


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory in MiB; None where the card prints `[N/A]`."""

    index: str
    uuid: str
    total: Optional[int]
    used: Optional[int]


@dataclass(frozen=True)
class GpuApp:
    """One process on a GPU, as `--query-compute-apps` lists it."""

    uuid: str
    pid: int
    used: Optional[int]


@dataclass
class Snapshot:
    """The GPUs' memory and processes at one moment; `warning` says why it is partial."""

    gpus: Dict[str, GpuMemory] = field(default_factory=dict)  # by index, as CUDA_VISIBLE_DEVICES names them
    apps: List[GpuApp] = field(default_factory=list)
    taken: float = 0.0
    warning: Optional[str] = None
    trouble: str = ""  # the kind of warning ("failed", "unreadable", "n/a"): each is said once per machine


def parse_memory_csv(text: str) -> List[GpuMemory]:
    """`index, uuid, memory.total, memory.used` lines (noheader, nounits)."""
    gpus = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            raise ValueError(f"nvidia-smi output line {lineno}: expected 4 fields, got {len(fields)}: {line.strip()!r}")
        gpus.append(GpuMemory(fields[0], fields[1], _number(fields[2]), _number(fields[3])))
    return gpus


def parse_apps_csv(text: str) -> List[GpuApp]:
    """`gpu_uuid, pid, used_memory` lines (noheader, nounits); nothing when no process runs."""
    apps = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[1].isdigit():
            raise ValueError(f"nvidia-smi output line {lineno}: expected gpu_uuid, pid, used_memory: {line.strip()!r}")
        apps.append(GpuApp(fields[0], int(fields[1]), _number(fields[2])))
    return apps


class Poller:
    """The one reader of `nvidia-smi` for a machine (this one, or a host through its agent): callers
    share a snapshot at most POLL_INTERVAL old, and only one of them runs the tool at a time.
    Failures give a warning in the snapshot, never an exception: a GPU whose memory is unknown is
    then judged by our own bookkeeping alone."""

    def __init__(self, run: _Runner = run_tool, interval: float = POLL_INTERVAL):
        self._run = run
        self.interval = interval
        self._lock = threading.Lock()
        self._snapshot = Snapshot()

    def snapshot(self, max_age: Optional[float] = None) -> Snapshot:
        max_age = self.interval if max_age is None else max_age
        with self._lock:
            if time.monotonic() - self._snapshot.taken > max_age:
                self._snapshot = self._poll()
            return self._snapshot

    def _poll(self) -> Snapshot:
        """A reading, or an empty one with a warning: whatever the tool (or a host's agent) answers,
        the poller lives on (G9)."""
        snapshot = Snapshot(taken=time.monotonic())
        try:
            self._read(snapshot)
        except Exception as error:  # a reply of a shape nobody expected: nothing of it is trusted
            snapshot.gpus, snapshot.apps = {}, []
            snapshot.warning, snapshot.trouble = f"could not read nvidia-smi's answer ({type(error).__name__})", "unreadable"
        if snapshot.warning and not snapshot.gpus:
            snapshot.warning += ": one command per GPU at a time"
        return snapshot

    def _read(self, snapshot: Snapshot) -> None:
        code, out, err = self._run(POLL_GPU_ARGS)
        if code != 0:
            snapshot.warning, snapshot.trouble = f"nvidia-smi failed (exit {code}: {_first_line(err, out)})", "failed"
            return
        try:
            gpus = parse_memory_csv(out)
        except ValueError as error:
            snapshot.warning, snapshot.trouble = f"could not read {error}", "unreadable"
            return
        if len({g.index for g in gpus}) != len(gpus) or not all(_INDEX.match(g.index) and g.uuid.startswith(("GPU-", "MIG-"))
                                                                 for g in gpus):
            snapshot.warning, snapshot.trouble = "could not read nvidia-smi's GPU list (bad indices)", "unreadable"
            return
        snapshot.gpus = {gpu.index: gpu for gpu in gpus}
        if any(gpu.total is None or gpu.used is None for gpu in gpus):
            snapshot.warning, snapshot.trouble = ("nvidia-smi reports [N/A] for GPU memory: packing by the totals "
                                                  "and our own reservations", "n/a")
        code, out, err = self._run(POLL_APPS_ARGS)
        try:
            snapshot.apps = parse_apps_csv(out) if code == 0 else []
        except ValueError as error:
            snapshot.warning, snapshot.trouble = f"could not read {error}", "unreadable"
        if code != 0:
            snapshot.warning = f"nvidia-smi --query-compute-apps failed (exit {code}: {_first_line(err, out)})"
            snapshot.trouble = "failed"
