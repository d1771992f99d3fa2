#!/usr/bin/env python3
"""Benchmark the Slurm driver (SPEC S1-S3) on a real one-node cluster (tests/slurmd.py), in one run.

(a) Submission of a 10^4-task sweep: wall time of `python3 -m mlrunner` (expansion, resume review
    of 10^4 missing records, manifest, one `sbatch --array` per MaxArraySize chunk; MaxArraySize
    1001, Slurm's default), the sbatch calls it made, against one plain `sbatch` per task
    (the median of --probe single submissions, times 10^4). The jobs are submitted held
    (`options: [--hold]`) and cancelled afterwards, so the node does not run them.
(b) Load while waiting: `--wait` on that held submission for --window seconds with the default
    queue poll (MLRUNNER_SLURM_POLL unset: 30 s), counting every Slurm command the driver runs
    (a counting shim on PATH before squeue, sacct, scontrol, sbatch) and the driver's CPU time
    (it reads the 10^4 records every second).

    python3 benchmarks/slurm.py [--tasks 10000] [--window 65] [--probe 20]

Needs root and Debian's slurm-wlm. A script, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "benchmarks")]

import slurmd  # noqa: E402
from _common import busy_cores  # noqa: E402

SHIMMED = ("squeue", "sacct", "scontrol", "sbatch", "scancel")


def shims(directory: Path, counts: Path) -> None:
    """A script per Slurm command that notes its call in `counts`, then runs the real one."""
    directory.mkdir()
    for name in SHIMMED:
        real = shutil.which(name)
        shim = directory / name
        shim.write_text(f"#!/bin/sh\necho {name} >> {counts}\nexec {real} \"$@\"\n")
        shim.chmod(0o755)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--window", type=float, default=65.0, help="seconds of --wait to count calls over")
    parser.add_argument("--probe", type=int, default=20, help="plain sbatch calls timed for the per-task figure")
    options = parser.parse_args()
    if not slurmd.slurm_available():
        print(f"benchmarks/slurm.py: {slurmd.INSTALL_HINT}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the cluster
    print(f"busy cores (others' load) before: {busy_cores()}")
    work = Path(tempfile.mkdtemp(prefix="mlrunner-slurm-bench-"))
    cluster = slurmd.SlurmCluster(work / "cluster", max_array_size=1001,
                                 max_job_count=4 * options.tasks).start()
    try:
        project = work / "project"
        project.mkdir()
        values = ", ".join(str(i) for i in range(options.tasks))
        (project / "params.yaml").write_text(
            "template:\n  train: echo {i}\nslurm: {gpus: 0, options: [--hold]}\n---\n" f"i: [{values}]\n")
        counts = work / "calls"
        shims(work / "bin", counts)
        env = cluster.env({"PYTHONPATH": str(REPO), "PATH": f"{work / 'bin'}:{os.environ['PATH']}",
                           "MLRUNNER_FSYNC": "1"})
        env.pop("MLRUNNER_SLURM_POLL", None)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "mlrunner"], cwd=project, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        submit_seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        calls = counts.read_text().split()
        print(f"(a) submitting {options.tasks} tasks: {submit_seconds:.2f} s wall, "
              f"{calls.count('sbatch')} sbatch call(s), {calls.count('squeue')} squeue, "
              f"{calls.count('scontrol')} scontrol")
        probe = []
        script = work / "probe.sh"
        script.write_text("#!/bin/sh\ntrue\n")
        for _ in range(options.probe):
            begin = time.monotonic()
            subprocess.run(["sbatch", "--hold", "--parsable", "-o", "/dev/null", str(script)], env=cluster.env(),
                           check=True, stdout=subprocess.DEVNULL)
            probe.append(time.monotonic() - begin)
        each = statistics.median(probe)
        print(f"    one plain sbatch per task instead: {each * 1000:.1f} ms median x {options.tasks} = "
              f"{each * options.tasks:.1f} s")
        counts.write_text("")
        waiter = subprocess.Popen([sys.executable, "-m", "mlrunner", "--wait"], cwd=project, env=env, text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(options.window)
        with open(f"/proc/{waiter.pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        waiter.send_signal(signal.SIGINT)
        waiter.wait(30)
        calls = counts.read_text().split()
        per_minute = {name: calls.count(name) * 60 / options.window for name in SHIMMED}
        print(f"(b) --wait over {options.window:.0f} s on the {options.tasks} held tasks (a rerun's --wait: it "
              f"finds them held and submits nothing): " + ", ".join(f"{n} {v:.1f}/min" for n, v in per_minute.items())
              + f"; driver CPU {cpu:.1f} s ({cpu / options.window * 100:.0f}% of one core)")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
