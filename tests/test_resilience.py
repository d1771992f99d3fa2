"""Nothing runs twice, a worker error never hangs the run, records survive and are never
overwritten (SPEC I3, I4, I5), on real process trees and real files."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from runlib import alive, environment, load, run, start, statuses, wait_for_file, wait_until, write

PR_SET_CHILD_SUBREAPER = 36  # prctl(2)

# A command that, as it starts, records any earlier copy of itself still running (`overlaps`),
# then writes its shell's pid and a grandchild's pid and waits for the grandchild.
TREE_SH = """\
name=$1
if [ -f "$name.pids" ]; then
  for pid in $(cat "$name.pids"); do
    if [ -r "/proc/$pid/stat" ] && ! grep -q ') Z ' "/proc/$pid/stat" 2> /dev/null; then
      echo "$name $pid" >> overlaps
    fi
  done
fi
echo $$ >> "$name.pids"
sleep "${SLEEP:-100}" &
echo $! >> "$name.pids"
echo "$$ $!" >> all.pids
wait
"""

TREE = """
    template:
      tree: bash tree.sh {_name}
      after: echo after >> {_name}.after
    resource: [0, 1]
    ---
    i: [1, 2, 3]
    """


def _setup_tree(directory: Path) -> None:
    write(directory, TREE)
    (directory / "tree.sh").write_text(TREE_SH)


def _tree_pids(directory: Path, trees: int = 2) -> List[int]:
    return [int(p) for p in wait_for_file(directory / "all.pids", 2 * trees)]


def _group_members(pgid: int) -> List[int]:
    """Live (not zombie) processes of a process group, from the process table."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                fields = stream.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _no_overlaps(directory: Path) -> None:
    overlaps = directory / "overlaps"
    assert not overlaps.exists(), f"two copies of a command ran at once: {overlaps.read_text()}"


def _finished_all(directory: Path) -> None:
    for i in (1, 2, 3):
        assert statuses(directory / "output" / f"I_{i}") == {"tree": "finished", "after": "finished"}


# -- I3: SIGHUP ------------------------------------------------------------------------------------

def test_i3_sighup_ends_every_tree_exit_129_and_rerun_never_overlaps(tmp_path: Path):
    _setup_tree(tmp_path)
    runner = start([], tmp_path)
    pids = _tree_pids(tmp_path)
    groups = {os.getpgid(p) for p in pids}
    runner.send_signal(signal.SIGHUP)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 129, out + err
    assert wait_until(lambda: not any(alive(p) for p in pids)), "a command's process outlived SIGHUP"
    assert all(_group_members(g) == [] for g in groups)
    assert "interrupted: 2" in out
    for i in (1, 2):
        assert statuses(tmp_path / "output" / f"I_{i}") == {"tree": "interrupted"}
    assert not (tmp_path / "output" / "I_3").exists()

    code, out, err = run([], tmp_path, {"SLEEP": "0.1"})
    assert code == 0, out + err
    _finished_all(tmp_path)
    _no_overlaps(tmp_path)


# -- I3: SIGKILL of the runner -----------------------------------------------------------------

def _kill_runner_with_trees(directory: Path) -> List[int]:
    runner = start(["--grace", "2s"], directory)
    pids = _tree_pids(directory)
    runner.kill()
    runner.wait()
    return pids


def test_i3_sigkill_leftover_groups_are_ended_before_the_rerun(tmp_path: Path):
    _setup_tree(tmp_path)
    pids = _kill_runner_with_trees(tmp_path)
    time.sleep(0.3)  # long enough that a tree that died with its runner would be seen gone below
    assert all(alive(p) for p in pids), "commands must outlive a SIGKILLed runner (own groups)"
    recorded = {}
    for i in (1, 2):
        run_record = load(tmp_path / "output" / f"I_{i}" / "stat")["_runs"]["tree"][-1]
        assert run_record["status"] == "running"
        recorded[i] = run_record["pgid"]
    assert set(recorded.values()) == {os.getpgid(p) for p in pids}

    code, out, err = run(["--grace", "2s"], tmp_path, {"SLEEP": "0.1"})
    assert code == 0, out + err
    for pgid in recorded.values():
        assert f"NOTE    ending process group {pgid}" in out
    assert out.index("NOTE    ending process group") < out.index("DONE    gpu")
    assert not any(alive(p) for p in pids)
    assert all(_group_members(g) == [] for g in recorded.values())
    _finished_all(tmp_path)
    _no_overlaps(tmp_path)


