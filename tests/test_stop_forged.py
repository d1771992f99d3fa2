"""`--stop` signals only a process proven to be the mlrunner run of this tree (SPEC D3, R11).

Anyone who can write into the output tree can plant a `.mlrunner-run.*` record. Each forged or
malformed record here names a real live process (a `sleep` this test started, or a stand-in that
answers on a token's socket); `--stop` must refuse it in one line, with no traceback, and the
process must live on. The other user is a real Unix user made with useradd (CI runs as root).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest
import yaml

import test_claims_hostile
from mlrunner.run.stop import stop as stop_tree  # imported before a child switches user

from runlib import environment

users = test_claims_hostile.users  # the fixture that makes the other users
HOST = os.uname().nodename
# A stand-in for a runner: answers on the token's abstract socket; with "stubborn" it ignores SIGTERM.
ANSWERER = """
import signal, socket, sys
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(b"\\0mlrunner-run-" + sys.argv[1].encode())
listener.listen(8)
print("ready", flush=True)
while True:
    connection, _ = listener.accept()
    try:
        connection.sendall(b"mlrunner\\n")
    except OSError:  # --stop closes as soon as the kernel told it who answers
        pass
    connection.close()
"""


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stream:
        return int(stream.read().rsplit(b")", 1)[1].split()[19])


@pytest.fixture
def spawn() -> Iterator:
    """`spawn(argv, user=None) -> Popen`: a live process to name in a record; all killed after the test."""
    started: List[subprocess.Popen] = []

    def make(argv: List[str], user=None) -> subprocess.Popen:
        setuid = None if user is None else (lambda: (os.setgroups([]), os.setgid(user.pw_gid), os.setuid(user.pw_uid)))
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=setuid)
        started.append(process)
        if argv[:2] == [sys.executable, "-c"]:
            assert process.stdout.readline().strip() == "ready"
        return process

    yield make
    for process in started:
        process.kill()
        process.wait()


@pytest.fixture
def tree() -> Iterator[Path]:
    """An output tree other users can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="mlrunner-stop-test-", dir="/tmp"))
    path.chmod(0o755)
    (path / "output").mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def plant(tree: Path, **fields) -> Path:
    record = tree / "output" / f".mlrunner-run.{HOST}.{fields.get('pid', 0)}"
    record.write_text(yaml.safe_dump(dict({"host": HOST, "started": 0, "total": 1, "done": 0}, **fields)))
    record.chmod(0o644)
    return record


def stop(tree: Path, timeout: float = 30):
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mlrunner", "--stop"], cwd=tree, env=environment(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - began


def stop_as(user, tree: Path):
    """--stop as `user`, in a child forked from this process: the interpreter's own files may be
    out of the other user's reach (under /root), what is imported already is not."""
    read, written = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 99
        try:
            os.close(read)
            sys.stdout = sys.stderr = os.fdopen(written, "w")
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.chdir(tree)
            code = stop_tree("output")
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(written)
    with os.fdopen(read, "r") as stream:
        printed = stream.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), printed


