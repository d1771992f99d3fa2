"""Sync-back that never loses files, trusts no host, and a host protocol with bounded lines
(SPEC H5, H6, H11, R7; issue 21), against real OpenSSH servers on 127.0.0.1.

A command is `finished` only once its files are home: a connection killed in the middle of the
copy leaves it `interrupted` and its task runs again. Under --no-subdir a host cannot write
another experiment's records, a run record or the config copy. A fake agent (a `python3` first on
the server's PATH that floods the channel) is given up in one line, with bounded runner memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sshd
from mlrunner.backends import sync
from runlib import environment, load, start, write

BIG = 96 << 20  # bytes: an output whose copy takes long enough to be cut in the middle

SHARED = sync.Scope(shared=True, logs=("log.t.1.I_1",), protected=("params.yaml", "mlrunner.log"))


@pytest.mark.parametrize("relative, scope, foreign", [
    ("stat", sync.Scope(), True), ("param", sync.Scope(), True), (".mlrunner-run.h.1", sync.Scope(), True),
    (".stat.x.1.2.tmp", sync.Scope(), True), ("sub/param", sync.Scope(), False), ("stat.x", sync.Scope(), False),
    ("log.t.1.I_2", sync.Scope(), False), ("model/out.txt", sync.Scope(), False),
    ("log.t.1.I_1", SHARED, False), ("result.1", SHARED, False), ("dir/stat.I_2", SHARED, False),
    ("stat.I_2", SHARED, True), ("param.I_2", SHARED, True), ("stat.I_1", SHARED, True),
    ("stat.I_2/x", SHARED, True), ("log.t.1.I_2", SHARED, True), ("log.t.1.I_1.retry1", SHARED, True),
    (".mlrunner-run.h.1", SHARED, True), (".mlrunner-index.review", SHARED, True), ("params.yaml", SHARED, True),
    ("params.yaml.title", SHARED, True), ("mlrunner.log", SHARED, True), ("params.yaml2", SHARED, False),
])
def test_h11_which_host_files_belong_to_the_command_that_ran(relative, scope, foreign):
    assert sync.foreign(relative, scope) is foreign


def test_h5_a_copy_shorter_than_listed_is_never_placed(tmp_path: Path):
    (tmp_path / "big.bin").write_bytes(b"old")
    with pytest.raises(sync.Incomplete, match="5 of 10 bytes"):
        sync._place(str(tmp_path), "big.bin", 10, 1, lambda path: Path(path).write_bytes(b"12345"))
    assert (tmp_path / "big.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["big.bin"]


def test_h5_a_copy_that_breaks_while_the_host_stays_is_tried_again_on_a_new_channel(server, tmp_path: Path,
                                                                                     monkeypatch):
    """The SFTP channel breaks (closed under the copy) but the connection lives: the pull raises, the
    host stays up, and the next pull, on a new SFTP channel, brings the file."""
    from mlrunner.backends.ssh import Host
    from mlrunner.plan.hosts import HostSpec
    monkeypatch.setenv("HOME", str(sshd.make_home(tmp_path / "home", [server])))
    monkeypatch.chdir(tmp_path)
    (Path(server.workdir) / "output" / "E").mkdir(parents=True)
    (Path(server.workdir) / "output" / "E" / "out.txt").write_text("result\n")
    host = Host(HostSpec(server.alias, workdir=str(server.workdir)), False, 2)
    host.connect()
    try:
        host._sftp.close()
        with pytest.raises(OSError):
            host.pull("output/E")
        assert host.up and not (tmp_path / "output" / "E" / "out.txt").exists()
        host.pull("output/E")
        assert (tmp_path / "output" / "E" / "out.txt").read_text() == "result\n"
    finally:
        host.close()


def test_h8_replies_of_the_wrong_shape_are_one_line_errors_not_tracebacks(server, tmp_path: Path, monkeypatch):
    """Replies patched at the protocol boundary: a `run` without status (the GPU poller's
    nvidia-smi) is a failed query, a `mkdir` without path fails the connect with one HostError."""
    from mlrunner.backends.ssh import Host, HostError, rpc
    from mlrunner.plan.hosts import HostSpec
    monkeypatch.setenv("HOME", str(sshd.make_home(tmp_path / "home", [server])))
    monkeypatch.chdir(tmp_path)
    real = rpc.Rpc.request
    broken = set()
    monkeypatch.setattr(rpc.Rpc, "request",
                        lambda self, op, *a, **k: {"id": 1} if op in broken else real(self, op, *a, **k))
    host = Host(HostSpec(server.alias, workdir=str(server.workdir)), False, 2)
    host.connect()
    try:
        broken.add("run")
        code, out, err = host.query(["nvidia-smi"])
        assert (code, out) == (255, "") and "has no status and output" in err
        broken.add("mkdir")
        with pytest.raises(HostError, match=r"answered out of protocol \(KeyError: 'path'\)"):
            Host(HostSpec(server.alias, workdir=str(server.workdir)), False, 2).connect()
    finally:
        host.close()


def test_h8_paramiko_tracebacks_are_one_line_with_the_host(capsys):
    """paramiko logs a traceback line by line, and a thread of its may die: one stderr line each."""
    import paramiko
    from mlrunner.backends.ssh import login
    login.quiet_paramiko()
    logger = logging.getLogger(login.LOG_CHANNEL + "gpu7")
    logger.error("Exception: Server connection dropped")
    try:
        raise EOFError()
    except EOFError:
        for line in paramiko.util.tb_strings():
            logger.error(line)
    thread = threading.Thread(target=paramiko.util.constant_time_bytes_eq, args=(None, None))
    thread.start()
    thread.join()
    assert capsys.readouterr().err.splitlines() == [
        "warning: host gpu7: ssh: Exception: Server connection dropped",
        "warning: ssh: a paramiko thread ended: TypeError: object of type 'NoneType' has no len()"]


@pytest.mark.parametrize("line, why", [
    (b"x" * ((16 << 20) + 1), "longer than 16 MiB"), (b"not json", "not JSON"), (b"[1, 2]", "not an object"),
    (b'{"exit": 0}', "request id"), (b'{"id": [1], "pid": 3}', "request id"), (b'{"id": true}', "request id"),
    (b'{"id": 4, "exit": "0"}', "exit status"),
])
def test_h8_a_line_that_is_not_a_protocol_message_makes_the_host_faulty(line, why):
    from mlrunner.backends.ssh import rpc
    with pytest.raises(rpc.Faulty, match=why):
        rpc.parse(line)
    assert rpc.parse(b'{"id": 4, "exit": null}') == {"id": 4, "exit": None}


@pytest.fixture
def server(tmp_path_factory):
    """One server of this test's own: tests here drop its connections or replace its python3."""
    sshd.require_sshd()
    sshd.require_paramiko()
    started, = sshd.start_servers(1, tmp_path_factory, prefix="safe")
    yield started
    started.stop()