def test_i3_sigkill_leftover_group_already_exited_is_simply_rerun(tmp_path: Path):
    _setup_tree(tmp_path)
    pids = _kill_runner_with_trees(tmp_path)
    groups = {os.getpgid(p) for p in pids}
    for pgid in groups:
        os.killpg(pgid, signal.SIGKILL)
    # Zombies may stay where nothing reaps orphans (a container's pid 1): exited is what counts here.
    assert wait_until(lambda: not any(alive(p) for p in [*pids, *groups]), 30), "the killed trees still run"
    code, out, err = run([], tmp_path, {"SLEEP": "0.1"})
    assert code == 0, out + err
    assert "ending process group" not in out
    _finished_all(tmp_path)
    _no_overlaps(tmp_path)


def test_i3_a_leftover_group_of_zombies_only_is_not_ended(tmp_path: Path):
    """Where init reaps orphans late (a container's pid 1), an exited group is still zombies for a while.
    The test process becomes the orphans' reaper (PR_SET_CHILD_SUBREAPER) to hold them as zombies."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        _setup_tree(tmp_path)
        pids = _kill_runner_with_trees(tmp_path)
        groups = {os.getpgid(p) for p in pids}
        for pgid in groups:
            os.killpg(pgid, signal.SIGKILL)
        assert wait_until(lambda: not any(alive(p) for p in [*pids, *groups]))
        began = time.monotonic()
        code, out, err = run(["--grace", "5s"], tmp_path, {"SLEEP": "0.1"})
        assert code == 0, out + err
        assert "ending process group" not in out
        assert time.monotonic() - began < 5, "a zombie-only group was waited on for the whole grace"
    finally:
        assert libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) == 0
        for pid in pids + sorted(groups):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def test_i3_a_reused_pid_of_an_unrelated_group_is_not_signalled(tmp_path: Path):
    """A `running` record whose pgid now belongs to another process (other start time) is stale."""
    write(tmp_path, """
        template:
          a: echo ran >> ledger
        resource: [0]
        """)
    stranger = subprocess.Popen(["sleep", "100"], start_new_session=True)
    try:
        directory = tmp_path / "output" / "default"
        directory.mkdir(parents=True)
        record = {"host": socket.gethostname(), "pid": stranger.pid, "pid_start": -1, "pgid": stranger.pid,
                  "pgid_start": -1, "worker": "0", "start": time.time() - 60, "status": "running"}
        (directory / "stat").write_text(yaml.safe_dump({"a": "running", "_runs": {"a": [record]}}))
        code, out, err = run([], tmp_path)
        assert code == 0, out + err
        assert "ending process group" not in out
        assert stranger.poll() is None and alive(stranger.pid), "an unrelated process was signalled"
        assert (tmp_path / "ledger").read_text() == "ran\n"
        assert statuses(directory) == {"a": "finished"}
    finally:
        stranger.kill()
        stranger.wait()


def test_i3_sigkill_at_random_moments_never_reruns_a_finished_command(tmp_path: Path):
    """Kill the runner ten times while commands with grandchildren run; after each kill every
    record parses, and no command finished before a run starts again in it, or twice at once."""
    write(tmp_path, """
        template:
          a: bash step.sh {_name} a
          b: bash step.sh {_name} b
        resource: [0, 1, 2]
        ---
        x: [1, 2, 3, 4, 5, 6]
        y: [1, 2, 3]
        """)
    (tmp_path / "step.sh").write_text('echo "$ITERATION $1 $2" >> ledger\n' + TREE_SH.replace("$name", "$name.$2")
                                      .replace('sleep "${SLEEP:-100}"', "sleep 0.4"))
    rng = random.Random(11)
    finished_before: Dict[int, set] = {}
    done: set = set()
    for iteration in range(10):
        finished_before[iteration] = set(done)
        runner = start(["--grace", "1s"], tmp_path, {"ITERATION": str(iteration)})
        time.sleep(rng.uniform(0.3, 1.2))  # python's start takes ~0.2s
        runner.kill()
        runner.wait()
        for stat_path in (tmp_path / "output").glob("*/stat"):
            stat = yaml.safe_load(stat_path.read_text())
            param = yaml.safe_load((stat_path.parent / "param").read_text())
            assert isinstance(stat, dict) and isinstance(param, dict)
            done |= {(stat_path.parent.name, c) for c, s in stat.items() if s == "finished"}
    finished_before[10] = set(done)
    code, out, err = run(["--grace", "1s"], tmp_path, {"ITERATION": "10"}, timeout=180)
    assert code == 0, out + err
    for x in range(1, 7):
        for y in range(1, 4):
            assert statuses(tmp_path / "output" / f"X_{x}-Y_{y}") == {"a": "finished", "b": "finished"}
    for line in (tmp_path / "ledger").read_text().splitlines():
        iteration, name, command = line.split()
        assert (name, command) not in finished_before[int(iteration)], f"{name} {command} ran again"
    _no_overlaps(tmp_path)


# -- I4: a worker error fails one command, never hangs the run -----------------------------------

BROKEN = """
    template:
      a: echo a >> {_name}.ran
      b: echo b >> {_name}.ran
    resource: [0, 1]
    ---
    i: [1, 2, 3]
    """


def _dangling_symlink(directory: Path) -> None:
    directory.symlink_to(directory.parent / "nowhere" / "at-all")


def _regular_file(directory: Path) -> None:
    directory.write_text("not a directory\n")


def _unwritable_directory(directory: Path) -> None:
    """Root may write anywhere chmod allows: a procfs directory refuses new files even to root."""
    directory.symlink_to("/proc/self/fdinfo")


@pytest.mark.parametrize("breaker", [
    _dangling_symlink,
    _unwritable_directory,
    _regular_file,
])
def test_i4_a_broken_experiment_directory_fails_that_task_only(tmp_path: Path, breaker):
    write(tmp_path, BROKEN)
    (tmp_path / "output").mkdir()
    breaker(tmp_path / "output" / "I_2")
    code, out, err = run([], tmp_path, timeout=60)  # a hang fails here with TimeoutExpired
    assert "Traceback" not in err, err
    assert code == 1, out + err
    assert "Finished: 4, failed: 1, skipped: 1, interrupted: 0, already finished: 0" in out
    failed = out[out.index("Failed:"):].splitlines()[1]
    assert failed.startswith("    output/I_2 (a: ") and "Error" in failed, failed
    for i in (1, 3):
        assert statuses(tmp_path / "output" / f"I_{i}") == {"a": "finished", "b": "finished"}
        assert (tmp_path / f"I_{i}.ran").read_text() == "a\nb\n"
    assert not (tmp_path / "I_2.ran").exists()


def test_i4_a_record_that_cannot_be_written_after_the_command_fails_it(tmp_path: Path):
    """The experiment's directory vanishes while its command runs: recording fails, the run goes on."""
    write(tmp_path, """
        template:
          a: echo a >> {_name}.ran; test {i} = 2 && rm -rf {_output}; true
          b: echo b >> {_name}.ran
        resource: [0, 1]
        ---
        i: [1, 2, 3]
        """)
    code, out, err = run([], tmp_path, timeout=60)
    assert code == 1, out + err
    assert "Finished: 4, failed: 1, skipped: 1, interrupted: 0, already finished: 0" in out
    assert out[out.index("Failed:"):].splitlines()[1].startswith("    output/I_2 (a: ")
    for i in (1, 3):
        assert statuses(tmp_path / "output" / f"I_{i}") == {"a": "finished", "b": "finished"}
    assert (tmp_path / "I_2.ran").read_text() == "a\n"


