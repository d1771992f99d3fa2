#!/usr/bin/env python3
"""Benchmark dispatch: 1000 `echo i` commands on 8 workers, mlrunner against GNU parallel and a floor.

  * mlrunner: the real CLI, `python3 -m mlrunner`, on a params.yaml with `template: {run: echo {i}}`,
    `resource: [0..7]` and one sweep `i: [0..999]`, with all its bookkeeping (a directory, a log,
    `param` and `stat` per experiment), console output to /dev/null. Its wall time includes the
    interpreter's start; the row "minus startup" takes off the median time of `--dry-run` of a
    1-task config (start, imports, config load, one printed line).
  * GNU parallel: `parallel -j8` running `CUDA_VISIBLE_DEVICES=<slot-1> echo i > <dir>/log.i 2>&1`
    under bash for each i, one log file per job. Installed with apt-get when missing (as root).
  * floor: this process, 8 threads, each `subprocess.Popen(["bash", "-c", "CUDA_VISIBLE_DEVICES=k
    echo i > log 2>&1"]).wait()` in turn: the cost of starting the shells, no bookkeeping.
  * durable floor: the same records with the same durability as mlrunner, written the cheapest way:
    8 threads, and for each task, with f-strings and raw os calls, what mlrunner does to its
    records: mkdir of the experiment directory; `param` written atomically (temporary file +
    os.replace) with the bytes mlrunner writes; the log reserved (O_CREAT|O_EXCL); the shell
    started as mlrunner starts it (the same bash path, line, environment, own session, stdin
    from one /dev/null opened once); `stat` with the `running` record (pid, pgid and their start
    times from /proc; temporary file + os.replace); wait; `stat` with the `finished` record, the
    file then its directory fsync'd before the thread takes its next task (SPEC R7, I3, I5). It takes no lock and reads no
    record back (it knows what it wrote), so it is a floor for mlrunner's work, not a rival.
    The check after it compares its `param` and `stat` bytes with mlrunner's, times and pids aside.

  * mlrunner without fsync: the same run with MLRUNNER_FSYNC=0, to show what I5's durability costs.

Each is measured --repeat times (interleaved, fresh directories) and the median is reported.
Targets (from the issue): mlrunner at least 4x GNU parallel's rate, at least two thirds of the
floor's rate, and at least 0.9 of the durable floor's rate.

    python3 benchmarks/dispatch.py [--commands 1000] [--workers 8] [--repeat 3]

Standard library only (plus mlrunner itself). This is a script, not a test.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

from _common import busy_cores  # benchmarks/ is sys.path[0] when run as a script


def write_config(path: str, commands: int, workers: int) -> None:
    with open(path, "w", encoding="utf-8") as stream:
        stream.write("template:\n  run: echo {i}\n")
        stream.write(f"resource: [{', '.join(str(k) for k in range(workers))}]\n---\n")
        stream.write(f"i: [{', '.join(str(i) for i in range(commands))}]\n")


# A user's ordinary shell: PYTHONUNBUFFERED (set in some sandboxes) would make every line a write(2).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
PROBLEMS: List[str] = []  # what the checks after each run found missing


def timed(argv: List[str], cwd: str, stdin: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> float:
    """Wall seconds of one child process; a non-zero exit stops the benchmark."""
    env = ENV if env is None else env
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, input=stdin, text=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... exited with {result.returncode}: {result.stderr.strip()}")
    return seconds


# --- the three implementations -------------------------------------------------------------------

def mlrunner_startup(root: str) -> float:
    """Start-up cost of the CLI: `--dry-run` of a 1-task config."""
    config = os.path.join(root, "one.yaml")
    write_config(config, 1, 1)
    return timed([sys.executable, "-m", "mlrunner", "-y", config, "--dry-run", "-r", "0"], root)


def mlrunner_run(root: str, run: int, commands: int, workers: int, fsync: bool = True) -> float:
    config = os.path.join(root, "params.yaml")
    if not os.path.exists(config):
        write_config(config, commands, workers)
    output = os.path.join(root, f"mlrunner.{run}" + ("" if fsync else ".nofsync"))
    env = ENV if fsync else dict(ENV, MLRUNNER_FSYNC="0")
    seconds = timed([sys.executable, "-m", "mlrunner", "-y", config, "-o", output], root, env=env)
    check_mlrunner(output, commands)
    return seconds


def mlrunner_no_fsync(root: str, run: int, commands: int, workers: int) -> float:
    """The same run without I5's fsync of each ended record (MLRUNNER_FSYNC=0): what durability costs."""
    return mlrunner_run(root, run, commands, workers, fsync=False)


