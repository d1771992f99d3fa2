"""Asking Slurm about jobs: `squeue` once per check, `sacct` only where accounting exists (S3).

The parsers of Slurm's output are small pure functions (tested on golden text); the calls that
produce it are thin. `squeue` answers for pending and running jobs only: a job that it does not
list has ended. A check is one `squeue` for every job asked about, cached for `CACHE_SECONDS`,
so a `--status` of 10^4 experiments or a resume costs the controller one call, not one per job.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from ...errors import UserError

SQUEUE_FORMAT = "%i|%T|%N|%r"
LIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
        "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED")
POLL = float(os.environ.get("MLRUNNER_SLURM_POLL", "30"))  # seconds between squeue calls while waiting
CACHE_SECONDS = min(5.0, POLL)
TIMEOUT = 60
SBATCH_TIMEOUT = 180  # sbatch itself retries for 120 s when the controller is busy or full (MaxJobCount)
calls = {"squeue": 0, "sacct": 0, "sbatch": 0, "scontrol": 0}  # counted for the benchmark


@dataclass
class JobState:
    job: str  # `<array>_<index>`, or a plain job id
    state: str  # PENDING, RUNNING, ...
    node: str = ""
    reason: str = ""


class SlurmError(UserError):
    """A Slurm command failed; the message is its last error line (one line, exit 2, as C10)."""


def parse_sbatch(text: str) -> str:
    """`sbatch --parsable` prints `<jobid>` or `<jobid>;<cluster>`: the job id."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    job = line.split(";")[0].strip()
    if not job.isdigit():
        raise SlurmError(f"sbatch printed no job id: {text.strip()!r}")
    return job


def parse_squeue(text: str) -> Dict[str, JobState]:
    """Lines of `squeue --noheader --array --format=%i|%T|%N|%r` -> job -> state.

    A pending array whose elements Slurm has not split yet is one line `123_[4-9%2]`: each
    element in it is listed on its own.
    """
    states: Dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        job, state = parts[0], parts[1]
        node, reason = (parts[2] if len(parts) > 2 else ""), (parts[3] if len(parts) > 3 else "")
        for one in expand_job(job):
            states[one] = JobState(one, state, node, reason)
    return states


def expand_job(job: str) -> List[str]:
    """`7_[0-2,5%4]` -> 7_0, 7_1, 7_2, 7_5; any other id as it is."""
    if "_[" not in job or not job.endswith("]"):
        return [job]
    array, inside = job[:-1].split("_[", 1)
    out = []
    for part in inside.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            out.extend(f"{array}_{i}" for i in range(int(low), int(high or low) + 1))
    return out


def parse_config(text: str) -> Dict[str, str]:
    """`scontrol show config` -> key -> value (`MaxArraySize = 1001`)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def parse_sacct(text: str) -> Dict[str, str]:
    """`sacct --noheader --parsable2 --format=JobID,State` -> job -> state; steps (`.batch`) left out.

    `CANCELLED by 0` is CANCELLED.
    """
    out = {}
    for line in text.splitlines():
        job, sep, state = line.strip().partition("|")
        if sep and "." not in job and job:
            out[job] = state.split()[0] if state.split() else ""
    return out


def call(argv: List[str]) -> subprocess.CompletedProcess:
    calls[argv[0]] = calls.get(argv[0], 0) + 1
    timeout = SBATCH_TIMEOUT if argv[0] == "sbatch" else TIMEOUT
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not on PATH: Slurm's commands are needed to run with Slurm") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in {timeout}s") from None


def last_error(result: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def squeue(jobs: Iterable[str]) -> Dict[str, JobState]:
    """One `squeue` call for the given array (or job) ids: every element still pending or running."""
    ids = sorted({str(job).split("_")[0] for job in jobs})
    if not ids:
        return {}
    result = call(["squeue", "--noheader", "--array", f"--jobs={','.join(ids)}", f"--format={SQUEUE_FORMAT}"])
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:  # all of them ended long ago: none is queued
            return {}
        raise SlurmError(f"squeue: {last_error(result)}")
    return parse_squeue(result.stdout)


_config: Optional[Dict[str, str]] = None


def cluster_config() -> Dict[str, str]:
    """`scontrol show config`, asked once per process."""
    global _config
    if _config is None:
        result = call(["scontrol", "show", "config"])
        if result.returncode != 0:
            raise SlurmError(f"scontrol show config: {last_error(result)}")
        _config = parse_config(result.stdout)
    return _config


def max_array_size() -> int:
    """The most elements one array may have, and one more than its highest index (MaxArraySize)."""
    value = cluster_config().get("MaxArraySize", "1001")
    return int(value) if value.isdigit() and int(value) > 0 else 1001


def has_accounting() -> bool:
    return cluster_config().get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none"


def sacct(jobs: Iterable[str]) -> Dict[str, str]:
    """Final states of ended jobs, where accounting exists; {} where it does not (submitit #1720)."""
    ids = sorted({str(job).split("_")[0] for job in jobs})
    if not ids or not has_accounting():
        return {}
    result = call(["sacct", "--noheader", "--parsable2", "--format=JobID,State", f"--jobs={','.join(ids)}"])
    return parse_sacct(result.stdout) if result.returncode == 0 else {}


class Queue:
    """The queue as one check sees it: one `squeue` for all asked jobs, reused for CACHE_SECONDS."""

    def __init__(self) -> None:
        self._states: Dict[str, JobState] = {}
        self._arrays: set = set()
        self._when = 0.0

    def states(self, jobs: Iterable[str]) -> Dict[str, JobState]:
        arrays = {str(job).split("_")[0] for job in jobs}
        if not arrays <= self._arrays or time.monotonic() - self._when > CACHE_SECONDS:
            self._arrays |= arrays
            self._states = squeue(self._arrays)
            self._when = time.monotonic()
        return self._states

    def alive(self, job: str) -> bool:
        return job in self.states([job])


shared_queue = Queue()  # one per process: a check is one squeue for all its jobs


def own_job() -> Optional[str]:
    """`<array>_<index>` of the element this process runs in, if it is one."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and index is not None:
        return f"{array}_{index}"
    return os.environ.get("SLURM_JOB_ID")


def job_alive(job: str) -> bool:
    """Is this Slurm job (another one than our own) still pending or running (S3)?"""
    try:
        return shared_queue.alive(job)
    except SlurmError:
        return True  # no answer (or no Slurm here): never take a live job for a dead one