def test_i4_i5_a_stat_that_is_a_directory_is_set_aside_not_replaced(tmp_path: Path):
    """A `stat` directory cannot be replaced by a file: the run moves it aside whole and runs again."""
    write(tmp_path, BROKEN)
    stat = tmp_path / "output" / "I_2" / "stat"
    stat.mkdir(parents=True)
    (stat / "inside").write_text("kept\n")
    code, out, err = run([], tmp_path, timeout=60)
    assert code == 0, out + err
    aside = [p for p in stat.parent.iterdir() if p.name.startswith("stat.corrupt.")]
    assert len(aside) == 1 and (aside[0] / "inside").read_text() == "kept\n"
    assert f"kept as {Path('output/I_2') / aside[0].name}" in out
    assert "Finished: 6, failed: 0" in out
    for i in (1, 2, 3):
        assert statuses(tmp_path / "output" / f"I_{i}") == {"a": "finished", "b": "finished"}


# -- I5: corrupt records are set aside, never overwritten -----------------------------------------

CORRUPT = {
    "garbage": b"\xff\xfe\x00\x81garbage\x00",
    "invalid-yaml": b"a: [finished\nb: {\n",
    "yaml-list": b"- finished\n- failed\n",
    "empty": b"",
}


def _corrupt_cases():
    for record in ("stat", "param"):
        for kind in CORRUPT:
            yield pytest.param(record, kind, id=f"{record}-{kind}")


