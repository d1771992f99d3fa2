#!/usr/bin/env python3
"""Benchmark sweep expansion (SPEC X5): `--dry-run` of 10^4..10^6 combinations, time and memory.

For each size it writes a params.yaml into a temporary directory (4 swept params; 2 commands that
use `{p}`, `[p]` and `{_output}`), then

  * runs the real CLI, `python3 -m mlrunner -y <file> --dry-run -r 0`, as a child process with its
    stdout sent to /dev/null, and takes the child's wall time and peak RSS (from os.wait4's rusage
    of that one child); median of --repeat runs. PYTHONUNBUFFERED is removed from the child's
    environment (it makes every printed line a write(2), about +20% at 10^5 here), so that the
    figures are those of a user's ordinary shell;
  * for the smaller sizes, times `sweep.expand(...)` alone in this process, then runs it again
    under tracemalloc for its peak of Python allocations.

X5's target: 10^5 combinations list in a few seconds, with memory linear in the task count.

    python3 benchmarks/expand.py                      # 10^4, 10^5, 10^6
    python3 benchmarks/expand.py --sizes 10000 100000 --repeat 1

Standard library only (plus mlrunner itself). This is a script, not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import List, Optional, Tuple

from _common import busy_cores  # benchmarks/ is sys.path[0] when run as a script

# Four swept lists whose product is the wanted size: 10 x 10 x 10 x (size / 1000) for 10^4 and
# 10^5, 10 x 10 x 100 x 100 for 10^6; a mix of floats, ints, strings and ints.
SHAPES = {
    10 ** 4: (10, 10, 10, 10),
    10 ** 5: (10, 10, 10, 100),
    10 ** 6: (10, 10, 100, 100),
}

CONFIG = """\
template:
  train: python3 train.py [lr] [layers] --norm {norm} --seed {seed} [warmup] --save-dir {_output}
  test: python3 evaluate.py {_output} {norm} [seed]
default:
  lr: 0.1
  layers: 2
  norm: batch
  seed: 1
  warmup: false
resource: [0]
---
"""


def shape_for(size: int) -> Tuple[int, int, int, int]:
    if size in SHAPES:
        return SHAPES[size]
    if size % 1000:
        raise SystemExit(f"--sizes: {size} is not a multiple of 1000 (10 x 10 x 10 x N)")
    return (10, 10, 10, size // 1000)


def write_config(directory: str, shape: Tuple[int, int, int, int]) -> str:
    """A params.yaml whose one sweep document has the product of `shape` combinations."""
    n_lr, n_layers, n_norm, n_seed = shape
    lrs = ", ".join(repr(round(0.001 * (i + 1), 6)) for i in range(n_lr))
    layers = ", ".join(str(2 + i) for i in range(n_layers))
    norms = ", ".join(f"norm{i}" for i in range(n_norm))
    seeds = ", ".join(str(i) for i in range(n_seed))
    path = os.path.join(directory, "params.{}x{}x{}x{}.yaml".format(*shape))
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(CONFIG)
        stream.write(f"lr: [{lrs}]\nlayers: [{layers}]\nnorm: [{norms}]\nseed: [{seeds}]\n")
    return path


def run_cli(path: str, cwd: str) -> Tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit status) of one `--dry-run` child.

    os.wait4 returns the rusage of exactly this child, so its ru_maxrss is the child's own peak
    (RUSAGE_CHILDREN would report the maximum over every child waited for so far).
    """
    argv = [sys.executable, "-m", "mlrunner", "-y", path, "--dry-run", "-r", "0"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    started = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    return seconds, usage.ru_maxrss / 1024, child.returncode  # ru_maxrss is in KiB on Linux


def run_cli_median(path: str, cwd: str, repeat: int) -> Tuple[float, float, int]:
    runs = [run_cli(path, cwd) for _ in range(repeat)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            max(r[2] for r in runs))


def expand_in_process(path: str) -> Tuple[float, float, int]:
    """(seconds, tracemalloc peak MiB, task count) of `sweep.expand` alone; the load is not counted."""
    from mlrunner.plan import config as config_module, sweep

    config = config_module.load(path)
    sweeps = config_module.select_sweeps(config, None)

    gc.collect()
    started = time.perf_counter()
    plan = sweep.expand(config, sweeps, "output")
    seconds = time.perf_counter() - started
    tasks = len(plan.tasks)
    del plan
    gc.collect()

    # Second pass for memory: tracemalloc slows allocation down, so it is kept out of the timing.
    tracemalloc.start()
    plan = sweep.expand(config, sweeps, "output")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del plan
    gc.collect()
    return seconds, peak / 2 ** 20, tasks


def fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10 ** 4, 10 ** 5, 10 ** 6],
                        help="combination counts to measure")
    parser.add_argument("--in-process-max", type=int, default=10 ** 5,
                        help="measure expand() in-process only up to this size")
    parser.add_argument("--repeat", type=int, default=3, help="CLI runs per size; the median is shown")
    args = parser.parse_args(argv)

    load_before = busy_cores()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlrunner-bench-expand-") as directory:
        # The interpreter, PyYAML and mlrunner alone: what every CLI row carries on top of its tasks.
        base_seconds, base_mib, _ = run_cli_median(write_config(directory, (1, 1, 1, 1)), directory, 5)

        for size in args.sizes:
            path = write_config(directory, shape_for(size))
            cli_seconds, cli_mib, status = run_cli_median(path, directory, args.repeat)
            if status != 0:
                print(f"{size}: the CLI exited with status {status}", file=sys.stderr)
            expand_seconds = expand_mib = None
            if size <= args.in_process_max:
                expand_seconds, expand_mib, tasks = expand_in_process(path)
                if tasks != size:
                    print(f"{size}: expand() gave {tasks} tasks", file=sys.stderr)
            rows.append((size, cli_seconds, cli_mib, expand_seconds, expand_mib))
            print(f"  measured {size:,} combinations", file=sys.stderr, flush=True)

    load_after = busy_cores()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; CLI figures: median of {args.repeat} runs; "
          f"CLI with 1 task: {base_seconds:.2f} s, {base_mib:.1f} MiB peak RSS")
    print(f"cores busy with other work before / after: {fmt(load_before, '.1f')} / {fmt(load_after, '.1f')}")
    header = ("combinations", "CLI s", "CLI peak MiB", "CLI KiB/task", "expand s", "expand peak MiB",
              "expand KiB/task")
    print("  ".join(f"{h:>{max(len(h), 9)}}" for h in header))
    for size, cli_seconds, cli_mib, expand_seconds, expand_mib in rows:
        per_task = (cli_mib - base_mib) * 1024 / size
        expand_per_task = None if expand_mib is None else expand_mib * 1024 / size
        cells = (f"{size:,}", f"{cli_seconds:.2f}", f"{cli_mib:.1f}", f"{per_task:.2f}",
                 fmt(expand_seconds, ".2f"), fmt(expand_mib, ".1f"), fmt(expand_per_task, ".2f"))
        print("  ".join(f"{c:>{max(len(h), 9)}}" for c, h in zip(cells, header)))
    print("CLI KiB/task = (peak RSS - the 1-task run's peak RSS) / combinations; "
          "a steady figure down the column means memory is linear in the task count.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
