"""Remote hosts against real OpenSSH servers on 127.0.0.1 (SPEC H1-H7, R6-R8 across hosts).

Each server has its own host key, port, home and working directory, and a stand-in nvidia-smi
with two GPUs on its PATH; mlrunner reaches them through a fake HOME's ~/.ssh.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import pytest

import sshd
from mlrunner.backends.base import HostLost
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


class Watched:
    """A running `mlrunner` whose output lines are read as they come, so a test waits for a line, not a sleep."""

    def __init__(self, args, project: Path, env):
        self.process = start(args, project, env)
        self.lines: List[str] = []
        self.errors: List[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.process.stdout, self.lines), (self.process.stderr, self.errors))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into: List[str]) -> None:
        for line in stream:
            into.append(line)

    def wait_line(self, pattern: str, timeout: float = 60) -> float:
        """Seconds until a stdout line matches `pattern` (fails the test past `timeout`)."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if any(re.search(pattern, line) for line in list(self.lines)):
                return time.monotonic() - began
            assert self.process.poll() is None or any(re.search(pattern, line) for line in self.lines), self.output()
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output()}")

    def finish(self, timeout: float = 120):
        self.process.wait(timeout)
        for reader in self._readers:
            reader.join()
        return self.process.returncode, "".join(self.lines), "".join(self.errors)

    def output(self) -> str:
        return "".join(self.lines) + "".join(self.errors)


def _worker(stat: dict, command: str) -> str:
    """The worker of a command's last run (`_runs` holds one record, or a list of attempts)."""
    runs = stat["_runs"][command]
    return (runs[-1] if isinstance(runs, list) else runs)["worker"]


def _group_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stream:
        return int(stream.read().rsplit(")", 1)[1].split()[2])


