#!/usr/bin/env python3
"""Benchmark the Examiner (SPEC E5): a typical BLEU parser over 5000 experiment directories.

The tree is written in the runner's layout: per experiment a `param` (6 params plus `_name`,
`_output`, `_time`, `_scripts`), a `stat` and a 50-line `log.test.<time>` that reports BLEU once
near its end. The same parser (latest test log, regex the BLEU line) then runs in a fresh
interpreter for each implementation, and only `exam` + `table` is timed inside that process:

  * this package, serial and `workers=2`, with this interpreter;
  * mlrunner 0.5.9, serial and `workers=2`, from the interpreter in $MLRUNNER_OLD_PYTHON, else
    /tmp/old/bin/python, else a scratch venv under ~/.cache/mlrunner-bench where
    `pip install mlrunner==0.5.9` is tried once (its rows are left out when that fails).

Each is run --repeat times, interleaved, after one untimed pass that warms the file cache; the
median is reported, with the speed-up against 0.5.9 serial.

    python3 benchmarks/examine.py [--experiments 5000] [--repeat 3] [--keep]

A timing, not a test. Standard library only (plus mlrunner itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlrunner-bench"

# Run in each interpreter: the parser a user writes in a notebook, then the timed exam + table.
CHILD = r'''
import json, re, sys, time
from mlrunner.examine import Examiner, latest_log

BLEU = re.compile(r"BLEU4 = ([\d.]+)")


def add_bleu(output_dir, experiment, caches):
    log = latest_log("test", output_dir)
    if log is None:
        return
    with open(log) as stream:
        found = BLEU.findall(stream.read())
    experiment.metric["bleu"] = float(found[-1]) if found else None


output, workers = sys.argv[1], int(sys.argv[2])
try:  # 0.5.9 imports pandas with its module; import it untimed for both, so only the work is timed
    import pandas  # noqa: F401
except ImportError:
    pass
start = time.perf_counter()
examiner = Examiner()
examiner.add(add_bleu)
examiner.exam(output, workers=workers)
table = examiner.table()
seconds = time.perf_counter() - start
rows = table.to_dict("records") if hasattr(table, "to_dict") else table
print(json.dumps({"seconds": seconds, "rows": len(rows), "bleu": round(sum(r["bleu"] for r in rows), 2)}))
'''


def build_tree(output: Path, experiments: int) -> None:
    """`experiments` directories as the runner writes them, plus the params.yaml copy."""
    output.mkdir(parents=True)
    (output / "params.yaml").write_text("template:\n  test: python generate.py\n")
    noise = "".join(f"| epoch {i:03d} | loss {4.0 - i / 20:.3f} | lr 0.0005 | wps 41234 | ups 3.1\n" for i in range(47))
    for i in range(experiments):
        name = f"Norm_{['new', 'batch'][i % 2]}-Moment_{i % 10 / 100}-Lr_{i // 20}-Seed_{i}"
        directory = output / name
        directory.mkdir()
        (directory / "param").write_text(
            f"data: iwslt14\nnorm: {['new', 'batch'][i % 2]}\nmoment: {i % 10 / 100}\nlr: {i // 20}\n"
            f"seed: {i}\nearly-stop: false\n_name: {name}\n_output: {directory}\n_time: 20261128.013000\n"
            "_scripts:\n"
            f"  train: python train.py data-bin/iwslt14 --seed {i} --save-dir {directory} --max-epochs 80\n"
            f"  avg: python scripts/average_checkpoints.py --inputs {directory} --num-epoch-checkpoints 5\n"
            f"  test: python generate.py data-bin/iwslt14 --beam 5 --path {directory}/averaged_model.pt\n")
        (directory / "stat").write_text("avg: finished\ntest: finished\ntrain: finished\n")
        (directory / "log.test.20261128.013000").write_text(
            "loading model\n" + noise + f"BLEU4 = {20 + i % 100 / 10:.2f}, 60.2/33.5/21.0/13.6 (BP=1.000)\ndone\n")


def old_python() -> Optional[str]:
    """An interpreter with mlrunner 0.5.9, installing it into a scratch venv when needed."""
    for candidate in (os.environ.get("MLRUNNER_OLD_PYTHON"), "/tmp/old/bin/python"):
        if candidate and Path(candidate).exists():
            return candidate
    scratch = CACHE / "mlrunner-0.5.9"
    python = scratch / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        print(f"installing mlrunner==0.5.9 into {scratch} ...", file=sys.stderr)
        venv.create(scratch, with_pip=True)
        install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "mlrunner==0.5.9"],
                                 capture_output=True, text=True)
        if install.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            print(f"mlrunner 0.5.9 is not available ({install.stderr.strip().splitlines()[-1:]}); "
                  "its rows are left out", file=sys.stderr)
            return None
    return str(python)


def run_child(python: str, pythonpath: Optional[str], output: Path, workers: int, scratch: Path) -> Dict:
    """One timed exam in a fresh interpreter; its cwd is outside the repo so 0.5.9 is not shadowed."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    script = scratch / "child.py"
    script.write_text(CHILD)
    result = subprocess.run([python, str(script), str(output), str(workers)], cwd=scratch, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{python} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated tree and print its path")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="mlrunner-examine-bench."))
    output = scratch / "output"
    build_tree(output, args.experiments)
    implementations: List[Tuple[str, str, Optional[str], int]] = [
        ("mlrunner (this) serial", sys.executable, str(ROOT), 0),
        ("mlrunner (this) workers=2", sys.executable, str(ROOT), 2),
    ]
    old = old_python()
    if old:
        implementations += [("mlrunner 0.5.9 serial", old, None, 0), ("mlrunner 0.5.9 workers=2", old, None, 2)]
    try:
        run_child(sys.executable, str(ROOT), output, 0, scratch)  # warm the file cache, untimed
        seconds: Dict[str, List[float]] = {label: [] for label, *_ in implementations}
        answers = set()
        for _ in range(args.repeat):
            for label, python, pythonpath, workers in implementations:
                result = run_child(python, pythonpath, output, workers, scratch)
                seconds[label].append(result["seconds"])
                answers.add((result["rows"], result["bleu"]))
        if len(answers) != 1:
            raise SystemExit(f"implementations disagree on the table: {sorted(answers)}")
    finally:
        if args.keep:
            print(f"tree kept in {output}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    medians = {label: statistics.median(values) for label, values in seconds.items()}
    baseline = medians.get("mlrunner 0.5.9 serial")
    print(f"{args.experiments} experiments, median of {args.repeat}, exam + table only; CPUs: {os.cpu_count()}")
    print(f"{'implementation':<28} {'seconds':>8} {'experiments/s':>14} {'vs 0.5.9 serial':>16}")
    for label, value in medians.items():
        ratio = f"{baseline / value:.2f}x" if baseline else "n/a"
        print(f"{label:<28} {value:>8.3f} {args.experiments / value:>14.0f} {ratio:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