def _snapshot(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in root.rglob("*")}


def _finished_once(tmp_path: Path) -> Path:
    write(tmp_path, """
        template:
          a: echo {_name} >> ledger
        resource: [0]
        ---
        i: [1, 2]
        """)
    code, out, err = run([], tmp_path)
    assert code == 0, out + err
    return tmp_path / "output" / "I_1"


@pytest.mark.parametrize("record, kind", list(_corrupt_cases()))
def test_i5_a_corrupt_record_is_set_aside_and_its_experiment_runs_again(tmp_path: Path, record: str, kind: str):
    directory = _finished_once(tmp_path)
    path = directory / record
    path.write_bytes(CORRUPT[kind])
    now = time.time()  # decoys for the next seconds: an earlier set-aside file is never overwritten
    decoys = {directory / f"{record}.corrupt.{time.strftime('%Y%m%d.%H%M%S', time.localtime(now + s))}": b"decoy %d" % s
              for s in range(0, 6)}
    for decoy, content in decoys.items():
        decoy.write_bytes(content)
    code, out, err = run([], tmp_path)
    assert code == 0, out + err
    for decoy, content in decoys.items():
        assert decoy.read_bytes() == content
    aside = [p for p in directory.iterdir() if p.name.startswith(f"{record}.corrupt.") and p not in decoys]
    assert len(aside) == 1, sorted(p.name for p in directory.iterdir())
    assert aside[0].read_bytes() == CORRUPT[kind]  # byte for byte
    assert f"kept as output/I_1/{aside[0].name}" in out
    assert (tmp_path / "ledger").read_text().splitlines() == ["I_1", "I_2", "I_1"]
    assert statuses(directory) == {"a": "finished"}
    assert isinstance(load(directory / "param"), dict)


@pytest.mark.parametrize("record, kind", list(_corrupt_cases()))
def test_i5_status_warns_about_a_corrupt_record_and_writes_nothing(tmp_path: Path, record: str, kind: str):
    directory = _finished_once(tmp_path)
    (directory / record).write_bytes(CORRUPT[kind])
    before = _snapshot(tmp_path)
    code, out, err = run(["--status"], tmp_path)
    assert code == 0, out + err
    assert f"output/I_1/{record} does not parse" in out + err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("record, kind", list(_corrupt_cases()))
