#!/usr/bin/env python3
"""Benchmark remote hosts (SPEC H1-H7) over loopback OpenSSH servers (tests/sshd.py), in one run.

(a) Per-command overhead: 200 x `true` on 4 remote workers (2 servers x `resource: [0, 1]`, `-r`
    alone: no local worker) through the real CLI (`python3 -m mlrunner`, HOME = a fake home), all
    bookkeeping and sync-back included, against OpenSSH `ssh -F <cfg> hostN true`, 4 at a time for
    the same 200 commands. Also the sequential latency (median of 20) of one `ssh host1 true` and of
    one command through an open mlrunner `Host` (mkdir, start, wait, pull). Run twice: with
    the servers' tiny .bashrc, then with BASHRC_EXTRA appended to it (printed): the start-up cost a
    login pays on a real machine (conda init and the like).
(b) Sync-back of 1000 files (1-4 KB, 10 x 10 nested directories) made in a remote workdir:
    `Host.pull` (sync.pull over the connection's SFTP channel) against `rsync -a -e "ssh -F
    <cfg>"` (a new login each, tiny .bashrc), first sync (empty local dir) and no-change sync.
    rsync is installed with `apt-get install -y rsync` when missing (as root).
(c) Code push (H13) of a 2,000-file tree (1-4 KB, 10 x 10 nested directories, no git): mlrunner's
    `push` over an open connection (stat request, tar bundle over SFTP, agent unpacks) against
    `rsync -a` over ssh to the same host, first push (empty workdir) and unchanged push.

Targets (from the issue): mlrunner >= 5x less overhead per command than OpenSSH; first sync within
2x of rsync; no-change sync faster than rsync's. Figures are medians of --repeat interleaved runs;
the single runs go to stderr.

    python3 benchmarks/remote.py [--commands 200] [--files 1000] [--repeat 3]

Needs sshd, ssh and paramiko. A script, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import sshd  # noqa: E402  (tests/sshd.py)
from _common import busy_cores  # noqa: E402  (benchmarks/ is sys.path[0] too)
from mlrunner.backends.ssh import Host  # noqa: E402
from mlrunner.backends.ssh.push import push  # noqa: E402
from mlrunner.plan.hosts import HostSpec  # noqa: E402
from mlrunner.plan.template import shell_line  # noqa: E402

BASHRC_EXTRA = "sleep 0.1  # benchmarks/remote.py: a realistic login start-up cost (conda init, module load)\n"
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
PROBLEMS: List[str] = []


def medians(repeat: int, measures: Dict[str, Callable[[], float]]) -> Dict[str, float]:
    """Median seconds of each measure, run interleaved so that drift in machine load hits all alike."""
    times: Dict[str, List[float]] = {name: [] for name in measures}
    for _ in range(repeat):
        for name, measure in measures.items():
            times[name].append(measure())
    for name, values in times.items():
        print(f"  {name}: {' '.join(f'{v:.3f}' for v in values)}", file=sys.stderr, flush=True)
    return {name: statistics.median(values) for name, values in times.items()}


def check(ok: bool, what: str) -> None:
    if not ok:
        PROBLEMS.append(what)


# --- (a) per-command overhead ---------------------------------------------------------------------

def mlrunner_cli(root: Path, home: Path, servers, commands: int, tag: str) -> float:
    """Wall seconds of `python3 -m mlrunner -r` running `commands` x `true` on the hosts' 4 workers."""
    project = root / f"project.{tag}"
    project.mkdir()
    hosts = "".join(f"  {s.alias}: {{workdir: {s.workdir}/{tag}, resource: [0, 1]}}\n" for s in servers)
    (project / "params.yaml").write_text(
        f'template:\n  run: "true"\nhosts:\n{hosts}---\ni: [{", ".join(map(str, range(commands)))}]\n')
    env = dict(ENV, HOME=str(home), PYTHONPATH=str(REPO))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlrunner", "-r"], cwd=project, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    stats = [p.read_text() for p in project.glob("output/*/stat")]
    finished = sum("run: finished" in text and "worker: host" in text for text in stats)
    logs = len(list(project.glob("output/*/log.run.*")))  # synced back
    check(done.returncode == 0 and finished == logs == commands,
          f"mlrunner {tag}: exit {done.returncode}, {finished} finished on a host, {logs} logs synced back "
          f"(expected {commands}) {done.stderr.strip()[-300:]}")
    return seconds


