#!/usr/bin/env python3
"""Benchmark packing by GPU memory (SPEC G3, G8) on the stand-in `nvidia-smi` (tests/bin).

48 jobs of mixed sizes (6-40 GB, 2-6 s, drawn with a fixed seed) on 4 simulated 80 GB GPUs, one
of them half-used (40 GB) by another user's process, run by the real CLI four ways:

  * one job per GPU: `resource: [0, 1, 2, 3]` without `gpu:` (0.5.9's static workers, today's
    `resource: auto` on this machine);
  * static slots: the best fixed layout a user could write by hand for this job mix, without
    `gpu:`: each GPU listed as often as the largest job fits in its free memory
    (`resource: [0, 1, 1, 2, 2, 3, 3]` here: 41 GB free on GPU 0 takes one 40 GB job, an empty
    GPU two). A third slot on an empty GPU would run out of memory when three large jobs meet,
    and without `gpu:` an out-of-memory job is failed, so no static layout packs tighter safely;
  * packed: `resource: [0, 1, 2, 3]` with `gpu: {memory: '{size}'}`, each job declaring its size;
  * ideal: no run; total job-GB-seconds / free GB of the four GPUs, a bound no scheduler beats.
    A job's seconds are what it took in the packed run (its sleep plus the start of bash and of
    the stand-in job, ~0.2 s here), since it holds its memory all that time; the ideal from the
    nominal sleep times alone is printed too.

And one more case, packed again: GPU 0 is 60 GB full through processes of another pid namespace
(another container; `/proc` mounted hidepid): nvidia-smi lists them under pids this machine's
/proc does not show. Reported: its makespan against its own ideal, and that no job ran out of
memory (G8).

Each job is `fake-cuda-job MIB SECONDS`: it takes its memory on its GPU in the stand-in's state file
and fails with PyTorch's out-of-memory message when there is no room, as a real job would.
Reported: makespan (wall seconds from the first start to the last end, from the records), the mean
GPU memory utilisation (job-GB-seconds / (makespan x free GB)), failures, and three ratios:
packed against one job per GPU, against static slots, and against the ideal.

    python3 benchmarks/packing.py [--jobs 48] [--seed 7] [--repeat 1]
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


INVISIBLE = 60 * 1024  # MiB held on GPU 0 by processes of another pid namespace, in the extra case
PER_GPU, STATIC, PACKED, HIDDEN = "one job per GPU (no gpu:)", "static slots (no gpu:)", "packed (gpu:)", \
    "packed, 60 GB hidden"


def static_layout(work: List[Tuple[int, float]], free: List[int]) -> List[int]:
    """Each GPU as many times as the largest job fits in its free memory: the hand-written layout."""
    largest = max(mib for mib, _ in work)
    return [gpu for gpu, room in enumerate(free) for _ in range(max(1, room // largest))]


def run(root: Path, name: str, work: List[Tuple[int, float]], resource: List[int], packed: bool,
        hidden: bool = False) -> Dict[str, float]:
    directory = root / name
    directory.mkdir()
    state = directory / "gpus.json"
    outsider = subprocess.Popen(["sleep", "3600"], start_new_session=True)
    if hidden:  # a pid that /proc does not show: another container's job
        pid = next(p for p in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{p}"))
        others = [{"pid": pid, "gpu": "GPU-0", "used": INVISIBLE, "foreign": True, "ours": False}]
    else:
        others = [{"pid": outsider.pid, "gpu": "GPU-0", "used": OTHER_USER, "ours": False}]
    state.write_text(json.dumps({"gpus": [{"index": i, "uuid": f"GPU-{i}", "total": H100} for i in range(4)],
                                 "processes": others}))
    config = {"template": {"train": "fake-cuda-job {mib} {seconds}"}, "resource": resource}
    if packed:
        config["gpu"] = {"memory": "{size}", "busy_above": "70GiB"}
    sweeps = [{"mib": mib, "seconds": seconds, "size": f"{mib}MiB", "job": index}
              for index, (mib, seconds) in enumerate(work)]
    (directory / "params.yaml").write_text(yaml.safe_dump_all([config] + sweeps, sort_keys=False))
    env = dict(os.environ, PATH=f"{REPO / 'tests' / 'bin'}:{os.environ['PATH']}", FAKE_GPU_STATE=str(state),
               MLRUNNER_LOCK_DIR=str(directory / "locks"), PYTHONPATH=str(REPO), MLRUNNER_FSYNC="0")
    env.pop("CUDA_VISIBLE_DEVICES", None)
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
    ooms = sum("OutOfMemoryError" in log.read_text() for log in (directory / "output").glob("*/log.train.*"))
    makespan = max(ends) - min(starts)
    return {"makespan": makespan, "failed": failed, "tasks": len(starts), "gb_seconds": gb_seconds, "ooms": ooms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each schedule; the median is shown")
    args = parser.parse_args()
    work = jobs(args.jobs, args.seed)
    free = [H100 - OTHER_USER - 4] + [H100 - 4] * 3
    free_gb = sum(free) / 1000 * 1.048576  # MiB -> GB
    hidden_free_gb = (sum(free) + OTHER_USER - INVISIBLE) / 1000 * 1.048576
    nominal = sum(mib * 1.048576 / 1000 * seconds for mib, seconds in work) / free_gb
    layout = static_layout(work, free)
    schedules = [(PER_GPU, [0, 1, 2, 3], False, False), (STATIC, layout, False, False),
                 (PACKED, [0, 1, 2, 3], True, False), (HIDDEN, [0, 1, 2, 3], True, True)]
    results: Dict[str, List[Dict[str, float]]] = {name: [] for name, *_ in schedules}
    with tempfile.TemporaryDirectory(prefix="mlrunner-bench-packing-") as root:
        for number in range(args.repeat):  # interleaved, so that load drift hits all alike
            for order, (name, resource, packed, hidden) in enumerate(schedules):
                results[name].append(run(Path(root), f"{order}.{number}", work, resource, packed, hidden))
            print(f"  run {number + 1}/{args.repeat}: " + ", ".join(f"{name} {results[name][-1]['makespan']:.1f} s"
                                                                   for name, *_ in schedules), file=sys.stderr, flush=True)
    median = {name: sorted(rs, key=lambda r: r["makespan"])[len(rs) // 2] for name, rs in results.items()}
    ideal = median[PACKED]["gb_seconds"] / free_gb
    hidden_ideal = median[HIDDEN]["gb_seconds"] / hidden_free_gb
    print(f"{args.jobs} jobs of {min(m for m, _ in work) / 1000:.0f}-{max(m for m, _ in work) / 1000:.0f} GB, "
          f"{min(s for _, s in work)}-{max(s for _, s in work)} s, on 4 x 80 GB GPUs, GPU 0 with "
          f"{OTHER_USER / 1024:.0f} GiB held by another user; {os.cpu_count()} CPUs; static slots: resource: {layout}")
    print(f"median of {args.repeat} run(s) each; makespans: " + "; ".join(
        f"{name} " + ", ".join("%.1f" % r["makespan"] for r in results[name]) for name in results))
    print(f"{'schedule':<30} {'makespan s':>10} {'mem. util.':>10} {'failed':>7} {'OOMs':>5}")
    for name, result in median.items():
        base = hidden_free_gb if name == HIDDEN else free_gb
        utilisation = result["gb_seconds"] / (result["makespan"] * base)
        print(f"{name:<30} {result['makespan']:10.1f} {utilisation:10.0%} {result['failed']:7d} {result['ooms']:5d}")
    print(f"{'ideal (job-GB-s / free GB)':<30} {ideal:10.1f} {1:10.0%}")
    print(f"{'ideal, nominal sleep times':<30} {nominal:10.1f}")
    print(f"{'ideal, 60 GB hidden':<30} {hidden_ideal:10.1f}")
    packed = median[PACKED]["makespan"]
    print(f"packed vs one job per GPU: {median[PER_GPU]['makespan'] / packed:.2f}x faster")
    print(f"packed vs static slots {layout}: {median[STATIC]['makespan'] / packed:.2f}x faster")
    print(f"packed vs ideal: {packed / ideal:.2f}x the ideal makespan")
    print(f"60 GB hidden: {median[HIDDEN]['makespan'] / hidden_ideal:.2f}x its ideal, "
          f"{median[HIDDEN]['ooms']} out-of-memory ends, {median[HIDDEN]['failed']} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
