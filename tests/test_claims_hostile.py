"""Claims no other user can break (SPEC G4 on a shared server; backends/claims.py).

Another local user may make a run more careful (wait, skip a GPU), never hang it past a bound,
crash it, fail its tasks or make it start more than fits. The hostile user is a real Unix user made
here (as root; CI runs as root), acting from a process forked from this one that switches to them.
The victim is a real `python -m mlrunner` run on the stand-in nvidia-smi (tests/bin), with its
claims in a root-owned sticky directory made like /tmp.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

import gpulib
from gpulib import H100
from runlib import STAND_INS, start, write

from mlrunner.backends import claims as claims_module
from mlrunner.backends.claims import ClaimDir

CONFIG = ("template: {train: fake-cuda-job 1000 0.2}\nresource: [0, 1]\ngpu: {memory: 1GiB}\n---\n"
          "i: [1, 2, 3, 4]\n")
_kept: list = []  # what a hostile child opened, held open until it is killed


@pytest.fixture(scope="session")
def users() -> Iterator[List[pwd.struct_passwd]]:
    """Two users of this machine with no privilege, made for these tests and removed after them."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("CI=true but not root (or no useradd): the tests of other users cannot run", pytrace=False)
        pytest.skip("needs root and useradd to make the other users")
    names = [f"mlrc{os.getpid() % 100000}{letter}" for letter in "ab"]
    made = []
    try:
        for name in names:
            try:
                pwd.getpwnam(name)  # left by a run that was killed: used as it is
            except KeyError:
                subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True,
                               stdout=subprocess.PIPE)
                made.append(name)
        yield [pwd.getpwnam(name) for name in names]
    finally:
        for name in made:
            subprocess.run(["userdel", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A claim directory as /tmp is: root's, mode 1777 (the hostile user cannot reach pytest's tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="mlrunner-claims-test-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hostile(users) -> Iterator[Callable]:
    """`act(user, action, stay=True, umask=0o022)`: run `action()` as `user` in a forked child and
    return (its pid, what it returned); a child that stays keeps what it opened until the test ends."""
    children = []

    def act(user: pwd.struct_passwd, action: Callable, stay: bool = True, umask: int = 0o022):
        read, written = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never back into pytest
            code = 0
            try:
                os.close(read)
                os.setgroups([])
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
                os.umask(umask)
                reply = {"ok": action()}
            except BaseException as error:  # noqa: B902 - reported to the parent, whatever it is
                reply, code = {"error": repr(error)}, 1
            os.write(written, json.dumps(reply).encode())
            os.close(written)
            while stay and code == 0:
                signal.pause()
            os._exit(code)
        os.close(written)
        with os.fdopen(read, "rb") as stream:
            reply = json.loads(stream.read() or b'{"error": "no reply"}')
        children.append(pid)
        assert "error" not in reply, reply["error"]
        return pid, reply["ok"]

    yield act
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):  # the test ended it already
            pass


def _victim(tmp_path: Path, shared: Path, **env) -> subprocess.Popen:
    """A run of four 1 GiB jobs on GPUs 0 and 1, its claims in `shared`."""
    write(tmp_path, CONFIG)
    state = gpulib.gpu_state(tmp_path / "gpus.json")
    return start([], tmp_path, {"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_GPU_STATE": str(state),
                                "MLRUNNER_LOCK_DIR": str(shared), **env})


def _finishes(runner: subprocess.Popen, tmp_path: Path, within: float) -> str:
    """The victim ended well within `within` seconds, nothing oversubscribed: its stderr."""
    began = time.monotonic()
    try:
        out, err = runner.communicate(timeout=within)
    finally:
        runner.kill()
    assert runner.returncode == 0 and "Finished: 4" in out, (out, err)
    history = gpulib.history(tmp_path / "gpus.json")
    assert len(history) == 4 and max(entry["used"] for entry in history) <= H100
    assert "Traceback" not in err, err
    assert time.monotonic() - began < within
    return err


def start_of(pid: int) -> int:
    """A process's start time, as a claim names it: field 22 of /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stream:
        return int(stream.read().rsplit(b")", 1)[1].split()[19])


def _claim(uuid: str, mib: int, pid: int, start=None, **fields) -> bytes:
    return json.dumps({"uuid": uuid, "mib": mib, "sid": None, "uid": os.geteuid(), "pid": pid,
                       "start": start_of(pid) if start is None else start, **fields}).encode()


def _hold(path: Path, data: bytes) -> None:
    """Write a file and hold its flock for as long as this (hostile) process lives."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(descriptor, data)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    _kept.append(descriptor)


def _traps(shared: Path, lock: str) -> Callable:
    def action():
        for name in ("mlrunner-gpu-fifo.claim", "x.claim"):
            os.mkfifo(shared / name)
        os.mkdir(shared / "mlrunner-gpu-dir.claim")
        os.symlink(shared / "x.claim", shared / "mlrunner-gpu-link.claim")
        if lock == "fifo":
            os.mkfifo(shared / "allocate.lock")
        else:
            os.symlink(shared / "made-through-the-link", shared / "allocate.lock")
        me = os.getpid()
        for name, data in [("inf", b'{"uuid": "GPU-0000", "mib": Infinity, "sid": null, "pid": 1}'),
                           ("list", _claim("GPU-0000", 1000, me, sid=[1, 2])),
                           ("bad", b'{"uuid": '), ("nested", b"[" * 4000),
                           ("huge", _claim("GPU-0000", 1000, me).ljust(1 << 20)),
                           ("float", _claim("GPU-0001", 1e400, me))]:
            _hold(shared / f"mlrunner-gpu-{name}.claim", data)
        for number, data in enumerate([b'{"uuid": "GPU-0000", "mib": Infinity, "sid": null, "pid": 1}',
                                       b'{"uuid": "GPU-0000", "mib": 100, "sid": [1]}']):
            _hold(shared / f"old.{number}.claim", data)  # as the claims before these checks were named
    return action


@pytest.mark.parametrize("lock", ["fifo", "symlink"])
def test_G4_fifos_links_directories_and_malformed_claims_never_stop_a_run(tmp_path, shared, hostile, users, lock):
    """A FIFO named like a claim (or like the old allocate.lock), a link, a directory, Infinity, a
    list as sid, bad JSON, a 1 MiB file, JSON nested past the recursion limit: all ignored, with one
    warning; the run finishes; no link is ever followed."""
    hostile(users[0], _traps(shared, lock))
    err = _finishes(_victim(tmp_path, shared), tmp_path, within=60)
    assert err.count("ignoring") == 1, err
    assert not (shared / "made-through-the-link").exists()


def test_G4_each_kind_of_trap_is_ignored_and_an_honest_claim_among_them_still_counts(shared, hostile, users):
    hostile(users[0], _traps(shared, "fifo"))
    honest = ClaimDir(str(shared))
    held = honest.add({"uuid": "GPU-0001", "mib": 2048, "sid": None})
    warnings: list = []
    began = time.monotonic()
    assert ClaimDir(str(shared), warn=warnings.append).claims() == [{"uuid": "GPU-0001", "mib": 2048, "sid": None}]
    assert time.monotonic() - began < 2 and len(warnings) == 1, warnings
    honest.remove(held)


def test_G4_a_claim_counts_only_while_its_holder_lives_and_is_its_owners(tmp_path, shared, hostile, users):
    """Another user's live claim of all of GPU 0 counts (the run stays off GPU 0): honest users see
    each other. Their claims of all of GPU 1 do not: one names a process of root's, one a process that
    has ended, one a live process of theirs with another start time (a reused pid)."""
    def action():
        me = os.getpid()
        ended = os.fork()
        if ended == 0:
            os._exit(0)
        os.waitpid(ended, 0)
        claim = lambda pid, start=None: _claim("GPU-0001", H100, pid, start, uid=os.geteuid())  # noqa: E731
        _hold(shared / "mlrunner-gpu-live.claim", _claim("GPU-0000", H100, me))
        _hold(shared / "mlrunner-gpu-roots.claim", claim(1))
        _hold(shared / "mlrunner-gpu-ended.claim", claim(ended, start_of(me)))
        _hold(shared / "mlrunner-gpu-reused.claim", claim(me, start_of(me) + 1))
        for name, pid in [("live", me), ("roots", 1), ("ended", ended)]:  # as the old claims were named
            _hold(shared / f"old-{name}.claim", json.dumps({"uuid": f"GPU-000{name != 'live':d}", "mib": H100,
                                                            "pid": pid}).encode())
    holder, _ = hostile(users[0], action)
    assert ClaimDir(str(shared)).claims() == [{"uuid": "GPU-0000", "mib": H100, "sid": None}]
    _finishes(_victim(tmp_path, shared), tmp_path, within=60)
    assert {entry["gpu"] for entry in gpulib.history(tmp_path / "gpus.json")} == {1}
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    assert ClaimDir(str(shared)).claims() == []  # the kernel dropped its flocks: its claims are gone


def _lock_everything(shared: Path) -> Callable:
    def action():
        for path in (shared, shared / "allocate.lock"):  # the directory, and the lock file of old
            descriptor = os.open(path, os.O_RDONLY | os.O_CREAT if path != shared else os.O_RDONLY, 0o644)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            _kept.append(descriptor)
    return action


def test_G4_a_lock_held_by_another_user_delays_a_run_by_a_bound(tmp_path, shared, hostile, users):
    hostile(users[0], _lock_everything(shared))
    err = _finishes(_victim(tmp_path, shared), tmp_path, within=45)
    assert err.count("held the GPU claim lock") == 1, err


def test_G4_a_remote_agent_decides_without_a_lock_held_by_another_user(shared, hostile, users):
    """The agent's gpu_lock answers within the bound, with the warning for the console: the host is
    not lost, its tasks not failed."""
    from test_agent import Agent
    hostile(users[0], _lock_everything(shared))
    agent = Agent(env={"MLRUNNER_LOCK_DIR": str(shared)})
    try:
        began = time.monotonic()
        reply = agent.request("gpu_lock", timeout=60)
        assert "error" not in reply and reply["claims"] == [], reply
        assert time.monotonic() - began < claims_module.LOCK_WAIT + 5
        assert len(reply["warnings"]) == 1 and "held the GPU claim lock" in reply["warnings"][0], reply
        claim = {"uuid": "GPU-0000", "mib": 2048, "sid": None}
        assert "error" not in agent.request("gpu_claim", claim=claim)
        agent.request("gpu_unlock")
        assert ClaimDir(str(shared)).claims() == [claim]
    finally:
        agent.stop()


@pytest.mark.parametrize("number, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_G4_a_run_waiting_for_a_held_lock_still_ends_on_a_signal(tmp_path, shared, hostile, users, number, code):
    hostile(users[0], _lock_everything(shared))
    runner = _victim(tmp_path, shared)
    time.sleep(2)  # planned, and waiting for the lock
    signalled = time.monotonic()
    runner.send_signal(number)
    try:
        _, err = runner.communicate(timeout=20)
    finally:
        runner.kill()
    assert runner.returncode == code and "Traceback" not in err, err
    assert time.monotonic() - signalled < claims_module.LOCK_WAIT + 10


def test_G4_a_first_user_with_umask_077_leaves_its_claims_visible_to_the_others(shared, hostile, users):
    def first():
        ClaimDir(str(shared / "made")).lock()  # made with umask 077: still shared
        claims = ClaimDir(str(shared))
        claims.add({"uuid": "GPU-0000", "mib": 4096, "sid": None})
        _kept.append(claims)
        return oct(os.stat(shared / "made").st_mode)
    _, mode = hostile(users[0], first, umask=0o077)
    assert mode == oct(0o41777)

    def second():
        claims = ClaimDir(str(shared))
        with claims.locked():
            return claims.claims()
    _, seen = hostile(users[1], second, stay=False)
    assert seen == [{"uuid": "GPU-0000", "mib": 4096, "sid": None}]


def test_G4_a_claim_directory_of_another_user_is_refused_in_one_line(tmp_path, shared, hostile, users):
    """They could remove our claims from it, or make it unusable: refused before anything starts (exit 2)."""
    def squat():
        os.mkdir(shared / "squat")
        os.chmod(shared / "squat", 0o1777)
    hostile(users[0], squat, stay=False)
    runner = _victim(tmp_path, shared / "squat")
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"belongs to {users[0].pw_name}" in err and "MLRUNNER_LOCK_DIR" in err, err
    assert not (tmp_path / "output").exists() and gpulib.history(tmp_path / "gpus.json") == []


def test_G4_by_default_claims_live_in_tmp_itself_with_no_directory_to_squat(monkeypatch):
    monkeypatch.delenv("MLRUNNER_LOCK_DIR", raising=False)
    assert claims_module.lock_dir() == "/tmp" and claims_module.trouble("/tmp") is None


def test_G4_a_guessed_name_never_fails_a_grant(shared, hostile, users, monkeypatch, capsys):
    """Every name this holder would use, taken first by another user: the claim is kept in memory."""
    monkeypatch.setattr(secrets, "token_hex", lambda size: "0" * 2 * size)
    names = [f".mlrunner-gpu-{'0' * 32}.tmp", f"mlrunner-gpu-{'0' * 32}.claim",
             *(f"{socket.gethostname()}.{os.getpid()}.{serial}.claim" for serial in (1, 2))]
    hostile(users[0], lambda: [os.mkfifo(shared / name) for name in names], stay=False)
    claims = ClaimDir(str(shared))
    held = claims.add({"uuid": "GPU-0000", "mib": 1024, "sid": None})
    claims.attach(held, 77)
    assert claims.claims() == [{"uuid": "GPU-0000", "mib": 1024, "sid": 77}]
    warnings = capsys.readouterr().err.splitlines()  # one for the claim kept, one for the FIFO read
    assert len(warnings) == 2 and "cannot write" in warnings[0] and "ignoring" in warnings[1], warnings
    claims.remove(held)
    assert claims.claims() == []


def test_G4_a_claim_that_fails_half_way_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    def full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "pwrite", full)
    claims = ClaimDir(str(tmp_path))
    held = claims.add({"uuid": "GPU-0000", "mib": 1024, "sid": None})
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().err.count("warning: GPU claims: cannot write") == 1
    assert claims.claims() == [{"uuid": "GPU-0000", "mib": 1024, "sid": None}]  # this run still counts it
    claims.remove(held)
    assert claims.claims() == []
