"""The host agent on its own (SPEC H8-H10): a real `python3 agent.py` subprocess, spoken to over pipes
as the runner does over SSH, with real process groups. The same agent over a real sshd is in test_ssh.py.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import select
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from runlib import REPO, alive, wait_until

AGENT = REPO / "mlrunner" / "backends" / "agent.py"


class Agent:
    """The agent started as the runner starts it, with requests and replies as JSON lines."""

    def __init__(self, grace: float = 2.0, orphaned: float = 60.0, env=None):
        self.process = subprocess.Popen([sys.executable, "-u", str(AGENT), f"{grace:g}", f"{orphaned:g}"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, bufsize=0,
                                        env=dict(os.environ, **(env or {})))
        self.ids = itertools.count(1)
        self.replies: "queue.Queue[dict]" = queue.Queue()
        self.exits: "queue.Queue[dict]" = queue.Queue()
        self.hello = json.loads(self.process.stdout.readline())  # unbuffered: reads up to the newline only
        self.reading = True
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        """Read with select, so that `cut()` can stop it and then close the pipe under it."""
        fd = self.process.stdout.fileno()
        buffer = b""
        while self.reading:
            if not select.select([fd], [], [], 0.1)[0]:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                message = json.loads(line)
                (self.exits if "exit" in message else self.replies).put(message)

    def cut(self) -> None:
        """The runner's end of the connection goes away: nobody reads the agent's replies any more."""
        self.reading = False
        self.reader.join()
        self.process.stdout.close()

    def send(self, op: str, **fields) -> int:
        ident = fields.pop("id", None) or next(self.ids)
        self.process.stdin.write((json.dumps(dict(fields, op=op, id=ident)) + "\n").encode())
        self.process.stdin.flush()
        return ident

    def request(self, op: str, timeout: float = 20, **fields) -> dict:
        ident = self.send(op, **fields)
        while True:
            reply = self.replies.get(timeout=timeout)
            if reply["id"] == ident:
                return reply

    def start(self, line: str, cwd: Path) -> int:
        ident = next(self.ids)
        assert "pid" in self.request("start", id=ident, line=line, cwd=str(cwd), env={})
        return ident

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def agent():
    started = Agent()
    yield started
    started.stop()


def pids_in(path: Path, count: int):
    assert wait_until(lambda: path.exists() and len(path.read_text().split()) == count)
    return [int(p) for p in path.read_text().split()]


TREE = "echo $$ >> pids; sleep 100 & echo $! >> pids; wait"


def test_h8_a_slow_request_does_not_hold_up_the_others(agent, tmp_path: Path):
    slow = agent.send("run", argv=["sleep", "3"])
    began = time.monotonic()
    assert agent.request("ping") == {"id": slow + 1}
    assert time.monotonic() - began < 2
    assert agent.replies.get(timeout=10)["id"] == slow


def test_h10_a_reply_that_cannot_be_written_ends_every_command(agent, tmp_path: Path):
    """The connection broke mid-request: stdin still open, stdout gone (the BrokenPipeError case)."""
    agent.start(TREE, tmp_path)
    (tmp_path / "two").mkdir()
    agent.start(TREE, tmp_path / "two")
    pids = pids_in(tmp_path / "pids", 2) + pids_in(tmp_path / "two" / "pids", 2)
    agent.cut()
    agent.send("list", path=str(tmp_path))  # its reply meets a closed pipe
    assert wait_until(lambda: agent.process.poll() is not None)
    assert [p for p in pids if alive(p)] == []


@pytest.mark.parametrize("how", ["stdin closed", "SIGTERM", "SIGHUP"])
def test_h10_the_agent_ends_its_commands_when_its_connection_closes_or_it_is_terminated(agent, tmp_path, how):
    agent.start(TREE, tmp_path)
    pids = pids_in(tmp_path / "pids", 2)
    if how == "stdin closed":
        agent.process.stdin.close()
    else:
        agent.process.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGHUP)
    assert wait_until(lambda: agent.process.poll() is not None)
    assert [p for p in pids if alive(p)] == []


def test_h10_a_runner_silent_too_long_is_gone_and_the_agent_ends_its_commands(tmp_path: Path):
    """A dead link without FIN: no EOF ever comes, but no ping either."""
    agent = Agent(orphaned=2)
    try:
        agent.start(TREE, tmp_path)
        pids = pids_in(tmp_path / "pids", 2)
        began = time.monotonic()
        assert [p for p in pids if alive(p)] == pids or agent.process.poll() is not None
        assert wait_until(lambda: agent.process.poll() is not None)
        assert time.monotonic() - began < 10
        assert [p for p in pids if alive(p)] == []
    finally:
        agent.stop()


def _force_next_pid(pid: int) -> bool:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as stream:
            stream.write(str(pid - 1))
        return True
    except OSError:
        return False


def test_h10_a_group_is_signalled_only_while_it_is_ours(agent, tmp_path: Path):
    ident = agent.start("sleep 30 & echo $! > child; exit 3", tmp_path)
    assert agent.exits.get(timeout=20) == {"id": ident, "exit": 3}
    child = pids_in(tmp_path / "child", 1)[0]
    leader = int(open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[2])  # its process group
    # The shell has exited but its group lives on: the leader stays a zombie, so its pid cannot be reused.
    assert open(f"/proc/{leader}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    assert agent.request("alive", target=ident)["alive"] is True
    assert agent.request("signal", target=ident, signal=signal.SIGTERM)["known"] is True
    assert wait_until(lambda: not alive(child))
    # The group is empty: the agent reaps the leader and forgets the group.
    assert wait_until(lambda: agent.request("signal", target=ident, signal=0)["known"] is False)
    assert wait_until(lambda: not os.path.exists(f"/proc/{leader}"))
    # An unrelated process that gets the same pid, as its own group leader, is never signalled.
    stranger = None
    for _ in range(200):
        if not _force_next_pid(leader):
            break  # no privilege to choose pids here: the checks above stand alone
        candidate = subprocess.Popen(["sleep", "30"], start_new_session=True)
        if candidate.pid == leader:
            stranger = candidate
            break
        candidate.kill()
        candidate.wait()
    if stranger is not None:
        try:
            assert agent.request("signal", target=ident, signal=signal.SIGTERM)["known"] is False
            assert agent.request("alive", target=ident)["alive"] is False
            assert stranger.poll() is None
            agent.process.stdin.close()  # the agent's cleanup must leave it alone too
            assert wait_until(lambda: agent.process.poll() is not None)
            assert stranger.poll() is None
        finally:
            stranger.kill()
            stranger.wait()


def test_h10_a_command_that_exits_at_once_is_reported_and_forgotten(agent, tmp_path: Path):
    idents = [agent.start(f"exit {i}", tmp_path) for i in range(5)]
    codes = {}
    while len(codes) < 5:
        message = agent.exits.get(timeout=20)
        codes[message["id"]] = message["exit"]
    assert codes == {ident: i for i, ident in enumerate(idents)}
    assert wait_until(lambda: all(agent.request("alive", target=i)["alive"] is False for i in idents))
    # Forgotten once its watcher reaps the leader: a scan of the group every 0.5 s, so a moment after.
    assert wait_until(lambda: all(agent.request("signal", target=i, signal=0)["known"] is False for i in idents))


def test_h9_commands_and_the_agent_write_nothing_on_its_stdio(agent, tmp_path: Path):
    ident = agent.start("echo out; echo err >&2; python3 -c 'import sys; sys.stderr.write(\"x\" * 300000)'", tmp_path)
    assert agent.exits.get(timeout=20) == {"id": ident, "exit": 0}
    agent.request("ping")
    agent.process.stdin.close()
    assert wait_until(lambda: agent.process.poll() is not None)
    assert agent.process.stderr.read() == b""
    assert agent.replies.empty()


def test_h13_unpack_places_files_with_nanosecond_mtimes_and_refuses_escapes(agent, tmp_path: Path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "code.py").write_text("print(1)\n")
    (source / "evil").write_text("pwned\n")
    bundle = Path(agent.request("temporary")["path"])
    with tarfile.open(bundle, "w") as archive:
        archive.add(source / "code.py", arcname="pkg/code.py")
    root = tmp_path / "work"
    reply = agent.request("unpack", root=str(root), path=str(bundle), mtimes={"pkg/code.py": 1_600_000_000_123_456_789})
    assert reply["placed"] == 1 and not bundle.exists()
    assert (root / "pkg" / "code.py").read_text() == "print(1)\n"
    assert (root / "pkg" / "code.py").stat().st_mtime_ns == 1_600_000_000_123_456_789
    bundle = Path(agent.request("temporary")["path"])
    with tarfile.open(bundle, "w") as archive:
        archive.add(source / "evil", arcname="../evil")
    reply = agent.request("unpack", root=str(root), path=str(bundle), mtimes={"../evil": 1})
    assert "refused path" in reply["error"] and not (tmp_path / "evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "work"]
    assert "not a bundle" in agent.request("unpack", root=str(root), path=str(source / "code.py"), mtimes={})["error"]
    agent.request("discard", path=str(source / "code.py"))  # not one of its bundles: left alone
    assert (source / "code.py").exists()


def test_G4_G6_the_agent_holds_its_machines_claims_until_it_dies(tmp_path: Path):
    """Claims made through the agent are the machine's: another runner there reads them, with the
    session the agent found for a process, and they go when the agent goes."""
    from mlrunner.backends.claims import ClaimDir
    locks = tmp_path / "locks"
    agent = Agent(env={"MLRUNNER_LOCK_DIR": str(locks)})
    try:
        assert agent.request("gpu_lock")["claims"] == []
        path = agent.request("gpu_claim", claim={"uuid": "GPU-1", "mib": 20480, "sid": None})["path"]
        assert "error" not in agent.request("gpu_unlock")
        ident = agent.start("sleep 30", tmp_path)
        sid = agent.request("sessions", pids=[agent.process.pid, 999999999])["sessions"]
        assert sid == [os.getsid(agent.process.pid), None]
        agent.request("gpu_attach", path=path, sid=1234)
        others = ClaimDir(str(locks))
        assert others.claims() == [{"uuid": "GPU-1", "mib": 20480, "sid": 1234}]
        with others.locked():  # a decision elsewhere holds the machine's lock: the agent's waits for it
            waiting = agent.send("gpu_lock")
            time.sleep(0.3)
            assert "error" not in agent.request("ping")  # it still serves the rest meanwhile
            assert agent.replies.empty()
        reply = agent.replies.get(timeout=10)
        assert reply["id"] == waiting and reply["claims"] == [{"uuid": "GPU-1", "mib": 20480, "sid": 1234}]
        agent.request("gpu_unlock")
        agent.request("signal", target=ident, signal=signal.SIGKILL)
    finally:
        agent.stop()
    assert wait_until(lambda: others.claims() == [])  # the kernel dropped the dead agent's flocks
    assert list(locks.glob("*.claim")) == []
