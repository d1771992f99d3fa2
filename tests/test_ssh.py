"""Remote hosts against real OpenSSH servers on 127.0.0.1 (SPEC H1-H7, R6-R8 across hosts).

Each server has its own host key, port, home and working directory, and a stand-in nvidia-smi
with two GPUs on its PATH; mlrunner reaches them through a fake HOME's ~/.ssh.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sshd
from runlib import REPO, alive, load, run, start, statuses, write


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    sshd.require_sshd()
    sshd.require_paramiko()
    started = sshd.start_servers(3, tmp_path_factory)
    yield started
    sshd.stop_servers(started)


def _project(tmp_path: Path, servers, template: str, sweep: str, extra: str = "", trust: bool = True):
    """A fake HOME that knows the servers, and a project whose hosts have their own workdirs."""
    home = sshd.make_home(tmp_path / "home", servers, trust=trust)
    project = tmp_path / "project"
    project.mkdir()
    hosts = "".join(f"  {s.alias}: {{workdir: {s.workdir}}}\n" for s in servers)
    write(project, f"template:\n{template}\nresource: [0]\nhosts:\n{hosts}{extra}---\n{sweep}\n")
    return project, {"HOME": str(home)}


def test_h1_h4_h5_fan_out_over_hosts_and_local_workers(servers, tmp_path: Path):
    project, env = _project(
        tmp_path, servers,
        '  train: sleep 0.3; echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER {_host}"\n'
        '  test: bash -c \'echo "score = {i}"; echo weights > {_output}/model.pt; echo kept > {_output}/notes.txt\'',
        "i: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]",
        extra='sync: {exclude: ["*.pt"]}\nmetric: {score: {command: test, regex: "score = (\\\\d+)"}}\n')
    code, out, err = run([], project, env, timeout=120)
    assert code == 0, out + err
    workers = set()
    for i in range(1, 15):
        directory = project / "output" / f"I_{i}"
        assert statuses(directory) == {"train": "finished", "test": "finished"}
        worker = load(directory / "stat")["_runs"]["train"]["worker"]
        workers.add(worker)
        log, = directory.glob("log.train.*")  # synced back from the host that ran it
        gpu, order, host = log.read_text().split()
        assert order == "PCI_BUS_ID"
        if worker != "0":
            assert worker == f"{host}:{gpu}" and host in {"host1", "host2", "host3"}
            assert (directory / "notes.txt").read_text() == "kept\n"
            assert not (directory / "model.pt").exists()  # sync.exclude left it on the host
            assert f"CUDA_VISIBLE_DEVICES={gpu} sleep 0.3" in load(directory / "param")["_scripts"]["train"]
    assert {w.split(":")[0] for w in workers} >= {"0", "host1", "host2", "host3"}
    assert re.search(r"^START   gpu: host\d:\d, train:", out, re.M)
    code, table, _ = run(["--examine"], project, env)
    assert code == 0
    rows = [line.split("\t") for line in table.strip().splitlines()]
    assert rows[0] == ["experiment", "i", "score", "status"]
    assert sorted(int(r[2]) for r in rows[1:]) == list(range(1, 15))
    code, out, _ = run(["--status"], project, env)
    assert re.search(r"I_\d+ +train: finished", out)


def test_h1_host_without_resource_asks_its_nvidia_smi(servers, tmp_path: Path):
    project, env = _project(tmp_path, servers[:1], "  show: echo $CUDA_VISIBLE_DEVICES", "i: [1, 2, 3, 4]")
    code, out, _ = run(["-r"], project, env)  # `-r` alone: no local worker
    assert code == 0, out
    assert {load(project / "output" / f"I_{i}" / "stat")["_runs"]["show"]["worker"] for i in (1, 2, 3, 4)} <= {
        "host1:0", "host1:1"}


def test_h1_default_workdir_is_the_same_place_under_the_remote_home(servers, tmp_path: Path):
    home = sshd.make_home(tmp_path / "home", servers[:1])
    project = home / "work" / "proj"
    project.mkdir(parents=True)
    write(project, "template:\n  where: pwd\n---\ni: 1\n")
    code, out, err = run(["--hosts", "host1", "-r"], project, {"HOME": str(home)})
    assert code == 0, out + err
    log, = (project / "output" / "I_1").glob("log.where.*")
    assert log.read_text().strip() == str(servers[0].home / "work" / "proj")


def test_h3_unknown_host_key_is_refused_with_a_way_to_trust_it(servers, tmp_path: Path):
    project, env = _project(tmp_path, servers[:1], "  show: echo hi", "i: 1", trust=False)
    code, out, err = run(["-r"], project, env)
    assert code == 1
    assert "warning: host host1 left out: unknown host key for [127.0.0.1]" in err
    assert "ssh-keyscan -p" in err and "--accept-new-hosts" in err
    assert "no workers" in err


def test_h3_accept_new_hosts_records_the_key_but_never_a_changed_one(tmp_path: Path, tmp_path_factory):
    sshd.require_sshd()
    server, = sshd.start_servers(1, tmp_path_factory, prefix="fresh")
    try:
        project, env = _project(tmp_path, [server], "  show: echo hi", "i: 1", trust=False)
        code, out, _ = run(["-r", "--accept-new-hosts"], project, env)
        assert code == 0, out
        known = (Path(env["HOME"]) / ".ssh" / "known_hosts").read_text()
        assert f"[127.0.0.1]:{server.port} ssh-ed25519" in known
        server.new_host_key()
        code, out, err = run(["-r", "--accept-new-hosts", "-f"], project, env)
        assert code == 1 and "has CHANGED" in err
    finally:
        server.stop()


def test_h6_unreachable_host_is_left_out_and_the_run_goes_on(servers, tmp_path: Path):
    project, env = _project(tmp_path, servers[:1], "  show: echo hi", "i: [1, 2]")
    code, out, err = run(["--hosts", f"host1,127.0.0.1:{sshd.free_port()}"], project, env)
    assert code == 0
    assert "warning: host 127.0.0.1 left out: cannot reach" in err
    assert "Finished: 2, failed: 0" in out


def test_h6_host_that_never_answers_is_left_out_after_the_timeout(servers, tmp_path: Path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the TCP connection, never says a word
    try:
        project, env = _project(tmp_path, servers[:1], "  show: echo hi", "i: [1, 2]")
        began = time.monotonic()
        code, out, err = run(["--hosts", f"host1,127.0.0.1:{silent.getsockname()[1]}"], project, env)
        assert code == 0 and time.monotonic() - began < 40
        assert "warning: host 127.0.0.1 left out: cannot reach" in err
        assert "Finished: 2, failed: 0" in out
    finally:
        silent.close()


def test_h6_killed_sshd_mid_run_requeues_its_tasks(tmp_path: Path, tmp_path_factory):
    sshd.require_sshd()
    doomed, steady = sshd.start_servers(2, tmp_path_factory, prefix="lossy")
    try:
        project, env = _project(tmp_path, [doomed, steady], "  nap: sleep 1.5; echo {i}", "i: [1, 2, 3, 4, 5, 6]")
        runner = start(["-r"], project, env)
        time.sleep(1.0)  # every worker is in its first command
        doomed.kill()
        out, err = runner.communicate(timeout=120)
        assert runner.returncode == 0, out + err
        assert "host lossy1: connection lost" in out
        assert re.search(r"^REQUEUE output/I_\d: host lossy1 lost", out, re.M)
        for i in range(1, 7):
            stat = load(project / "output" / f"I_{i}" / "stat")
            assert stat["nap"] == "finished" and stat["_runs"]["nap"]["worker"].startswith("lossy2:")
    finally:
        doomed.stop()
        steady.stop()


def test_h6_lost_host_is_retried_and_takes_tasks_again(tmp_path: Path, tmp_path_factory):
    sshd.require_sshd()
    flaky, = sshd.start_servers(1, tmp_path_factory, prefix="flaky")
    try:
        project, env = _project(tmp_path, [flaky], "  nap: sleep 0.5; echo {i}",
                                "i: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]")
        runner = start([], project, env)  # one local worker, two on the host
        time.sleep(1.5)
        flaky.kill()
        time.sleep(1.0)
        flaky.restart()
        out, err = runner.communicate(timeout=120)
        assert runner.returncode == 0, out + err
        assert "host flaky1: connection lost" in out and "host flaky1: connected again" in out
        workers = [load(project / "output" / f"I_{i}" / "stat")["_runs"]["nap"]["worker"] for i in range(1, 19)]
        assert all(statuses(project / "output" / f"I_{i}") == {"nap": "finished"} for i in range(1, 19))
        lost_at = out.index("connection lost")
        assert re.search(r"^DONE    gpu: flaky1:\d", out[out.index("connected again"):], re.M), "no task after reconnect"
        assert lost_at > 0 and any(w.startswith("flaky1:") for w in workers)
    finally:
        flaky.stop()


def test_r8_ctrl_c_ends_remote_process_trees(servers, tmp_path: Path):
    project, env = _project(
        tmp_path, servers[:2],
        "  tree: echo $$ >> {_output}/pids; sleep 100 & echo $! >> {_output}/pids; sleep 100",
        "i: [1, 2, 3, 4]")
    runner = start(["-r", "--grace", "2s"], project, env)
    pid_files = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(pid_files) < 4:
        pid_files = [f for s in servers[:2] for f in Path(s.workdir, "output").glob("I_*/pids")
                     if len(f.read_text().split()) == 2]
        time.sleep(0.1)
    assert len(pid_files) == 4
    pids = [int(p) for f in pid_files for p in f.read_text().split()]
    runner.send_signal(signal.SIGINT)
    out, _ = runner.communicate(timeout=30)
    assert runner.returncode == 130
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert [p for p in pids if alive(p)] == []
    assert "interrupted: 4" in out
    assert all(statuses(project / "output" / f"I_{i}") == {"tree": "interrupted"} for i in (1, 2, 3, 4))
    assert all(len(f.read_text().split()) == 2 for f in (project / "output").glob("I_*/pids"))  # partial sync


def test_r9_timeout_ends_a_remote_tree(servers, tmp_path: Path):
    project, env = _project(tmp_path, servers[:1], "  slow: echo $$ > {_output}/pid; sleep 100", "i: 1")
    code, out, _ = run(["-r", "--timeout", "1s", "--grace", "1s"], project, env)
    assert code == 1 and "timed out after 1s" in out
    pid = int((project / "output" / "I_1" / "pid").read_text())
    assert not alive(pid)


def test_h7_without_paramiko_hosts_fail_at_once_and_nothing_else_imports_it(tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "paramiko.py").write_text("raise ImportError('no paramiko here')\n")
    write(tmp_path, "template:\n  show: echo hi\nresource: [0]\n---\ni: 1\n")
    env = {"PYTHONPATH": f"{blocker}:{REPO}"}
    code, _, err = run(["--hosts", "gpu1"], tmp_path, env)
    assert code == 2 and "pip install paramiko" in err and "--with-ssh" in err
    assert not (tmp_path / "output").exists()
    check = ("import sys; from mlrunner.cli import main; main(['--dry-run']); main([]);"
             "sys.exit('paramiko' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True).returncode == 0

