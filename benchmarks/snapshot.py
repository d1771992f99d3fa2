#!/usr/bin/env python3
"""Benchmark `code: snapshot` (SPEC P2): time and disk of a run's snapshot of a large repo.

A git repo of --files files (default 10^4, 10 x 10 nested directories) holding --megabytes in all
(default 200 MB, random bytes so no file system can share them), committed. Then:
  first   the first snapshot (every file copied), with the git calls that name it (P1);
  second  one file edited, a second snapshot (one file copied, the rest hard-linked);
  again   the same tree once more (the snapshot exists: reused, nothing written).
Baseline: `cp -a` of the same files (the directories d0..d9) into a fresh directory.
Disk: the blocks the output tree takes (`du`-like, a hard-linked file counted once), after each.
Timings are medians of --repeat runs, each on a fresh copy of the output tree (the page cache is
warm: what a second run of a sweep sees).

    python3 benchmarks/snapshot.py [--files 10000] [--megabytes 200] [--repeat 3]

A script, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import busy_cores  # noqa: E402
from mlrunner.run.provenance import code_state  # noqa: E402
from mlrunner.run.snapshot import Settings, make  # noqa: E402


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args], cwd=repo,
                   check=True, stdout=subprocess.DEVNULL)


def build(repo: Path, files: int, megabytes: int) -> None:
    size = megabytes * 10 ** 6 // files
    for number in range(files):
        directory = repo / f"d{number % 10}" / f"e{number // 10 % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{number}.py").write_bytes(os.urandom(size))
    (repo / ".gitignore").write_text("output/\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bench")


def disk(path: Path) -> int:
    """Bytes of blocks under `path`, directories included, each inode once (hard links share theirs)."""
    seen, total = set(), 0
    for directory, subdirectories, names in os.walk(path):
        for name in names + subdirectories:
            info = os.lstat(os.path.join(directory, name))
            if info.st_ino not in seen:
                seen.add(info.st_ino)
                total += info.st_blocks * 512
    return total


def snapshot(repo: Path, output: Path) -> float:
    began = time.perf_counter()
    make(str(output), Settings(max_bytes=10 ** 12), code_state(str(repo), [str(output)]), str(repo))
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10 ** 4)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    load = busy_cores()
    if load is not None:
        print(f"cores busy with other work before the runs: {load:.1f} of {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="mlrunner-bench-snapshot-") as scratch:
        repo = Path(scratch, "repo")
        began = time.perf_counter()
        build(repo, options.files, options.megabytes)
        print(f"repo: {options.files} files, {options.megabytes} MB, built in {time.perf_counter() - began:.1f}s")
        edited = next(repo.glob("d0/e0/*.py"))
        original = edited.read_bytes()
        times = {"first": [], "second": [], "again": [], "cp": []}
        sizes = {}
        os.chdir(repo)
        for attempt in range(options.repeat):
            output = repo / "output"
            shutil.rmtree(output, ignore_errors=True)
            edited.write_bytes(original)
            times["first"].append(snapshot(repo, output))
            sizes["first"] = disk(output)
            edited.write_bytes(original[::-1])
            times["second"].append(snapshot(repo, output))
            sizes["second"] = disk(output)
            times["again"].append(snapshot(repo, output))
            copy = Path(scratch, "copy")
            shutil.rmtree(copy, ignore_errors=True)
            copy.mkdir()
            began = time.perf_counter()
            subprocess.run(["cp", "-a", *sorted(str(d) for d in repo.glob("d*")), str(copy)], check=True)
            times["cp"].append(time.perf_counter() - began)
            print(f"run {attempt + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)
        for name, label in (("first", "first snapshot"), ("second", "one file changed"), ("again", "unchanged"),
                            ("cp", "cp -a (baseline)")):
            print(f"{label:17s} median {statistics.median(times[name]):6.2f} s"
                  + (f", output tree {sizes[name] / 1e6:7.1f} MB on disk" if name in sizes else ""))
        print(f"second snapshot adds {(sizes['second'] - sizes['first']) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