def test_i5_dry_run_says_what_a_run_would_do_and_writes_nothing(tmp_path: Path, record: str, kind: str):
    directory = _finished_once(tmp_path)
    (directory / record).write_bytes(CORRUPT[kind])
    before = _snapshot(tmp_path)
    code, out, err = run(["--dry-run"], tmp_path)
    assert code == 0, out + err
    assert f"# output/I_1/{record} does not parse" in out and "a run sets it aside" in out
    assert _snapshot(tmp_path) == before


def _completed_calls(lines: List[str]) -> List[tuple]:
    """(line number where it returned, `call(args) = result`) of each successful traced call; a
    call that strace split into `<unfinished ...>` and `<... resumed>` lines is joined again."""
    pending: Dict[str, str] = {}
    calls = []
    for number, line in enumerate(lines):
        pid, _, text = line.partition(" ")
        text = text.strip()
        if text.endswith("<unfinished ...>"):
            pending[pid] = text[:-len("<unfinished ...>")].rstrip()
            continue
        if text.startswith("<..."):
            text = pending.pop(pid, "") + text.split("resumed>", 1)[1]
        if text.endswith(" = 0"):
            calls.append((number, text))
    return calls


def _traced_run(tmp_path: Path) -> List[str]:
    """Run a two-command task under strace (fsync, rename, execve); the trace's lines."""
    strace = shutil.which("strace")
    if strace is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("CI=true but strace is missing (scripts/test.sh installs it)", pytrace=False)
        pytest.skip("strace is missing (apt-get install strace)")
    write(tmp_path, """
        template:
          a: echo marker-first
          b: echo marker-second
        resource: [0]
        """)
    trace = tmp_path / "trace"
    command = [strace, "-f", "-y", "-qq", "-s", "300", "-e", "signal=none", "-o", str(trace),
               "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,execve", sys.executable, "-m", "mlrunner"]
    done = subprocess.run(command, cwd=tmp_path, env=environment({"MLRUNNER_FSYNC": "1"}),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return trace.read_text().splitlines()


def _assert_durable(calls: List[str], directory: str, record: str, before: str) -> None:
    """In `calls`: `record`'s temp file fsync'd, then renamed over it, then its directory fsync'd."""
    synced = [n for n, call in enumerate(calls) if call.startswith("fsync(") and f"<{directory}/.{record}." in call]
    assert synced, f"the {record} temp file was never fsync'd before {before}"
    renamed = [n for n, call in enumerate(calls) if n > synced[-1] and call.startswith("rename")
               and f"default/.{record}." in call and f'default/{record}")' in call]
    assert renamed, f"the fsync'd temp file was not renamed over {record} before {before}"
    dir_synced = [n for n, call in enumerate(calls) if n > renamed[0] and call.startswith("fsync(")
                  and f"<{directory}>" in call]
    assert dir_synced, f"the directory was not fsync'd after {record} was renamed, before {before}"


def test_i5_a_finished_record_is_fsynced_before_the_next_command_starts(tmp_path: Path):
    """Under strace: the stat temp file is fsync'd, renamed over `stat`, and the directory fsync'd,
    all before the bash of the task's next command is executed."""
    lines = _traced_run(tmp_path)
    second = next(n for n, line in enumerate(lines) if "execve(" in line and "marker-second" in line)
    directory = os.path.realpath(tmp_path / "output" / "default")
    _assert_durable([call for n, call in _completed_calls(lines) if n < second], directory, "stat", "the next command")


def test_r7_param_is_written_like_stat_fsynced_before_the_first_command_starts(tmp_path: Path):
    """Under strace: the param temp file is fsync'd, renamed over `param`, and the directory
    fsync'd, all before the bash of the task's first command is executed (issue 21)."""
    lines = _traced_run(tmp_path)
    first = next(n for n, line in enumerate(lines) if "execve(" in line and "marker-first" in line)
    directory = os.path.realpath(tmp_path / "output" / "default")
    _assert_durable([call for n, call in _completed_calls(lines) if n < first], directory, "param", "the first command")
