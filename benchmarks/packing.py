#!/usr/bin/env python3
"""Benchmark packing by GPU memory (SPEC G3) on the stand-in `nvidia-smi` (tests/bin).

48 jobs of mixed sizes (6-40 GB, 2-6 s, drawn with a fixed seed) on 4 simulated 80 GB GPUs, one
of them half-used (40 GB) by another user's process, run by the real CLI three ways:

  * one job per GPU: `resource: [0, 1, 2, 3]` without `gpu:` (0.5.9's static workers, today's
    `resource: auto` on this machine);
  * packed: the same with `gpu: {memory: '{size}'}`, each job declaring its own size;
  * ideal: no run; total job-GB-seconds / free GB of the four GPUs, a bound no scheduler beats.
    A job's seconds are what it took in the packed run (its sleep plus the start of bash and of
    the stand-in job, ~0.2 s here), since it holds its memory all that time; the ideal from the
    nominal sleep times alone is printed too.

Each job is `fake-cuda-job MIB SECONDS`: it takes its memory on its GPU in the stand-in's state file
and fails with PyTorch's out-of-memory message when there is no room, as a real job would.
Reported: makespan (wall seconds from the first start to the last end, from the records), the mean
GPU memory utilisation (job-GB-seconds / (makespan x free GB)), failures, and the speed-ups.
Targets (issue 11): packed >= 2.5x faster than one job per GPU, and within 1.3x of the ideal.

    python3 benchmarks/packing.py [--jobs 48] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import yaml

REPO = Path(__file__).resolve().parent.parent
H100 = 81559  # MiB
OTHER_USER = 40 * 1024  # MiB held on GPU 0 by a process that is not ours


def jobs(count: int, seed: int) -> List[Tuple[int, float]]:
    rng = random.Random(seed)
    return [(rng.randint(6000, 40000), round(rng.uniform(2, 6), 1)) for _ in range(count)]


def run(root: Path, name: str, work: List[Tuple[int, float]], packed: bool) -> Dict[str, float]:
    directory = root / name
    directory.mkdir()
    state = directory / "gpus.json"
    outsider = subprocess.Popen(["sleep", "3600"], start_new_session=True)
    state.write_text(json.dumps({"gpus": [{"index": i, "uuid": f"GPU-{i}", "total": H100} for i in range(4)],
                                 "processes": [{"pid": outsider.pid, "gpu": "GPU-0", "used": OTHER_USER}]}))
    config = {"template": {"train": "fake-cuda-job {mib} {seconds}"}, "resource": [0, 1, 2, 3]}
    if packed:
        config["gpu"] = {"memory": "{size}", "busy_above": "60GiB"}
    sweeps = [{"mib": mib, "seconds": seconds, "size": f"{mib}MiB", "job": index}
              for index, (mib, seconds) in enumerate(work)]
    (directory / "params.yaml").write_text(yaml.safe_dump_all([config] + sweeps, sort_keys=False))
    env = dict(os.environ, PATH=f"{REPO / 'tests' / 'bin'}:{os.environ['PATH']}", FAKE_GPU_STATE=str(state),
               MLRUNNER_LOCK_DIR=str(directory / "locks"), PYTHONPATH=str(REPO), MLRUNNER_FSYNC="0")
    try:
        subprocess.run([sys.executable, "-m", "mlrunner"], cwd=directory, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=900)
    finally:
        outsider.kill()
    starts, ends, failed, gb_seconds = [], [], 0, 0.0
    for stat_path in (directory / "output").glob("*/stat"):
        stat = yaml.safe_load(stat_path.read_text())
        runs = stat["_runs"]["train"]
        starts.append(runs[0]["start"])
        ends.append(runs[-1]["end"])
        failed += stat["train"] != "finished"
        mib = yaml.safe_load((stat_path.parent / "param").read_text())["mib"]
        gb_seconds += mib * 1.048576 / 1000 * runs[-1].get("seconds", 0)
    makespan = max(ends) - min(starts)
    return {"makespan": makespan, "failed": failed, "tasks": len(starts), "gb_seconds": gb_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = jobs(args.jobs, args.seed)
    free_gb = (4 * H100 - OTHER_USER - 4 * 4) / 1000 * 1.048576  # MiB -> GB
    nominal = sum(mib * 1.048576 / 1000 * seconds for mib, seconds in work) / free_gb
    results = []
    with tempfile.TemporaryDirectory(prefix="mlrunner-bench-packing-") as root:
        for number in range(args.repeat):  # interleaved, so that load drift hits both alike
            results.append((run(Path(root), f"per-gpu.{number}", work, packed=False),
                            run(Path(root), f"packed.{number}", work, packed=True)))
            print(f"  run {number + 1}/{args.repeat}: one per GPU {results[-1][0]['makespan']:.1f} s, "
                  f"packed {results[-1][1]['makespan']:.1f} s", file=sys.stderr, flush=True)
    per_gpu, packed = (sorted((r[i] for r in results), key=lambda x: x["makespan"])[len(results) // 2]
                       for i in (0, 1))
    job_gb_seconds = packed["gb_seconds"]
    ideal = job_gb_seconds / free_gb
    print(f"{args.jobs} jobs of {min(m for m, _ in work) / 1000:.0f}-{max(m for m, _ in work) / 1000:.0f} GB, "
          f"{min(s for _, s in work)}-{max(s for _, s in work)} s, on 4 x 80 GB GPUs, GPU 0 with "
          f"{OTHER_USER / 1024:.0f} GiB held by another user; {os.cpu_count()} CPUs")
    spans = [", ".join("%.1f" % r[i]["makespan"] for r in results) for i in (0, 1)]
    print(f"median of {args.repeat} runs each; makespans: one per GPU {spans[0]}; packed {spans[1]}")
    print(f"{'schedule':<30} {'makespan s':>10} {'mem. util.':>10} {'failed':>7}")
    for name, result in (("one job per GPU (no gpu:)", per_gpu), ("packed by memory (gpu:)", packed)):
        utilisation = job_gb_seconds / (result["makespan"] * free_gb)
        print(f"{name:<30} {result['makespan']:10.1f} {utilisation:10.0%} {result['failed']:7d}")
    print(f"{'ideal (job-GB-s / free GB)':<30} {ideal:10.1f} {1:10.0%}")
    print(f"{'ideal, nominal sleep times':<30} {nominal:10.1f}")
    speedup = per_gpu["makespan"] / packed["makespan"]
    to_ideal = packed["makespan"] / ideal
    print(f"packed vs one job per GPU: {speedup:.2f}x faster (target >= 2.5x: {'met' if speedup >= 2.5 else 'NOT met'})")
    print(f"packed vs ideal: {to_ideal:.2f}x (target <= 1.3x: {'met' if to_ideal <= 1.3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