def check_mlrunner(output: str, commands: int) -> None:
    """Every experiment ran: a log, a param file and a `finished` stat (checked after the clock stops).

    A shortfall is noted and printed under the table rather than stopping the benchmark.
    """
    experiments = [e.path for e in os.scandir(output) if e.is_dir()]
    finished = no_param = no_stat = no_log = 0
    for directory in experiments:
        names = os.listdir(directory)
        no_param += "param" not in names
        no_log += not any(name.startswith("log.run.") for name in names)
        if "stat" not in names:
            no_stat += 1
            continue
        with open(os.path.join(directory, "stat"), encoding="utf-8") as stream:
            finished += "run: finished" in stream.read()
    if (len(experiments), finished) != (commands, commands):
        PROBLEMS.append(f"{os.path.basename(output)}: {len(experiments)} experiment directories, "
                        f"{finished} stat files saying finished, {no_stat} without stat, "
                        f"{no_param} without param, {no_log} without log (expected {commands} finished)")


def gnu_parallel(root: str, run: int, commands: int, workers: int) -> float:
    logs = os.path.join(root, f"parallel.{run}")
    os.makedirs(logs)
    # {%} is the job slot, 1..workers; $(( )) is bash arithmetic, no extra process.
    job = f"CUDA_VISIBLE_DEVICES=$(({{%}}-1)) echo {{}} > {logs}/log.{{}} 2>&1"
    env = dict(ENV, PARALLEL_SHELL=shutil.which("bash") or "/bin/bash")
    numbers = "".join(f"{i}\n" for i in range(commands))
    seconds = timed(["parallel", "--will-cite", f"-j{workers}", job], root, stdin=numbers, env=env)
    check_logs(logs, commands)
    return seconds


def threads_timed(worker: Callable[[int], None], workers: int) -> float:
    """Wall seconds of `workers` threads running `worker(k)`, k = 0 .. workers - 1."""
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def floor(root: str, run: int, commands: int, workers: int) -> float:
    logs = os.path.join(root, f"floor.{run}")
    os.makedirs(logs)
    pool: "queue.Queue[int]" = queue.Queue()
    for i in range(commands):
        pool.put(i)

    def worker(k: int) -> None:
        while True:
            try:
                i = pool.get_nowait()
            except queue.Empty:
                return
            subprocess.Popen(["bash", "-c", f"CUDA_VISIBLE_DEVICES={k} echo {i} > {logs}/log.{i} 2>&1"]).wait()

    seconds = threads_timed(worker, workers)
    check_logs(logs, commands)
    return seconds


