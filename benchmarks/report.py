#!/usr/bin/env python3
"""Benchmark `mlrunner --report` (SPEC V3: 10^4 experiments written in seconds, a few MB).

The tree is written directly in the runner's layout, with the `_runs` format of SPEC V2: per
experiment a `param` (4 swept params), a `stat` whose `train` has one or two runs (every tenth
failed once, then finished on another worker) and whose `test` has one, and a short log per run
that reports a loss and a BLEU. params.yaml at the root declares both as `metric:`; with --series,
`loss` is a series (`step: 'epoch (\\d+)'`, SPEC T13) and each train log prints --steps epochs, so
that the report draws a curve per experiment. The report is
then written by `python3 -m mlrunner --report` in a fresh process, --repeat times after one
untimed pass that warms the file cache; the median wall time and the file size are printed.

    python3 benchmarks/report.py [--experiments 10000] [--workers 8] [--repeat 3] [--keep]
    python3 benchmarks/report.py --series --steps 1000

A timing, not a test. Standard library only (plus mlrunner itself).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import busy_cores  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mlrunner.run import records  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
template:
  train: python train.py [lr] [dropout] [layers] [seed]
  test: python test.py [seed]
default: {lr: 0.001, dropout: 0.1, layers: 6, seed: 1}
metric:
  loss: {command: train, regex: 'loss ([\\d.]+)'}
  bleu: {command: test, regex: 'BLEU4 = ([\\d.]+)'}
"""


def write_tree(root: Path, experiments: int, workers: int, steps: int = 0) -> None:
    """`steps`: 0 for 20 lines of epoch 1 per train log, else that many epochs and `loss` a series."""
    output = root / "output"
    output.mkdir(parents=True)
    series = ", step: 'epoch (\\d+)'}" if steps else "}"
    (root / "params.yaml").write_text(CONFIG.replace("'loss ([\\d.]+)'}", "'loss ([\\d.]+)'" + series))
    grid = itertools.product([0.1, 0.03, 0.01, 0.003, 0.001], [0.0, 0.1, 0.2, 0.3], [2, 4, 6, 8, 12], range(1000))
    clock = [1764305400.0] * workers  # when each worker is free again
    for index, (lr, dropout, layers, seed) in enumerate(itertools.islice(grid, experiments)):
        name = f"Lr_{lr:g}-Dropout_{dropout:g}-Layers_{layers}-Seed_{seed}"
        directory = output / name
        directory.mkdir()
        (directory / "param").write_text(f"lr: {lr}\ndropout: {dropout}\nlayers: {layers}\nseed: {seed}\n"
                                         f"_name: {name}\n_output: output/{name}\n_time: '20261128.045000'\n")
        runs = {"train": [], "test": []}
        attempts = [("train", "failed"), ("train", "finished")] if index % 10 == 0 else [("train", "finished")]
        for number, (command, status) in enumerate(attempts + [("test", "finished")]):
            worker = min(range(workers), key=clock.__getitem__)
            seconds = 60.0 + (index * 7 + number * 13) % 240
            start, end = clock[worker] + 2.0, clock[worker] + 2.0 + seconds
            clock[worker] = end
            log = f"log.{command}.20261128.0450{number:02d}"
            bleu = 20 + 10 * lr ** 0.5 - dropout + layers / 10 + seed % 7 / 10
            epochs = "".join(f"epoch {i} loss {(2 + lr) / i ** 0.5:.3f}\n" for i in range(1, steps + 1))
            text = ((epochs or f"epoch 1 loss {2 + lr:.3f}\n" * 20) + (f"BLEU4 = {bleu:.2f}, 60.1/33.2\n" if command == "test"
                                                           else ("Traceback: CUDA error\n" if status == "failed" else "")))
            (directory / log).write_text(text)
            runs[command].append({"worker": str(worker), "host": "localhost", "start": start, "end": end,
                                  "seconds": seconds, "status": status, "log": f"output/{name}/{log}"})
        # As the runner writes it: block style, commands first (records.dumps, as state.py calls it).
        stat = {"train": "finished", "test": "finished", "_runs": runs}
        (directory / "stat").write_text(records.dumps(stat, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the tree and print where it is")
    parser.add_argument("--series", action="store_true", help="loss is a series metric: a curve per experiment")
    parser.add_argument("--steps", type=int, default=20, help="epochs per train log with --series")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlrunner-report-bench-"))
    try:
        started = time.perf_counter()
        write_tree(root, args.experiments, args.workers, args.steps if args.series else 0)
        print(f"tree: {args.experiments} experiments, {args.workers} workers"
              + (f", loss a series of {args.steps} steps" if args.series else "") + ", written in "
              f"{time.perf_counter() - started:.1f} s")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        command = [sys.executable, "-m", "mlrunner", "--report"]
        subprocess.run(command, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)  # warm the cache
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run(command, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
        report = root / "output" / "report.html"
        print(f"--report: median {statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)}), "
              f"{report.stat().st_size / 2**20:.1f} MiB")
        busy = busy_cores()
        if busy is not None:
            print(f"cores busy with other work meanwhile: {busy:.1f} of {os.cpu_count()}")
        if args.keep:
            print(f"kept: {report}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