def _project(tmp_path: Path, server, template: str, sweep: str, resource: str = "[]") -> tuple:
    home = sshd.make_home(tmp_path / "home", [server])
    project = tmp_path / "project"
    project.mkdir()
    write(project, f"template:\n{template}\nresource: {resource}\n"
                   f"hosts:\n  {server.alias}: {{workdir: {server.workdir}, resource: [0]}}\n---\n{sweep}\n")
    return project, {"HOME": str(home)}


def _finish(process: subprocess.Popen, timeout: float = 90) -> tuple:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _digest(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def test_h5_h6_a_connection_killed_mid_sync_back_is_not_finished_and_the_task_runs_again(server, tmp_path: Path):
    """The host's sshd session is killed once a partial local copy of a 96 MB output exists: the
    command is recorded `interrupted` (files not home), never `finished`; no half file is left
    under its name; the task runs again once the host is back and its files come home whole."""
    template = f"  big: head -c {BIG} /dev/zero > {{_output}}/big.bin; echo made {{i}}"
    project, env = _project(tmp_path, server, template, "i: [1]")
    runner = start([], project, env)
    local = project / "output" / "I_1"
    cut = False
    deadline = time.monotonic() + 60
    while not cut and time.monotonic() < deadline and runner.poll() is None:
        try:
            partial = [entry for entry in os.scandir(local) if entry.name.startswith(".sync-")
                       and 0 < entry.stat().st_size < BIG // 2]  # half of it still to come when the cut lands
        except OSError:
            partial = []
        if partial:
            server.drop_connections()
            cut = True
        time.sleep(0.002)
    code, out, err = _finish(runner)
    assert cut, "the copy ended before the connection could be cut in its middle:\n" + out + err
    assert code == 0, out + err
    assert "connection lost" in out and re.search(r"^REQUEUE output/I_1: host safe1 lost", out, re.M), out + err
    runs = load(local / "stat")["_runs"]["big"]
    assert [run["status"] for run in runs] == ["interrupted", "finished"], runs
    assert "lost while its files were copied back" in runs[0]["reason"]
    assert (local / "big.bin").stat().st_size == BIG
    assert _digest(local / "big.bin") == _digest(Path(server.workdir) / "output" / "I_1" / "big.bin")
    assert not [name for name in os.listdir(local) if name.startswith(".sync-")]
    assert "Traceback" not in out + err


def test_h11_a_hostile_host_under_no_subdir_cannot_touch_other_experiments_or_plant_run_records(
        server, tmp_path: Path):
    """Every experiment shares `output/`: the host's command forges another experiment's `stat`
    and `param`, a run record, the config copy and another experiment's log there. Only its own
    log and its output come back; the local records stay byte for byte."""
    forge = ("printf 't: finished\\n' > {_output}/stat.Other; printf 'forged: 1\\n' > {_output}/param.Other; "
             "printf 'pid: 1\\n' > {_output}/.mlrunner-run.evil.1; printf 'template: {{t: rm -rf /}}\\n' "
             "> {_output}/params.yaml; echo forged > {_output}/log.t.1.Other; echo out {i} > {_output}/result.{i}")
    project, env = _project(tmp_path, server, f"  t: \"{forge}\"", "i: [1]")
    root = project / "output"
    root.mkdir()
    (root / "stat.Other").write_text("t: failed\n")
    (root / "param.Other").write_text("_name: Other\n")
    (root / "log.t.1.Other").write_text("the real log\n")
    before = {name: (root / name).read_bytes() for name in ("stat.Other", "param.Other", "log.t.1.Other")}
    code, out, err = _finish(start(["--no-subdir"], project, env))
    assert code == 0, out + err
    assert {name: (root / name).read_bytes() for name in before} == before
    assert not list(root.glob(".mlrunner-run.*"))
    assert (root / "params.yaml").read_text() == (project / "params.yaml").read_text()
    assert (root / "result.1").read_text() == "out 1\n"
    assert [p.name for p in root.glob("log.t.*.I_1")], sorted(os.listdir(root))
    assert load(root / "stat.I_1")["t"] == "finished"


FLOODER = """\
#!{python}
# A fake agent: the real one behind a proxy that, once the file `flood` appears in its workdir,
# sends 100 MB with no newline on the agent channel.
import os, subprocess, sys, threading, time
agent = subprocess.Popen([{python!r}] + sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def upstream():
    for chunk in iter(lambda: os.read(0, 65536), b""):
        agent.stdin.write(chunk); agent.stdin.flush()
    agent.stdin.close()
threading.Thread(target=upstream, daemon=True).start()
flag = {flag!r}
lines = []
def downstream():
    for line in agent.stdout:
        lines.append(line)
threading.Thread(target=downstream, daemon=True).start()
try:
    while agent.poll() is None:
        while lines:
            os.write(1, lines.pop(0))
        if os.path.exists(flag):
            os.unlink(flag)
            block = b"x" * (1 << 20)
            for _ in range(100):
                os.write(1, block)
        time.sleep(0.01)
except OSError:
    pass
agent.kill()
"""

MEASURE = """\
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "mlrunner"] + sys.argv[1:], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr)
print("MAXRSS_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


def _measured(project: Path, env: dict, args: list) -> tuple:
    done = subprocess.run([sys.executable, "-c", MEASURE, *args], cwd=project, env=environment(env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(re.search(r"MAXRSS_KIB (\d+)", done.stdout).group(1)) << 10, done.stdout, done.stderr


def test_h8_a_100_mb_line_from_the_agent_costs_bounded_memory_and_the_host_is_given_up_in_one_line(
        server, tmp_path: Path):
    """The command makes the fake agent send 100 MB without a newline: the runner reads at most
    MAX_LINE (16 MiB) of it, says in one line that the host is faulty, and the task runs on the local
    worker. Its peak RSS is within 40 MiB of the same run with an agent that behaves (measured
    here: +17 MiB; reading the whole line cost some +300 MiB)."""
    flag, armed = Path(server.workdir) / "flood", tmp_path / "armed"
    fake = server.bin_dir / "python3"
    fake.write_text(FLOODER.format(python=sys.executable, flag=str(flag)))
    fake.chmod(0o755)
    template = (f"  t: 'if [ -n \"$MLRUNNER_TEST_SSHD\" ] && [ -e {armed} ]; then touch {flag}; sleep 20; "
                "else sleep 1.5; fi; echo ran {i}'")
    project, env = _project(tmp_path, server, template, "i: [1, 2]", resource="[0]")
    calm, out, err = _measured(project, env, [])
    assert re.search(r"^DONE    gpu: safe1:0", out, re.M), out + err
    armed.touch()
    peak, out, err = _measured(project, env, ["-f"])
    faulty = [line for line in (out + err).splitlines() if "faulty" in line]
    assert len(faulty) == 1 and "host safe1" in faulty[0] and "longer than 16 MiB" in faulty[0], out + err
    assert "Traceback" not in out + err
    assert re.search(r"^REQUEUE output/I_\d: host safe1", out, re.M), out + err
    for i in (1, 2):
        stat = load(project / "output" / f"I_{i}" / "stat")
        assert stat["t"] == "finished" and not stat["_runs"]["t"][-1]["worker"].startswith("safe1"), stat
    assert peak - calm < 40 << 20, f"the runner peaked at {peak >> 20} MiB reading a 100 MB line ({calm >> 20} without)"