def durable_floor(root: str, run: int, commands: int, workers: int) -> float:
    """mlrunner's records and durability, each task written with f-strings and raw os calls."""
    output = os.path.join(root, f"durable.{run}")
    os.makedirs(output)
    run_time = time.strftime("%Y%m%d.%H%M%S")
    host, pid, pid_start = socket.gethostname(), os.getpid(), proc_start(os.getpid())
    which = "import sys; print(sys.executable); print(sys.version.split()[0])"
    python, version = subprocess.run(["python3", "-c", which], stdout=subprocess.PIPE, text=True,
                                     check=True).stdout.split()
    made_by = f"    node: {host}\n    python: {python}\n    python_version: {version}\n"  # provenance, once a run
    bash = shutil.which("bash") or "bash"
    stdin = os.open(os.devnull, os.O_RDONLY)
    pool: "queue.Queue[int]" = queue.Queue()
    for i in range(commands):
        pool.put(i)

    def replace(path: str, text: str, durable: bool = False) -> None:
        temporary = f"{path}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(descriptor, text.encode())
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)

    def worker(k: int) -> None:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(k))
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        while True:
            try:
                i = pool.get_nowait()
            except queue.Empty:
                return
            directory = f"{output}/I_{i}"
            log = f"{directory}/log.run.{run_time}"
            os.mkdir(directory)
            replace(f"{directory}/param", f"_name: I_{i}\n_output: {directory}\n_scripts:\n"
                                          f"  run: 'export CUDA_VISIBLE_DEVICES={k}; {{ echo {i}\n\n"
                                          f"    }} > {log} 2>&1'\n_time: '{run_time}'\ni: {i}\n")
            os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            process = subprocess.Popen([bash, "-c", f"export CUDA_VISIBLE_DEVICES={k}; {{ echo {i}\n}} > {log} 2>&1"],
                                       env=env, stdin=stdin, start_new_session=True)
            began, start = time.monotonic(), round(time.time(), 3)
            head = f"  - host: {host}\n"
            tail = f"    worker: '{k}'\n    start: {start!r}\n"
            replace(f"{directory}/stat", f"run: running\n_runs:\n  run:\n{head}    pid: {pid}\n"
                                         f"    pid_start: {pid_start}\n{tail}    status: running\n"
                                         f"    log: {log}\n    pgid: {process.pid}\n"
                                         f"    pgid_start: {proc_start(process.pid)}\n")
            process.wait()
            seconds = round(time.monotonic() - began, 3)
            replace(f"{directory}/stat", f"run: finished\n_runs:\n  run:\n{head}{tail}    status: finished\n"
                                         f"    log: {log}\n{made_by}    end: {round(time.time(), 3)!r}\n"
                                         f"    seconds: {seconds!r}\n", durable=True)
            descriptor = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    seconds = threads_timed(worker, workers)
    os.close(stdin)
    check_same_records(output, os.path.join(root, f"mlrunner.{run}"), commands)
    return seconds


def proc_start(pid: int) -> int:
    """The kernel's start time of a process, as mlrunner records it (I3)."""
    with open(f"/proc/{pid}/stat", "rb") as stream:
        return int(stream.read().rsplit(b")", 1)[1].split()[19])


# Times, pids, workers and the run's own directory differ between two runs; nothing else may.
VARYING_RE = re.compile(r"(?m)^( *(?:- )?(?:pid|pid_start|pgid|pgid_start|start|end|seconds|worker): ).*$"
                        r"|\d{8}\.\d{6}|(?<=CUDA_VISIBLE_DEVICES=)[0-9]+")


def check_same_records(output: str, reference: str, commands: int) -> None:
    """The durable floor wrote what mlrunner wrote (when mlrunner's run is there to compare with)."""
    if not os.path.isdir(reference):
        return
    differing = []
    for i in range(commands):
        for name in ("param", "stat"):
            texts = []
            for tree in (output, reference):
                with open(f"{tree}/I_{i}/{name}", encoding="utf-8") as stream:
                    text = stream.read().replace(tree, "<output>")
                texts.append(VARYING_RE.sub(lambda m: (m.group(1) or "") + "*", text))
            if texts[0] != texts[1]:
                differing.append(f"I_{i}/{name}")
    if differing:
        PROBLEMS.append(f"{os.path.basename(output)}: {len(differing)} records differ from mlrunner's "
                        f"beyond times and pids, e.g. {differing[0]}")


def check_logs(directory: str, commands: int) -> None:
    count = len(os.listdir(directory))
    if count != commands:
        PROBLEMS.append(f"{os.path.basename(directory)}: {count} logs, expected {commands}")


# --- GNU parallel --------------------------------------------------------------------------------