def _live_in_groups(groups) -> List[int]:
    """Every live process in one of these process groups, from the whole process table."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stream:
                    fields = stream.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) in groups:
                found.append(int(entry))
    return found


def _agent_pids(server) -> List[int]:
    """The agent process of a test server (started by its sshd: it carries the server's marker)."""
    found = []
    for pid in sshd._marked(str(server.root)):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                argv = stream.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 3 and argv[1:3] == [b"-u", b"-c"] and b"mlrunner" in argv[3]:
            found.append(pid)
    return found


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
        worker = _worker(load(directory / "stat"), "train")
        workers.add(worker)
        log, = directory.glob("log.train.*")  # synced back from the host that ran it
        gpu, order, host = log.read_text().split()
        assert order == "PCI_BUS_ID"
        if worker != "gpu:0":  # this machine's GPU 0, named as a slot (T11)
            assert worker == f"{host}:{gpu}" and host in {"host1", "host2", "host3"}
            assert (directory / "notes.txt").read_text() == "kept\n"
            assert not (directory / "model.pt").exists()  # sync.exclude left it on the host
            script = load(directory / "param")["_scripts"]["train"]
            assert f"CUDA_VISIBLE_DEVICES={gpu}" in script and "sleep 0.3" in script
    assert {w.split(":")[0] for w in workers} >= {"gpu", "host1", "host2", "host3"}
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
    assert {_worker(load(project / "output" / f"I_{i}" / "stat"), "show") for i in (1, 2, 3, 4)} <= {
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
    assert out.rstrip().endswith("Finished: 2, failed: 0, skipped: 0, interrupted: 0, already finished: 0")  # T6: counts last
    summary = out[out.index("Hosts left out"):]
    assert summary.startswith("Hosts left out (unreachable at start):\n    host 127.0.0.1 left out: cannot reach")  # H12


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
        runner = Watched(["-r"], project, env)
        runner.wait_line(r"^START   gpu: lossy1:")
        doomed.kill()
        code, out, err = runner.finish()
        assert code == 0, out + err
        assert "host lossy1: connection lost" in out
        assert re.search(r"^REQUEUE output/I_\d: host lossy1 lost", out, re.M)
        for i in range(1, 7):
            stat = load(project / "output" / f"I_{i}" / "stat")
            assert stat["nap"] == "finished" and _worker(stat, "nap").startswith("lossy2:")
    finally:
        doomed.stop()
        steady.stop()


def test_h6_lost_host_is_retried_and_takes_tasks_again(tmp_path: Path, tmp_path_factory):
    sshd.require_sshd()
    flaky, = sshd.start_servers(1, tmp_path_factory, prefix="flaky")
    try:
        project, env = _project(tmp_path, [flaky], "  nap: sleep 0.5; echo {i}",
                                "i: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]")
        runner = Watched([], project, env)  # one local worker, two on the host
        runner.wait_line(r"^START   gpu: flaky1:")
        flaky.kill()
        runner.wait_line("host flaky1: connection lost")
        flaky.restart()
        code, out, err = runner.finish()
        assert code == 0, out + err
        assert "host flaky1: connection lost" in out and "host flaky1: connected again" in out
        workers = [_worker(load(project / "output" / f"I_{i}" / "stat"), "nap") for i in range(1, 19)]
        assert all(statuses(project / "output" / f"I_{i}") == {"nap": "finished"} for i in range(1, 19))
        lost_at = out.index("connection lost")
        assert re.search(r"^DONE    gpu: flaky1:\d", out[out.index("connected again"):], re.M), "no task after reconnect"
        assert lost_at > 0 and any(w.startswith("flaky1:") for w in workers)
    finally:
        flaky.stop()


def test_h8_sigstopped_agent_is_lost_within_30s_and_its_tasks_finish_elsewhere(tmp_path: Path, tmp_path_factory):
    sshd.require_sshd()
    stopped, steady = sshd.start_servers(2, tmp_path_factory, prefix="frozen")
    agents: List[int] = []
    try:
        project, env = _project(tmp_path, [stopped, steady], "  nap: sleep 2; echo {i}", "i: [1, 2, 3, 4, 5, 6]")
        runner = Watched(["-r"], project, env)
        runner.wait_line(r"^START   gpu: frozen1:")
        agents = _agent_pids(stopped)
        assert len(agents) == 1
        os.kill(agents[0], signal.SIGSTOP)
        assert runner.wait_line("host frozen1: connection lost", timeout=40) < 30
        code, out, err = runner.finish()
        assert code == 0, out + err
        assert re.search(r"^REQUEUE output/I_\d: host frozen1 lost", out, re.M)
        for i in range(1, 7):
            stat = load(project / "output" / f"I_{i}" / "stat")
            assert stat["nap"] == "finished" and _worker(stat, "nap").startswith("frozen2:")
    finally:
        for pid in agents:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stopped.stop()
        steady.stop()


def test_h10_connection_cut_mid_run_leaves_no_command_of_that_host(tmp_path: Path, tmp_path_factory):
    """Both of the host's commands run (and their sync-back requests follow) when its connections drop:
    the agent ends every group it started, checked in the process table, and the tasks run again."""
    sshd.require_sshd()
    cut, = sshd.start_servers(1, tmp_path_factory, prefix="cut")
    try:
        first_time = ("if [ ! -e {_output}/ran ]; then touch {_output}/ran; "
                      "sleep 100 & echo $! >> {_output}/pids; echo $$ >> {_output}/pids; wait; fi")
        project, env = _project(tmp_path, [cut], f"  once: {first_time}", "i: [1, 2]")
        runner = Watched(["-r", "--grace", "2s"], project, env)
        pid_files = [Path(cut.workdir, "output", f"I_{i}", "pids") for i in (1, 2)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(f.exists() and len(f.read_text().split()) == 2
                                                       for f in pid_files):
            time.sleep(0.05)
        pids = [int(p) for f in pid_files for p in f.read_text().split()]
        groups = {_group_of(p) for p in pids}
        assert len(pids) == 4 and len(groups) == 2
        cut.drop_connections()
        runner.wait_line("host cut1: connection lost")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _live_in_groups(groups):
            time.sleep(0.1)
        assert _live_in_groups(groups) == []
        code, out, err = runner.finish()
        assert code == 0, out + err
        assert all(statuses(project / "output" / f"I_{i}") == {"once": "finished"} for i in (1, 2))
    finally:
        cut.stop()


def test_h9_100_mb_on_stderr_from_the_first_command_of_a_line_changes_nothing(servers, tmp_path: Path):
    noisy = "python3 -c 'import sys; [sys.stderr.write(\"x\" * 1048576) for _ in range(100)]' && echo after {i}"
    project, env = _project(tmp_path, servers[:1], f"  noisy: {noisy}\n  next: echo next {{i}}", "i: [1, 2]",
                            extra='sync: {exclude: ["log.noisy.*"]}\n')
    began = time.monotonic()
    code, out, err = run(["-r"], project, env, timeout=120)
    assert code == 0, out + err
    assert time.monotonic() - began < 60
    for i in (1, 2):
        assert statuses(project / "output" / f"I_{i}") == {"noisy": "finished", "next": "finished"}
        log, = (project / "output" / f"I_{i}").glob("log.next.*")
        assert log.read_text() == f"next {i}\n"


def test_h12_a_host_name_that_does_not_resolve_is_a_usage_error_and_nothing_runs(tmp_path: Path):
    sshd.require_paramiko()
    write(tmp_path, "template:\n  show: echo hi\nresource: [0]\n---\ni: 1\n")
    code, out, err = run(["--hosts", "nosuchhost.invalid"], tmp_path)
    assert code == 2, out + err
    assert err.startswith("mlrunner: --hosts: host 'nosuchhost.invalid' does not resolve")
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert not (tmp_path / "output").exists()
    write(tmp_path, "template:\n  show: echo hi\nhosts: {nosuchhost.invalid: {}}\n---\ni: 1\n")
    code, out, err = run([], tmp_path)
    assert code == 2 and err.startswith("params.yaml: hosts: host 'nosuchhost.invalid' does not resolve"), err
    assert not (tmp_path / "output").exists()


def _counts():
    return threading.active_count(), len(os.listdir("/proc/self/fd"))


def test_h12_fifty_failed_connects_leak_no_thread_and_no_socket(servers, tmp_path: Path, monkeypatch):
    """Refused at TCP (nothing listens) and refused after the handshake (unknown host key: paramiko's
    transport thread had started), 25 times each."""
    from mlrunner.backends.ssh import Host, HostError
    from mlrunner.plan.hosts import HostSpec
    monkeypatch.setenv("HOME", str(sshd.make_home(tmp_path / "home", servers[:1], trust=False)))
    closed_port = sshd.free_port()
    attempts = [HostSpec(servers[0].alias), HostSpec("127.0.0.1", port=closed_port)]

    def fail(spec) -> str:
        with pytest.raises(HostError) as caught:
            Host(spec, False, 1).connect()
        return str(caught.value)

    assert "unknown host key" in fail(attempts[0]) and "cannot reach" in fail(attempts[1])  # warm up imports
    before = _counts()
    for _ in range(25):
        for spec in attempts:
            fail(spec)

    def grown() -> bool:
        return any(now > then for now, then in zip(_counts(), before))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and grown():
        time.sleep(0.1)
    assert not grown(), (_counts(), before)


def test_h1_empty_resource_beside_hosts_means_hosts_only(servers, tmp_path: Path):
    project, env = _project(tmp_path, servers[:1], "  show: echo $CUDA_VISIBLE_DEVICES", "i: [1, 2, 3]")
    text = (project / "params.yaml").read_text().replace("resource: [0]", "resource: []")
    (project / "params.yaml").write_text(text)
    code, out, err = run([], project, env)
    assert code == 0, out + err
    assert {_worker(load(project / "output" / f"I_{i}" / "stat"), "show") for i in (1, 2, 3)} <= {
        "host1:0", "host1:1"}


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



@pytest.fixture
def host(servers, tmp_path: Path, monkeypatch):
    """An open Host to the first server, in this process."""
    from mlrunner.backends.ssh import Host
    from mlrunner.plan.hosts import HostSpec
    monkeypatch.setenv("HOME", str(sshd.make_home(tmp_path / "home", servers[:1])))
    monkeypatch.chdir(tmp_path)
    opened = Host(HostSpec(servers[0].alias, workdir=str(servers[0].workdir)), False, 2)
    opened.connect()
    yield opened
    opened.close()


def test_h8_a_request_past_its_deadline_fails_alone_and_the_host_stays(host, monkeypatch):
    from mlrunner.backends.ssh import rpc
    monkeypatch.setitem(rpc.DEADLINES, "run", 1.0)
    began = time.monotonic()
    with pytest.raises(rpc.RequestFailed, match="no answer to 'run' within 1s"):
        host.run(["sleep", "5"])  # a hung nvidia-smi
    assert time.monotonic() - began < 4
    assert host.up and "id" in host.request("ping")
    assert host.start("exit 7", "0", False).wait(20) == 7


def test_h8_a_long_request_is_not_silence_but_a_stopped_agent_is(host, servers, monkeypatch):
    from mlrunner.backends.ssh import rpc
    monkeypatch.setattr(rpc, "HEARTBEAT", 0.2)
    monkeypatch.setattr(rpc, "SILENCE", 3.0)
    host.close()
    host.given_up = False
    host.connect()  # its heartbeat now runs at the patched pace
    assert host.run(["sleep", "6"])[0] == 0  # twice SILENCE without a reply to this request
    assert host.up
    process = host.start("sleep 30", "0", False)
    agent = host.agent_pid
    assert agent in _agent_pids(servers[0])
    os.kill(agent, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with pytest.raises(HostLost):
            process.wait(20)
        assert time.monotonic() - began < 8 and not host.up
    finally:
        try:
            os.kill(agent, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_h6_news_from_an_old_connection_never_touches_the_new_one(host):
    old = host._rpc
    old.lose()  # the first connection breaks
    assert not host.up
    host.connect()
    assert host.up and host._rpc is not old
    old.on_lost(old)  # its reader, late, reports the loss again
    assert host.up and host.start("exit 4", "0", False).wait(20) == 4
