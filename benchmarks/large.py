#!/usr/bin/env python3
"""Benchmark a large sweep (issue 15): 10^5 tasks, from launch to the first command, and on a
tree where all of them finished: a rerun, `--status` and `--examine`.

  * first command: `mlrunner` on a fresh output root; the command writes a timestamp; the run is
    stopped (SIGTERM) once the first one is there. The wall time is launch -> that timestamp.
  * rerun after a run: a run of --run-tasks commands of `true`, then a rerun (the run's journal).
  * rerun / --status / --examine: on a tree of 10^5 finished experiments, written the way the
    runner writes them (param and stat through mlrunner's own record functions), so that only
    the reading is timed. Each is timed without the index (`<output>/.mlrunner-index.*`
    deleted: the first reading of a tree), then with the index that a rerun (for itself and
    --status, which writes none) or --examine left.

Targets (issue 15, pip install with libyaml): first command <= 1.0 s, rerun <= 2.0 s,
--status <= 1.5 s, --examine <= 4 s. `--zipapp dist/mlrunner.pyz` times the zipapp instead
(pure-Python YAML; reported separately, no target).

    python3 benchmarks/large.py [--tasks 100000] [--repeat 3] [--zipapp PATH]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlrunner.run import records  # noqa: E402  (after the path is set)
from mlrunner.run.index import YOUNG  # noqa: E402
from mlrunner.run.state import FINISHED  # noqa: E402


def config(tasks: int) -> str:
    return ("template:\n  t: '[ -e first ] || date +%s.%N > first'\nresource: [0, 1, 2, 3, 4, 5, 6, 7]\n"
            "metric: {score: {command: t, regex: 'score ([0-9.]+)'}}\n---\n"
            f"i: [{', '.join(str(i) for i in range(tasks))}]\n")


def command(args: argparse.Namespace) -> List[str]:
    return [sys.executable, args.zipapp] if args.zipapp else [sys.executable, "-m", "mlrunner"]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), MLRUNNER_FSYNC="1")


def first_command(root: Path, args: argparse.Namespace) -> float:
    directory = Path(tempfile.mkdtemp(dir=root))
    (directory / "params.yaml").write_text(config(args.tasks))
    began = time.time()
    runner = subprocess.Popen(command(args), cwd=directory, env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    first = directory / "first"
    while not (first.exists() and first.read_text().strip()):
        if runner.poll() is not None:
            raise SystemExit(f"mlrunner ended ({runner.returncode}) before its first command")
        time.sleep(0.005)
    seconds = float(first.read_text()) - began
    runner.send_signal(signal.SIGTERM)
    runner.wait(60)
    return seconds


def finished_tree(directory: Path, tasks: int) -> None:
    """10^5 finished experiments, in the runner's own format (records.dumps), written directly:
    only the reading is timed, and writing them through the runner would take minutes."""
    (directory / "params.yaml").write_text(config(tasks))
    output = directory / "output"
    for i in range(tasks):
        name = f"I_{i}"
        path = output / name
        path.mkdir(parents=True)
        log = f"output/{name}/log.t.20261128.000000"
        line = f"export CUDA_VISIBLE_DEVICES=0; {{ [ -e first ] || date +%s.%N > first\n}} > {log} 2>&1"
        (path / "param").write_text(records.dumps({"i": i, "_name": name, "_output": f"output/{name}",
                                                   "_time": "20261128.000000", "_scripts": {"t": line}}))
        run = {"host": "bench", "worker": "0", "start": 1795800000.0 + i, "status": FINISHED, "log": log,
               "end": 1795800000.5 + i, "seconds": 0.5}
        (path / "stat").write_text(records.dumps({"t": FINISHED, "_runs": {"t": [run]}}, sort_keys=False))
        (path / "log.t.20261128.000000").write_text(f"score {i / tasks}\n")


def rerun_after_run(root: Path, args: argparse.Namespace) -> List[float]:
    """A rerun right after the run that made the tree: what the run told the index (its journal)
    spares the rerun the reading. Smaller than --tasks: the run itself takes minutes at 10^5."""
    directory = root / "ran"
    directory.mkdir()
    (directory / "params.yaml").write_text(config(args.run_tasks).replace("[ -e first ] || date +%s.%N > first",
                                                                          "true"))
    timed(command(args), directory)
    return [timed(command(args), directory) for _ in range(args.repeat)]


def timed(argv: List[str], cwd: Path) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-2:])}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--zipapp", help="time this zipapp instead of the installed package")
    parser.add_argument("--run-tasks", type=int, default=20_000, help="tasks of the run before the last rerun")
    args = parser.parse_args()
    if args.zipapp:
        args.zipapp = os.path.abspath(args.zipapp)  # it runs from the benchmark's directories
    import yaml
    which = f"zipapp {args.zipapp}" if args.zipapp else f"package (PyYAML {yaml.__version__}, libyaml " \
                                                         f"{'yes' if yaml.__with_libyaml__ else 'no'})"
    results = {}
    with tempfile.TemporaryDirectory(prefix="mlrunner-bench-large-") as scratch:
        root = Path(scratch)
        results["first command"] = [first_command(root, args) for _ in range(args.repeat)]
        tree = root / "tree"
        tree.mkdir()
        began = time.perf_counter()
        finished_tree(tree, args.tasks)
        print(f"(a tree of {args.tasks} finished experiments written in {time.perf_counter() - began:.1f} s)",
              file=sys.stderr)
        time.sleep(YOUNG)  # records younger than this are never cached (index.py)
        # Each reading without the index (the first reading of a tree), then with the index that
        # the command which makes it left: a rerun for itself and --status, --examine for itself.
        for name, extra, maker in (("rerun, all finished", [], []), ("--status", ["--status"], []),
                                   ("--examine", ["--examine"], ["--examine"])):
            cold = []
            for _ in range(args.repeat):
                for index in (tree / "output").glob(".mlrunner-index.*"):
                    index.unlink()
                cold.append(timed(command(args) + extra, tree))
            results[f"{name} (no index)"] = cold
            timed(command(args) + maker, tree)
            results[name] = [timed(command(args) + extra, tree) for _ in range(args.repeat)]
        results[f"rerun after a run of {args.run_tasks}"] = rerun_after_run(root, args)
    targets = {"first command": 1.0, "rerun, all finished": 2.0, "--status": 1.5, "--examine": 4.0}
    print(f"{args.tasks} tasks, {which}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"min / median of {args.repeat}")
    for name, values in results.items():
        verdict = "" if args.zipapp or name not in targets else f"target <= {targets[name]:.1f} s: " + \
            ("met" if statistics.median(values) <= targets[name] else "NOT met")
        print(f"{name:<32} {min(values):6.2f} / {statistics.median(values):6.2f} s   {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