def is_gnu_parallel() -> bool:
    """moreutils also ships a `parallel`; only GNU's takes {%} and --will-cite."""
    if shutil.which("parallel") is None:
        return False
    result = subprocess.run(["parallel", "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)
    return "GNU parallel" in result.stdout


def ensure_gnu_parallel() -> bool:
    """Install Debian's `parallel` when GNU parallel is missing; say so either way."""
    if is_gnu_parallel():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("GNU parallel is missing (install Debian's `parallel` package); its row is left out",
              file=sys.stderr)
        return False
    print("GNU parallel is missing: installing Debian's `parallel` package with apt-get ...", file=sys.stderr)
    install = ["apt-get", "install", "-y", "-q", "parallel"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "stdin": subprocess.DEVNULL,
             "env": dict(os.environ, DEBIAN_FRONTEND="noninteractive")}
    if subprocess.run(install, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], **quiet)
        subprocess.run(install, **quiet)
    if is_gnu_parallel():
        print("GNU parallel installed", file=sys.stderr)
        return True
    print("could not install GNU parallel; its row is left out", file=sys.stderr)
    return False


def workers_note(args: argparse.Namespace) -> str:
    return f"{args.workers} workers (each fsync waits for the disk, {args.workers} at a time)"


# --- report --------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    implementations: Dict[str, Callable[[str, int, int, int], float]] = {
        "mlrunner": mlrunner_run, "mlrunner, no fsync (MLRUNNER_FSYNC=0)": mlrunner_no_fsync}
    if ensure_gnu_parallel():
        implementations[f"GNU parallel -j{args.workers}"] = gnu_parallel
    implementations[f"floor: {args.workers} threads x Popen(bash)"] = floor
    implementations[f"durable floor: {args.workers} threads, same records, fsync"] = durable_floor

    load_before = busy_cores()
    times: Dict[str, List[float]] = {name: [] for name in implementations}
    with tempfile.TemporaryDirectory(prefix="mlrunner-bench-dispatch-") as root:
        startup = statistics.median(mlrunner_startup(root) for _ in range(5))
        for run in range(args.repeat):  # interleaved, so that drift in machine load hits all alike
            for name, function in implementations.items():
                times[name].append(function(root, run, args.commands, args.workers))
                print(f"  run {run + 1}/{args.repeat} {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)

    load_after = busy_cores()
    seconds = {name: statistics.median(values) for name, values in times.items()}
    rows = [("mlrunner (whole CLI run)", seconds["mlrunner"])]
    rows.append(("mlrunner minus startup", seconds["mlrunner"] - startup))
    rows += [(name, value) for name, value in seconds.items() if name != "mlrunner"]
    reference = args.commands / seconds["mlrunner"]

    print(f"{args.commands} commands `echo i` on {args.workers} workers, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}; median of {args.repeat}; "
          f"mlrunner startup (1-task --dry-run, median of 5): {startup:.3f} s")
    loads = " / ".join("?" if load is None else f"{load:.1f}" for load in (load_before, load_after))
    print(f"cores busy with other work before / after: {loads} (of {os.cpu_count()})")
    width = max(len(name) for name, _ in rows)
    print(f"{'implementation':<{width}}  {'seconds':>8}  {'commands/s':>10}  {'rate / mlrunner (whole run)':>27}")
    for name, value in rows:
        rate = args.commands / value
        print(f"{name:<{width}}  {value:8.2f}  {rate:10.1f}  {rate / reference:27.2f}")
    print("runs (s): " + "; ".join(f"{name}: {', '.join(f'{t:.2f}' for t in values)}"
                                   for name, values in times.items()))

    cost = (seconds["mlrunner"] - seconds["mlrunner, no fsync (MLRUNNER_FSYNC=0)"]) / args.commands
    print(f"fsync of ended records (I5): {cost * 1000:+.2f} ms per finished command, wall, on {workers_note(args)}")
    whole = args.commands / seconds["mlrunner"]
    net = args.commands / (seconds["mlrunner"] - startup)
    for name, value in seconds.items():
        if name.startswith("GNU"):
            rate = args.commands / value
            print(f"target mlrunner >= 4x GNU parallel: {whole / rate:.2f}x (whole run) -> "
                  f"{'met' if whole >= 4 * rate else 'NOT met'}")
        if name.startswith("floor"):
            rate = args.commands / value
            print(f"target mlrunner >= 2/3 of the floor: {net / rate:.2f} (minus startup), "
                  f"{whole / rate:.2f} (whole run) -> {'met' if net >= rate * 2 / 3 else 'NOT met'}")
        if name.startswith("durable floor"):
            rate = args.commands / value
            print(f"target mlrunner >= 0.9 x the durable floor: {net / rate:.2f} (minus startup), "
                  f"{whole / rate:.2f} (whole run) -> {'met' if net >= rate * 0.9 else 'NOT met'}")
    for problem in PROBLEMS:
        print(f"CHECK FAILED {problem}")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
