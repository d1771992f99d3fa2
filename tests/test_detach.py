"""Runs that outlive the terminal: --detach, the run record, --status and --stop (SPEC D1-D3).

Every test runs the real CLI; the commands are a bash script that says it started and then waits
while a `hold` file exists, so a test decides when they end without sleeping for a fixed time.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sshd
from longrun import detach, kill_all_in, processes_in, run_records, wait_until
from runlib import REPO, STAND_INS, alive, environment, run, start, statuses, write

JOB = """\
#!/bin/bash
echo "$1 started"
touch "started.$1"
while [ -e hold ]; do sleep 0.05; done
echo "$1 done"
"""

CONFIG = """\
template:
  train: ./job.sh {name}
default:
  name: a
resource: [%s]
---
name: [a, b, c]
"""


@pytest.fixture
def tree(tmp_path: Path):
    """A directory with job.sh and params.yaml (two workers); whatever a test leaves running is killed."""
    job = tmp_path / "job.sh"
    job.write_text(JOB)
    job.chmod(0o755)
    write(tmp_path, CONFIG % "0, 1")
    yield tmp_path
    kill_all_in(tmp_path)


def started(tree: Path, count: int) -> bool:
    return len(list(tree.glob("started.*"))) >= count


def test_d1_detach_survives_the_terminal_and_its_session_being_killed(tree: Path) -> None:
    # A shell on a terminal of its own (a pty as controlling terminal) runs --detach, then waits
    # like an interactive shell would; then the terminal closes and the session's group is killed.
    # The shell also holds a pipe that the caller waits on (as sshd or a CI step would): the
    # daemon must not keep it open.
    (tree / "hold").touch()
    master, slave = pty.openpty()
    waited_on, held = os.pipe()
    shell = subprocess.Popen(
        ["setsid", "-c", "bash", "-c", f"{sys.executable} -m mlrunner --detach > detach.out 2>&1; sleep 600"],
        cwd=tree, env=environment(), stdin=slave, stdout=slave, stderr=slave, pass_fds=(held,))
    os.close(slave)
    os.close(held)
    out = tree / "detach.out"
    wait_until(lambda: "Detached: pid" in (out.read_text() if out.exists() else ""), what="the detach message")
    pid = int(out.read_text().split("Detached: pid ")[1].split()[0])
    session = os.getsid(shell.pid)
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    assert os.getsid(pid) != session and int(fields[4]) == 0  # own session, no controlling terminal (tty_nr)
    assert int(fields[3]) != pid  # not a session leader: it can never get a terminal again

    os.close(master)  # the terminal goes away: SIGHUP to its session
    os.killpg(session, signal.SIGKILL)
    shell.wait(timeout=30)
    assert select.select([waited_on], [], [], 30)[0] and os.read(waited_on, 1) == b""  # end of file
    os.close(waited_on)
    wait_until(lambda: started(tree, 2), what="two commands started")
    assert alive(pid)
    (tree / "hold").unlink()
    wait_until(lambda: not alive(pid), what="the detached run to end")

    for name in "abc":
        assert statuses(tree / "output" / f"Name_{name}") == {"train": "finished"}
    console = (tree / "output" / "mlrunner.log").read_text()
    assert console.count("START ") == 3 and console.count("DONE ") == 3
    assert "Finished: 3, failed: 0" in console
    assert "Detached" not in console  # the foreground's message is not the daemon's console
    printed = out.read_text()
    assert "Tasks: 3, commands to run: 3" in printed  # the foreground shows what the run will do
    assert "--follow" in printed and "--stop" in printed and "--status" in printed
    assert run_records(tree / "output") == []


def test_d1_detach_over_ssh_returns_and_the_run_outlives_the_session(tree: Path, tmp_path_factory) -> None:
    sshd.require_sshd()
    assert shutil.which("ssh"), "the OpenSSH client comes with openssh-server"
    (tree / "hold").touch()
    with sshd.SshServer(tmp_path_factory.mktemp("sshd")) as server:
        # Without SSH_CLIENT: with it, every `bash -c` below sources ~/.bashrc (bash's rshd rule), and
        # the test server's .bashrc moves to its home; this test is about the session, not that.
        remote = f"cd {tree} && env -u SSH_CLIENT PYTHONPATH={REPO} {sys.executable} -m mlrunner --detach"
        done = subprocess.run(["ssh", "-F", str(server.ssh_config), server.alias, remote],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=60)  # the daemon holds none of the session's pipes: ssh returns
        assert done.returncode == 0, done.stderr
        pid = int(done.stdout.split("Detached: pid ")[1].split()[0])
        wait_until(lambda: started(tree, 2), what="two commands started")
        assert alive(pid)  # the session is over, the run goes on
        (tree / "hold").unlink()
        wait_until(lambda: not alive(pid), what="the detached run to end")
    for name in "abc":
        assert statuses(tree / "output" / f"Name_{name}") == {"train": "finished"}


def test_d2_status_shows_the_run_while_it_runs_and_not_after(tree: Path) -> None:
    (tree / "hold").touch()
    pid = detach([], tree)
    wait_until(lambda: started(tree, 2), what="two commands started")

    def status_shows_two_running() -> str:
        code, out, err = run(["--status"], tree)
        assert code == 0, err
        return out if "running 2" in out else ""
    out = wait_until(status_shows_two_running, what="--status to count two running commands")
    head = out.split("experiment")[0]
    assert "Runs in progress on output: 1" in head
    assert f"pid {pid} on " in head and "done 0/3" in head and "failed 0" in head and "left 1" in head
    assert "console: output/mlrunner.log" in head
    assert "Name_a  train: running" in out  # then the table, as before
    record = yaml.safe_load(run_records(tree / "output")[0].read_text())
    assert record["pid"] == pid and record["cwd"] == str(tree) and "--detach" in record["argv"]

    (tree / "hold").unlink()
    wait_until(lambda: not alive(pid), what="the run to end")
    code, out, _ = run(["--status"], tree)
    assert code == 0 and "Runs in progress" not in out and "finished: 3" in out
    assert run_records(tree / "output") == []


def test_d3_stop_ends_every_command_records_interrupted_and_a_rerun_finishes(tree: Path) -> None:
    write(tree, CONFIG % "0, 1")
    (tree / "hold").touch()
    pid = detach([], tree)
    wait_until(lambda: started(tree, 2), what="two commands started")
    assert len(processes_in(tree)) >= 3  # the runner and its two commands

    code, out, err = run(["--stop"], tree)
    assert code == 0, err
    assert f"Stopped pid {pid}" in out
    assert not alive(pid)
    assert processes_in(tree) == []  # the process table: nothing of the run is left
    assert statuses(tree / "output" / "Name_a") == {"train": "interrupted"}
    assert statuses(tree / "output" / "Name_b") == {"train": "interrupted"}
    assert not (tree / "output" / "Name_c").exists()  # never started
    console = (tree / "output" / "mlrunner.log").read_text()
    assert console.count("STOP ") == 2 and "interrupted: 2" in console
    assert run_records(tree / "output") == []

    (tree / "hold").unlink()
    code, out, err = run([], tree)
    assert code == 0, out + err
    assert "Tasks: 3, commands to run: 3" in out
    for name in "abc":
        assert statuses(tree / "output" / f"Name_{name}") == {"train": "finished"}


def test_d3_stop_with_nothing_running_says_so(tree: Path) -> None:
    code, out, err = run(["--stop"], tree)  # no output tree at all
    assert (code, err) == (0, "")
    assert out == "mlrunner: no run in progress on output; nothing to stop\n"
    (tree / "output").mkdir()
    code, out, _ = run(["--stop", "-o", "output"], tree)
    assert code == 0 and "no run in progress" in out


def test_d2_a_sigkilled_runners_record_is_stale_ignored_and_removed(tree: Path) -> None:
    (tree / "hold").touch()
    runner = start([], tree)
    wait_until(lambda: started(tree, 2), what="two commands started")
    records = run_records(tree / "output")
    assert len(records) == 1 and f".{runner.pid}" in records[0].name
    runner.kill()
    runner.wait()  # not communicate(): its commands, still running, hold its pipes open
    assert run_records(tree / "output") == records  # SIGKILL: nobody removed it

    code, out, _ = run(["--status"], tree)
    assert code == 0 and "Runs in progress" not in out
    assert run_records(tree / "output") == []  # cleaned by the reader
    code, out, _ = run(["--stop"], tree)
    assert code == 0 and "no run in progress" in out


def test_d2_a_sigkilled_detached_runner_is_gone_for_status_and_for_the_rerun(tree: Path) -> None:
    # Nobody waits for a daemon: where init does not reap orphans it stays a zombie, and a zombie
    # must count as gone, for its run record as for its `running` records.
    (tree / "hold").touch()
    pid = detach([], tree)
    wait_until(lambda: started(tree, 2), what="two commands started")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), what="the runner to die")
    code, out, _ = run(["--status"], tree)
    assert code == 0 and "Runs in progress" not in out
    # its commands still run with nobody watching: orphaned, not the dead runner's `running` (R12)
    assert out.count("train: running (orphaned, pid ") == 2 and out.count("running") == 2
    assert run_records(tree / "output") == []

    (tree / "hold").unlink()
    code, out, err = run([], tree)
    assert code == 0, out + err
    assert "BUSY" not in out and "Tasks: 3, commands to run: 3" in out
    for name in "abc":
        assert statuses(tree / "output" / f"Name_{name}") == {"train": "finished"}


def test_d3_a_record_whose_pid_now_belongs_to_another_process_is_never_signalled(tree: Path) -> None:
    # A reused pid: the record names a live process (this test) with another start time.
    output = tree / "output"
    output.mkdir()
    forged = output / f".mlrunner-run.{os.uname().nodename}.{os.getpid()}"
    forged.write_text(yaml.safe_dump({"pid": os.getpid(), "pid_start": 1, "host": os.uname().nodename,
                                      "started": 0, "total": 1, "done": 0}))
    code, out, _ = run(["--stop"], tree)
    assert code == 0 and "no run in progress" in out  # and this process got no SIGTERM
    assert not forged.exists()


def test_d1_two_detached_runs_on_one_tree_run_each_command_once(tree: Path) -> None:
    write(tree, CONFIG % "0")  # one worker each
    (tree / "hold").touch()
    first = detach([], tree)
    wait_until(lambda: started(tree, 1), what="the first run's command")
    second = detach([], tree)
    wait_until(lambda: started(tree, 2), what="the second run's command")
    code, out, _ = run(["--status"], tree)
    assert "Runs in progress on output: 2" in out
    assert out.index(f"pid {first} ") < out.index(f"pid {second} ")

    (tree / "hold").unlink()
    wait_until(lambda: not alive(first) and not alive(second), what="both runs to end")
    for name in "abc":
        assert statuses(tree / "output" / f"Name_{name}") == {"train": "finished"}
    logs = sorted(p.name for p in (tree / "output").glob("Name_*/log.train.*"))
    assert len(logs) == 3  # each command ran once, in one run or the other
    console = (tree / "output" / "mlrunner.log").read_text()
    assert f"pid {first} on " in console and f"pid {second} on " in console  # both consoles, appended
    assert console.count("DONE ") == 3 and "BUSY" in console


def test_d1_a_run_that_cannot_start_in_the_background_is_reported_in_the_foreground(tree: Path) -> None:
    code, out, err = run(["--detach", "-r"], tree)  # no local worker and no host
    assert code == 1
    assert "no workers" in out + err and "ended before it started" in err and "Traceback" not in err
    assert run_records(tree / "output") == []


def test_d1_ctrl_c_while_the_foreground_waits_leaves_the_run_going(tree: Path) -> None:
    # The workers take a while to come up (a hung nvidia-smi, ended after 8 s): Ctrl-C then.
    write(tree, (CONFIG % "0").replace("resource: [0]", "resource: auto"))
    env = {"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_NVIDIA_SMI_MODE": "hang",
           "MLRUNNER_NVIDIA_SMI_TIMEOUT": "8"}
    foreground = start(["--detach"], tree, env)
    log = tree / "output" / "mlrunner.log"
    wait_until(lambda: log.exists() and "--detach" in log.read_text(), what="the daemon's first line")
    foreground.send_signal(signal.SIGINT)
    _, err = foreground.communicate(timeout=30)
    assert foreground.returncode == 130 and "Traceback" not in err, err
    assert "goes on; --stop ends it" in err  # with its pid, unless Ctrl-C came before the pid did
    pid = int(log.read_text().split(", pid ")[1].split()[0])
    wait_until(lambda: not alive(pid), timeout=60, what="the detached run to end")
    for name in "abc":
        assert statuses(tree / "output" / f"Name_{name}") == {"train": "finished"}


@pytest.mark.parametrize("flags", [["-d"], ["--dry-run"], ["--status"], ["--examine"], ["--stop"], ["--follow"]])
def test_d1_detach_with_another_mode_is_a_usage_error(tree: Path, flags) -> None:
    code, out, err = run(["--detach", *flags], tree)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--detach cannot go with" in err and flags[0] in err
    assert not (tree / "output").exists()


def test_d1_a_bad_config_fails_in_the_foreground_and_starts_nothing(tree: Path) -> None:
    write(tree, "template:\n  train: ./job.sh {nme}\n")
    code, out, err = run(["--detach"], tree)
    assert code == 2 and err.startswith("params.yaml") and err.count("\n") == 1
    assert not (tree / "output").exists() and processes_in(tree) == []


def test_d1_a_console_file_that_cannot_be_written_is_one_line_before_anything_starts(tree: Path) -> None:
    (tree / "output" / "mlrunner.log").mkdir(parents=True)
    code, out, err = run(["--detach"], tree)
    assert code == 2 and out == ""
    assert err == "mlrunner: --detach: cannot write output/mlrunner.log (Is a directory)\n"
    assert sorted(p.name for p in (tree / "output").iterdir()) == ["mlrunner.log"] and processes_in(tree) == []


def test_d1_detach_from_the_zipapp(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    sys.path.insert(0, str(REPO))
    import build_zipapp
    pyz = build_zipapp.build(tmp_path_factory.mktemp("dist"))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, str(pyz), "--detach"], cwd=tree, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"stop:   {os.path.basename(sys.executable)} {pyz} -o output --stop" in done.stdout
    pid = int(done.stdout.split("Detached: pid ")[1].split()[0])
    wait_until(lambda: not alive(pid), what="the detached run to end")
    for name in "abc":
        assert statuses(tree / "output" / f"Name_{name}") == {"train": "finished"}
    assert "Finished: 3" in (tree / "output" / "mlrunner.log").read_text()