def ssh_true(config: Path, alias: str) -> None:
    done = subprocess.run(["ssh", "-F", str(config), alias, "true"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    check(done.returncode == 0, f"ssh {alias} true: exit {done.returncode} {done.stderr.strip()}")


def ssh_parallel(config: Path, aliases: List[str], commands: int, workers: int) -> float:
    """`commands` x `ssh hostN true`, `workers` at a time, alternating hosts like mlrunner's slots."""
    with ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        list(pool.map(lambda i: ssh_true(config, aliases[i % len(aliases)]), range(commands)))
        return time.perf_counter() - started


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def connection_roundtrip(connection: Host, number: int) -> float:
    """One command through mlrunner's agent as a worker runs it: mkdir, start, wait, pull its directory."""
    directory = f"seq/{number}"
    os.makedirs(directory, exist_ok=True)
    started = time.perf_counter()
    connection.request("mkdir", path=f"{connection.workdir}/{directory}")
    code = connection.start(shell_line("true", "0", f"{directory}/log.run"), "0", False).wait()
    connection.pull(directory)
    seconds = time.perf_counter() - started
    check(code == 0 and os.path.exists(f"{directory}/log.run"), f"sequential mlrunner command {number}")
    return seconds


# --- (b) sync-back ---------------------------------------------------------------------------------

def make_tree(top: Path, files: int) -> None:
    for i in range(files):
        path = top / f"d{i % 10}" / f"e{i // 10 % 10}" / f"f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((f"line {i}\n" * 600)[: 1024 + (i * 37) % 3072])


def inodes(top: Path) -> dict:
    return {str(p.relative_to(top)): p.stat().st_ino for p in top.rglob("*") if p.is_file()}


def ensure_rsync() -> bool:
    if shutil.which("rsync"):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("rsync is missing (install Debian's `rsync`); its rows are left out", file=sys.stderr)
        return False
    print("rsync is missing: running `apt-get install -y rsync` ...", file=sys.stderr)
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
             "env": dict(os.environ, DEBIAN_FRONTEND="noninteractive")}
    for argv in (["apt-get", "install", "-y", "-q", "rsync"], ["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "rsync"]):
        if subprocess.run(argv, **quiet).returncode == 0 and shutil.which("rsync"):
            break
    return shutil.which("rsync") is not None


def sync_bench(root: Path, connection: Host, config: Path, alias: str, files: int, repeat: int) -> dict:
    relative = "output/tree"
    make_tree(Path(connection.workdir) / relative, files)
    local = root / "local"  # the process's cwd: Host.pull copies into ./<relative>

    def first_pull() -> float:
        shutil.rmtree(local / relative, ignore_errors=True)
        seconds = timed(lambda: connection.pull(relative))
        check(len(inodes(local / relative)) == files, "mlrunner first sync: files missing")
        return seconds

    def again_pull() -> float:
        before = inodes(local / relative)
        seconds = timed(lambda: connection.pull(relative))
        check(inodes(local / relative) == before, "mlrunner no-change sync copied files")
        return seconds

    measures = {"mlrunner first": first_pull, "mlrunner again": again_pull}
    if ensure_rsync():
        target = root / "rsync"
        argv = ["rsync", "-a", "-e", f"ssh -F {config}", f"{alias}:{connection.workdir}/{relative}/", f"{target}/"]

        def rsync(fresh: bool) -> float:
            if fresh:
                shutil.rmtree(target, ignore_errors=True)
            before = inodes(target) if not fresh else None
            seconds = timed(lambda: subprocess.run(argv, check=True, stdin=subprocess.DEVNULL))
            check(len(inodes(target)) == files and (fresh or inodes(target) == before), "rsync result")
            return seconds

        measures.update({"rsync first": lambda: rsync(True), "rsync again": lambda: rsync(False)})
    found = medians(repeat, measures)
    results = {"mlrunner sync.pull (SFTP, open connection)": (found["mlrunner first"], found["mlrunner again"])}
    if "rsync first" in found:
        results["rsync -a over ssh (new login each)"] = (found["rsync first"], found["rsync again"])
    return results


# --- (c) code push ---------------------------------------------------------------------------------

def push_bench(root: Path, connection: Host, config: Path, alias: str, files: int, repeat: int) -> dict:
    source = root / "code"
    make_tree(source / "src", files)
    spec = HostSpec(alias, push=["src"])
    os.chdir(source)
    fresh = itertools.count(1)
    targets: Dict[str, str] = {}

    def first_push() -> float:
        targets["mlrunner"] = workdir = f"{connection.workdir}/push{next(fresh)}"
        connection.request("mkdir", path=workdir)
        seconds = timed(lambda: check(len(push(connection.request, connection._sftp, workdir, spec)) == files,
                                      "mlrunner first push: files missing"))
        return seconds

    def again_push() -> float:
        return timed(lambda: check(push(connection.request, connection._sftp, targets["mlrunner"], spec) == [],
                                   "mlrunner unchanged push sent files"))

    measures = {"mlrunner first": first_push, "mlrunner again": again_push}
    if ensure_rsync():
        def rsync(first: bool) -> float:
            if first:
                targets["rsync"] = f"{connection.workdir}/rsync{next(fresh)}"
            argv = ["rsync", "-a", "-e", f"ssh -F {config}", "src", f"{alias}:{targets['rsync']}/"]
            return timed(lambda: subprocess.run(argv, check=True, stdin=subprocess.DEVNULL))
        measures.update({"rsync first": lambda: rsync(True), "rsync again": lambda: rsync(False)})
    with contextlib.redirect_stdout(sys.stderr):  # push's progress lines
        found = medians(repeat, measures)
    os.chdir(root / "local")
    results = {"mlrunner push (stat + tar over SFTP, open connection)": (found["mlrunner first"],
                                                                           found["mlrunner again"])}
    if "rsync first" in found:
        results["rsync -a over ssh (new login each)"] = (found["rsync first"], found["rsync again"])
    return results


# --- report ------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure; the median is shown")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--push-files", type=int, default=2000)
    args = parser.parse_args(argv)
    workers = 4
    load = busy_cores(1.0)
    with tempfile.TemporaryDirectory(prefix="mlrunner-bench-remote-") as tmp:
        root = Path(tmp)
        servers = sshd.start_servers(2, root / "sshd")
        try:
            home = sshd.make_home(root, servers)
            os.environ["HOME"] = str(home)  # paramiko (Host) reads ~/.ssh from $HOME
            config = root / "ssh_config"  # the real ssh client ignores $HOME: an explicit -F
            known = root / "known_hosts"
            known.write_text("".join(s.known_hosts_line() + "\n" for s in servers))
            config.write_text(sshd.ssh_config_text(servers, servers[0].client_key, known, batch=True))
            aliases = [s.alias for s in servers]
            (root / "local").mkdir()
            os.chdir(root / "local")
            connection = Host(HostSpec(aliases[0], workdir=str(servers[0].workdir)), accept_new=False, grace=2)
            connection.connect()
            tags = itertools.count(1)

            rows = []
            for phase in ("tiny .bashrc", "realistic .bashrc"):
                if phase.startswith("realistic"):
                    for server in servers:
                        with open(server.home / ".bashrc", "a") as stream:
                            stream.write(BASHRC_EXTRA)
                print(f"[{phase}]", file=sys.stderr)
                found = medians(args.repeat, {
                    "mlrunner CLI": lambda: mlrunner_cli(root, home, servers, args.commands, f"run{next(tags)}"),
                    "ssh x4": lambda: ssh_parallel(config, aliases, args.commands, workers)})
                found.update(medians(20, {
                    "ssh sequential": lambda: timed(lambda: ssh_true(config, aliases[0])),
                    "mlrunner sequential": lambda: connection_roundtrip(connection, next(tags))}))
                rows.append((phase, *found.values()))
            # (b) under the tiny .bashrc again: rsync's fairest case (its remote end starts via the shell)
            for server in servers:
                text = (server.home / ".bashrc").read_text()
                (server.home / ".bashrc").write_text(text.replace(BASHRC_EXTRA, ""))
            sync = sync_bench(root, connection, config, aliases[0], args.files, args.repeat)
            pushed = push_bench(root, connection, config, aliases[0], args.push_files, args.repeat)
            connection.close()
        finally:
            sshd.stop_servers(servers)

    n = args.commands
    print(f"remote benchmark: {n} x `true` on {workers} remote workers (2 loopback sshd x 2 slots), "
          f"median of {args.repeat}; {os.cpu_count()} CPUs, {load if load is None else round(load, 1)} busy before")
    print(f"realistic .bashrc = tiny .bashrc + this appended line: {BASHRC_EXTRA.strip()}")
    print("ms/cmd/slot = wall x 4 workers / commands; ms/cmd = wall / commands; (seq.) = one at a time")
    print(f"\n{'(a) per command':<58}{'total s':>9}{'ms/cmd/slot':>13}{'ms/cmd':>9}")
    for phase, cli, ssh_par, ssh_seq, ml_seq in rows:
        print(f"[{phase}]")
        print(f"  {'mlrunner CLI -r, 4 workers (all bookkeeping + sync)':<56}{cli:9.2f}"
              f"{cli * workers / n * 1e3:13.1f}{cli / n * 1e3:9.1f}")
        print(f"  {'ssh -F cfg hostN true, 4 in parallel':<56}{ssh_par:9.2f}"
              f"{ssh_par * workers / n * 1e3:13.1f}{ssh_par / n * 1e3:9.1f}")
        print(f"  {'ssh host1 true (seq., median of 20)':<56}{'':9}{ssh_seq * 1e3:13.1f}")
        print(f"  {'mlrunner Host mkdir+start+wait+pull (seq., med. 20)':<56}{'':9}{ml_seq * 1e3:13.1f}")
        print(f"  -> OpenSSH / mlrunner: {ssh_par / cli:.1f}x per command slot (target >= 5x), "
              f"{ssh_seq / ml_seq:.0f}x sequential")
    print(f"\n{f'(b) sync-back of {args.files} files (1-4 KB, nested)':<58}{'first s':>9}{'no-change s':>13}")
    for name, (first, again) in sync.items():
        print(f"  {name:<56}{first:9.3f}{again:13.3f}")
    if len(sync) == 2:
        (m1, m2), (r1, r2) = sync.values()
        print(f"  -> first sync: mlrunner/rsync = {m1 / r1:.2f}x (target <= 2x); "
              f"no-change: mlrunner/rsync = {m2 / r2:.2f}x (target < 1x)")
    print(f"\n{f'(c) code push of {args.push_files} files (1-4 KB, nested)':<58}{'first s':>9}{'unchanged s':>13}")
    for name, (first, again) in pushed.items():
        print(f"  {name:<56}{first:9.3f}{again:13.3f}")
    if len(pushed) == 2:
        (m1, m2), (r1, r2) = pushed.values()
        print(f"  -> first push: mlrunner/rsync = {m1 / r1:.2f}x; unchanged: mlrunner/rsync = {m2 / r2:.2f}x")
    for problem in PROBLEMS:  # checked after each clock stopped
        print(f"PROBLEM: {problem}")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
