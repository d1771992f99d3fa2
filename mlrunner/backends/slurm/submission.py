"""A submission's files: where its manifest, job script and Slurm logs live, and its record (S1, S2).

    <output>/.slurm/<id>/manifest.json   the run's args, config copy and, per element, its task
    <output>/.slurm/<id>/params.yaml     the config as it was at submission (elements read this copy)
    <output>/.slurm/<id>/job.sh          the batch script of every array chunk
    <output>/.slurm/<id>/slurm.<array>_<index>.log   what Slurm and the element print
    <output>/.slurm/<id>/began/<position>             written by an element once mlrunner runs on it
    <output>/.mlrunner-slurm.<id>        the record `--status`, `--stop`, `--follow` and a rerun read

An element's position in the manifest is its chunk's offset plus its array index, so each array
chunk counts its indices from 0 and never reaches MaxArraySize (submitit #1624).
"""

from __future__ import annotations

import glob
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

RECORD_PREFIX = ".mlrunner-slurm."
DIRECTORY = ".slurm"


@dataclass
class Chunk:
    """One `sbatch --array=0-<count-1>` of a submission, holding manifest positions offset.."""

    job: str
    offset: int
    count: int


@dataclass
class Submission:
    output: str
    ident: str
    directory: str
    chunks: List[Chunk] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)  # per position: the task's output directory
    submitted: float = 0.0
    cwd: str = ""

    @property
    def record_path(self) -> str:
        return os.path.join(self.output, RECORD_PREFIX + self.ident)

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.directory, "manifest.json")

    def elements(self) -> Iterator[Tuple[int, str]]:
        """(position, `<array>_<index>`) of every element."""
        for chunk in self.chunks:
            for index in range(chunk.count):
                yield chunk.offset + index, f"{chunk.job}_{index}"

    def log(self, job: str) -> str:
        return os.path.join(self.directory, f"slurm.{job}.log")

    def began(self, position: int) -> bool:
        return os.path.exists(os.path.join(self.directory, "began", str(position)))

    def died_early(self, position: int, job: str) -> bool:
        """Did this ended element start on a node (Slurm wrote its log) but never run mlrunner (S5)?
        An element cancelled while pending has no log: it never started anywhere."""
        return not self.began(position) and os.path.exists(self.log(job))

    def arrays(self) -> List[str]:
        return [chunk.job for chunk in self.chunks]

    def save(self) -> None:
        data = {"id": self.ident, "directory": self.directory, "cwd": self.cwd, "submitted": self.submitted,
                "chunks": [[c.job, c.offset, c.count] for c in self.chunks], "outputs": self.outputs}
        temporary = f"{self.record_path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(temporary, "w", encoding="utf-8") as stream:
            yaml.safe_dump(data, stream, sort_keys=False, default_flow_style=None, width=1 << 30)
        os.replace(temporary, self.record_path)

    def remove(self) -> None:
        try:
            os.remove(self.record_path)
        except FileNotFoundError:
            pass


def load(path: str, output: str) -> Optional[Submission]:
    """A submission record; None when it is gone or unreadable."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
        return Submission(output, str(data["id"]), data["directory"],
                          [Chunk(str(j), int(o), int(c)) for j, o, c in data["chunks"]],
                          list(data["outputs"]), float(data.get("submitted") or 0), str(data.get("cwd") or ""))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def submissions(output: str) -> List[Submission]:
    """Every submission recorded on `output`, oldest first."""
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(output), RECORD_PREFIX + "*"))):
        if not path.endswith(".tmp"):
            submission = load(path, output)
            if submission is not None:
                found.append(submission)
    return sorted(found, key=lambda s: s.submitted)


def write_manifest(path: str, data: Dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(data, stream)


def read_manifest(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)