def refused(err: str, words: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlrunner: --stop: ") and words in lines[0], err


def test_d3_a_record_without_pid_start_is_refused(tree: Path, spawn) -> None:
    victim = spawn(["sleep", "100"])
    record = plant(tree, pid=victim.pid, token=secrets.token_hex(16))
    code, _, err, _ = stop(tree)
    assert code == 1
    refused(err, "no pid_start")
    assert victim.poll() is None and record.exists()


def test_d3_a_bool_pid_is_not_pid_1(tree: Path) -> None:
    record = plant(tree, pid=True, pid_start=1, token=secrets.token_hex(16))
    code, _, err, _ = stop(tree)
    assert code == 1
    refused(err, "pid True is not a process id")
    assert record.exists()


def test_d3_a_live_process_with_the_pid_but_another_start_time_is_not_signalled(tree: Path, spawn) -> None:
    victim = spawn(["sleep", "100"])
    plant(tree, pid=victim.pid, pid_start=start_time(victim.pid) + 1, token=secrets.token_hex(16))
    code, out, err, _ = stop(tree)
    assert code == 0  # a stale record: nothing to stop
    refused(err, "another process now")
    assert "no run in progress" in out and victim.poll() is None


def test_d3_a_zombie_is_not_waited_for(tree: Path) -> None:
    zombie = subprocess.Popen(["true"])
    recorded = start_time(zombie.pid)
    deadline = time.monotonic() + 5
    while open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        plant(tree, pid=zombie.pid, pid_start=recorded, token=secrets.token_hex(16))
        code, _, err, seconds = stop(tree)
        assert code == 0 and seconds < 5
        refused(err, "not running (gone, or a zombie)")
    finally:
        zombie.wait()


def test_d3_a_live_process_that_does_not_answer_the_token_is_refused(tree: Path, spawn) -> None:
    victim = spawn(["sleep", "100"])  # pid and start time right: what anyone can read in /proc
    record = plant(tree, pid=victim.pid, pid_start=start_time(victim.pid), token=secrets.token_hex(16))
    code, _, err, _ = stop(tree)
    assert code == 1
    refused(err, f"pid {victim.pid} does not answer on its record's token")
    assert victim.poll() is None and record.exists()


def test_d3_a_token_answered_by_another_process_is_refused(tree: Path, spawn) -> None:
    token = secrets.token_hex(16)
    answerer = spawn([sys.executable, "-c", ANSWERER, token, "plain"])
    victim = spawn(["sleep", "100"])
    plant(tree, pid=victim.pid, pid_start=start_time(victim.pid), token=token)
    code, _, err, _ = stop(tree)
    assert code == 1
    refused(err, f"answered by pid {answerer.pid}, not pid {victim.pid}")
    assert victim.poll() is None and answerer.poll() is None


def test_d3_another_users_process_is_refused(tree: Path, spawn, users) -> None:
    other = users[0]
    victim = spawn(["sleep", "100"], user=other)
    plant(tree, pid=victim.pid, pid_start=start_time(victim.pid), token=secrets.token_hex(16))
    code, _, err, _ = stop(tree)
    assert code == 1
    refused(err, "does not answer on its record's token")
    assert victim.poll() is None


def test_d3_another_users_run_is_refused_without_a_traceback(tree: Path, spawn, users) -> None:
    """The other user runs --stop on root's run (as it answers its token): one line, not a
    PermissionError traceback, and the run lives on."""
    token = secrets.token_hex(16)
    run = spawn([sys.executable, "-c", ANSWERER, token, "plain"])
    record = plant(tree, pid=run.pid, pid_start=start_time(run.pid), token=token)
    code, printed = stop_as(users[0], tree)
    assert code == 1
    refused(printed, f"pid {run.pid} is another user's run (uid 0)")
    assert run.poll() is None and record.exists()


def test_r11_a_run_that_does_not_end_is_reported_with_what_to_do(tree: Path, spawn) -> None:
    token = secrets.token_hex(16)
    run = spawn([sys.executable, "-c", ANSWERER, token, "stubborn"])
    plant(tree, pid=run.pid, pid_start=start_time(run.pid), token=token, grace=0.5)
    code, out, err, seconds = stop(tree)
    assert code == 1 and 5.4 < seconds < 15  # its grace 0.5 s + 5 s, then no longer
    assert f"Stopping pid {run.pid} (SIGTERM)" in out
    assert err.strip() == (f"mlrunner: --stop: pid {run.pid} did not end within 5.5s of SIGTERM (its grace 0.5s + 5s); "
                           f"end it with: kill -9 {run.pid} (the next run ends the commands it leaves)")
    assert run.poll() is None


def test_d3_a_verified_run_is_stopped(tree: Path, spawn) -> None:
    token = secrets.token_hex(16)
    run = spawn([sys.executable, "-c", ANSWERER, token, "plain"])
    plant(tree, pid=run.pid, pid_start=start_time(run.pid), token=token, grace=1)
    code, out, err, _ = stop(tree)
    assert (code, err) == (0, "")
    assert f"Stopped pid {run.pid}" in out and run.wait(5) == -15

