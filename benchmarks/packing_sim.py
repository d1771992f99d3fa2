#!/usr/bin/env python3
"""What the packing benchmark's makespan would be with no overhead but the jobs' own start, for
mlrunner's placement policy and two others, on the same job sets as `packing.py`.

An event simulation, not a run: 4 GPUs of 81559 MiB, GPU 0 with 40 GiB held by another user, all
jobs waiting from the start (packing.py's 16 workers per GPU exceed its 48 jobs). Each time memory
frees, the waiting jobs are served in order, each starting at once on a GPU where it fits:

  * oldest/tightest: oldest request first, younger ones that fit start beside it, on the GPU it
    leaves least free memory on (mlrunner's allocator);
  * largest/tightest: the largest request first;
  * oldest/emptiest: oldest first, on the GPU with the most free memory.

A job holds its memory for its sleep plus --start seconds (bash and the stand-in job starting,
~0.2 s on this machine). Seed 7 is packing.py's default job set.

    python3 benchmarks/packing_sim.py [--jobs 48] [--start 0.2] [--seeds 7 1 2 3 4 5] [--many 100]
"""

from __future__ import annotations

import argparse
import heapq
from typing import List, Tuple

from packing import H100, OTHER_USER, jobs  # benchmarks/ is sys.path[0] when run as a script


def makespan(work: List[Tuple[int, float]], largest_first: bool, tightest: bool, start: float) -> float:
    free = [H100 - OTHER_USER, H100, H100, H100]
    waiting = sorted(range(len(work)), key=lambda i: -work[i][0]) if largest_first else list(range(len(work)))
    running: List[Tuple[float, int, int]] = []  # (end, gpu, MiB)
    now = 0.0
    while waiting or running:
        for job in list(waiting):
            mib, seconds = work[job]
            fits = [(free[gpu] - mib, gpu) for gpu in range(len(free)) if free[gpu] >= mib]
            if fits:
                _, gpu = min(fits) if tightest else max(fits)
                free[gpu] -= mib
                waiting.remove(job)
                heapq.heappush(running, (now + seconds + start, gpu, mib))
        now, gpu, mib = heapq.heappop(running)
        free[gpu] += mib
    return now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--start", type=float, default=0.2, help="seconds for a job to start")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 1, 2, 3, 4, 5])
    parser.add_argument("--many", type=int, default=100, help="job sets (seeds 0..N-1) for the summary")
    args = parser.parse_args()
    policies = {"oldest/tightest (mlrunner)": (False, True), "largest/tightest": (True, True),
                "oldest/emptiest": (False, False)}
    print(f"{'seed':>4}  " + "  ".join(f"{name:>26}" for name in policies))
    for seed in args.seeds:
        work = jobs(args.jobs, seed)
        spans = [makespan(work, *choice, args.start) for choice in policies.values()]
        print(f"{seed:>4}  " + "  ".join(f"{span:25.1f}s" for span in spans))
    spans = [[makespan(jobs(args.jobs, seed), *choice, args.start) for seed in range(args.many)]
             for choice in policies.values()]
    print(f"over {args.many} job sets (seeds 0..{args.many - 1}), mean makespan and, against mlrunner's "
          f"policy, sets shorter / longer by over 0.05 s:")
    for name, mine in zip(policies, spans):
        shorter = sum(a < b - 0.05 for a, b in zip(mine, spans[0]))
        longer = sum(a > b + 0.05 for a, b in zip(mine, spans[0]))
        print(f"  {name:<28} {sum(mine) / len(mine):5.2f} s   {shorter:3d} / {longer:3d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
