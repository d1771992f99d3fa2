"""Slurm against a real cluster (SPEC S1-S6): slurmctld + slurmd started by tests/slurmd.py.

The cluster has one node with 4 CPUs and 4 stand-in GPUs (GRES), no accounting, and
MaxArraySize=8. Every element asks 1 CPU, so four run at a time unless `max_running` says less.
Commands that must stay running wait for a `release` file, so the tests wait for conditions,
never for fixed times. `MLRUNNER_SLURM_POLL` shortens the driver's queue poll for the tests.
A few tests need no cluster: they check what the element and the driver do with records alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

import runlib
from slurmd import slurm_cluster  # noqa: F401 (the session's cluster, a fixture)

POLL_ENV = {"MLRUNNER_SLURM_POLL": "0.3"}
HOLD = "while [ ! -e release ]; do sleep 0.1; done"


@pytest.fixture
def slurm(slurm_cluster):
    """The cluster, idle again after each test (a failed test's jobs are cancelled)."""
    yield slurm_cluster
    slurm_cluster.run("scancel", "--user=root", check=False)
    slurm_cluster.wait_idle()


def mlrunner(cluster, args: List[str], cwd: Path, timeout: float = 90):
    return runlib.run(args, cwd, env=cluster.env(POLL_ENV), timeout=timeout)


def start_mlrunner(cluster, args: List[str], cwd: Path) -> subprocess.Popen:
    return runlib.start(args, cwd, env=cluster.env(POLL_ENV))


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def queue(cluster) -> Dict[str, str]:
    """job -> state of every element in the queue."""
    out = cluster.run("squeue", "--noheader", "--array", "--format=%i %T").stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def stat(directory: Path) -> dict:
    return yaml.safe_load((directory / "stat").read_text()) if (directory / "stat").exists() else {}


def run_statuses(directory: Path, command: str) -> List[str]:
    return [run["status"] for run in stat(directory).get("_runs", {}).get(command, [])]


def submitted_jobs(out: str) -> List[str]:
    found = re.search(r"as job (.*?)(?:, at most|\n)", out)
    assert found, out
    return re.findall(r"(\d+) \(array", found.group(1))


def slurm_logs(output: Path) -> List[Path]:
    return sorted(output.glob(".slurm/*/slurm.*.log"))


SEED = """
template:
  train: >
    echo train {data} {norm} {moment} [early-stop] CUDA=$CUDA_VISIBLE_DEVICES GPUS=$SLURM_JOB_GPUS;
    touch started.{_name}; while [ $(ls started.* | wc -l) -lt 4 ]; do sleep 0.1; done
  avg: echo avg {_output}
  test: echo test {data} on {_resource}
default:
  data: iwslt14
  norm: batch
  moment: 0.1
  early-stop: False
slurm: {gpus: 1, cpus: 1, max_running: 4}
---
norm: [ new, batch ]
moment: [ 0.1, 0.05 ]
---
norm: [ batch ]
early-stop: [ True, False ]
"""


def test_seed_example_runs_as_an_array_with_slurms_gpus_S1_S2(slurm, tmp_path):
    runlib.write(tmp_path, SEED)
    code, out, err = mlrunner(slurm, [], tmp_path)
    assert code == 0, err
    assert "Tasks: 5, commands to run: 15, to submit: 5" in out  # one duplicate dropped (X3)
    (job,) = submitted_jobs(out)
    assert queue(slurm), "the driver returns once submitted, before the jobs end (S2)"
    assert "--follow" in out and "--stop" in out and "--status" in out
    slurm.wait_idle()
    output = tmp_path / "output"
    experiments = sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(experiments) == 5
    seen_gpus = set()
    for directory in experiments:
        assert runlib.statuses(directory) == {"train": "finished", "avg": "finished", "test": "finished"}
        (run,) = stat(directory)["_runs"]["train"]
        assert run["job"].startswith(f"{job}_") and run["host"] == slurm.node
        (log,) = directory.glob("log.train.*")
        cuda = re.search(r"CUDA=(\S*) GPUS=(\S*)", log.read_text())
        assert run["worker"] == f"gpu:{cuda.group(1)}" and cuda.group(1) in "0123", log.read_text()
        assert cuda.group(2) == cuda.group(1)  # Slurm's own GPU, kept as it is
        seen_gpus.add(cuda.group(1))
        (test_log,) = directory.glob("log.test.*")
        assert test_log.read_text() == f"test iwslt14 on {cuda.group(1)}\n"
    assert seen_gpus == {"0", "1", "2", "3"}, "four elements ran at once, each on its own GPU"
    assert (output / "params.yaml").read_text() == (tmp_path / "params.yaml").read_text()
    (remembered,) = runlib.load(output / ".mlrunner-config")["configs"]  # the user's file, not an element's copy (T1)
    assert remembered["path"] == str(tmp_path / "params.yaml")
    code, out, err = mlrunner(slurm, [], tmp_path)  # a rerun finds everything finished (S3)
    assert code == 0 and "to submit: 0" in out and "Nothing to submit: every command finished" in out
    assert not queue(slurm)


def test_wait_shows_the_console_and_its_exit_status_S2(slurm, tmp_path):
    runlib.write(tmp_path, """
        template:
          train: echo train {code}; exit {code}
          test: echo test
        slurm: {gpus: 1}
        ---
        code: [0, 3]
        """)
    code, out, err = mlrunner(slurm, ["--wait"], tmp_path)
    assert code == 1, out + err
    assert re.search(r"DONE    node: \S+, gpu: \d, train: 1/ 2, output/Code_0", out)
    assert re.search(r"DONE    node: \S+, gpu: \d, test : 1/ 2, output/Code_0", out)
    assert re.search(r"FAIL    node: \S+, gpu: \d, train: 2/ 2, output/Code_3 \(exit status 3\)", out)
    assert "experiments finished: 1, failed: 1" in out and "failed: output/Code_3" in out
    assert runlib.statuses(tmp_path / "output" / "Code_3") == {"train": "failed", "test": "skipped"}
    assert not queue(slurm), "--wait returns once no element is queued"
    runlib.write(tmp_path, """
        template:
          train: echo train {code}; exit 0
          test: echo test
        slurm: {gpus: 1}
        ---
        code: [0, 3]
        """)
    code, out, err = mlrunner(slurm, ["--wait", "--keep-changed"], tmp_path)
    assert code == 0, out + err
    assert "to submit: 1" in out and "experiments finished: 1, failed: 0" in out


def test_scancel_two_elements_then_a_rerun_resubmits_exactly_those_S3(slurm, tmp_path):
    runlib.write(tmp_path, f"""
        template:
          train: echo {{t}} > started_{{t}}; {HOLD}
        slurm: {{gpus: 1, max_running: 2}}
        ---
        t: [a, b, c, d]
        """)
    code, out, err = mlrunner(slurm, [], tmp_path)
    assert code == 0, err
    (job,) = submitted_jobs(out)
    wait_until(lambda: (tmp_path / "started_a").exists() and (tmp_path / "started_b").exists(), "a and b to run")
    slurm.run("scancel", f"{job}_0", f"{job}_1")
    output = tmp_path / "output"
    wait_until(lambda: run_statuses(output / "T_a", "train") == ["interrupted"]
               and run_statuses(output / "T_b", "train") == ["interrupted"], "a and b recorded interrupted")
    wait_until(lambda: (tmp_path / "started_c").exists() and (tmp_path / "started_d").exists(), "c and d to run")
    waiter = start_mlrunner(slurm, ["--wait"], tmp_path)  # c and d still run: left to their jobs
    lines = []
    while not lines or not lines[-1].startswith("Submitted"):
        lines.append(waiter.stdout.readline())
        assert lines[-1], "".join(lines) + waiter.stderr.read()
    out = "".join(lines)
    assert f"LEFT    output/T_c: Slurm job {job}_2 still holds it" in out
    assert f"LEFT    output/T_d: Slurm job {job}_3 still holds it" in out
    assert "to submit: 2" in out
    (again,) = submitted_jobs(out)
    (tmp_path / "release").touch()
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, out + err
    assert "experiments finished: 4, failed: 0" in out, "--wait follows the new jobs and those left to old ones"
    assert not queue(slurm)
    for name in ("a", "b"):
        assert run_statuses(output / f"T_{name}", "train") == ["interrupted", "finished"]
        assert [r["job"] for r in stat(output / f"T_{name}")["_runs"]["train"]][1].startswith(f"{again}_")
    for name in ("c", "d"):
        assert run_statuses(output / f"T_{name}", "train") == ["finished"]
    records = [yaml.safe_load(p.read_text()) for p in output.glob(".mlrunner-slurm.*")]
    assert sorted(r["outputs"] for r in records if r["chunks"][0][0] == again) == [["output/T_a", "output/T_b"]]


def test_a_running_record_is_left_to_its_live_job_and_rerun_once_the_job_is_gone_S3(slurm, tmp_path):
    runlib.write(tmp_path, f"""
        template:
          train: echo {{t}}; {HOLD}
        slurm: {{gpus: 1}}
        ---
        t: [a, b]
        """)
    code, out, err = mlrunner(slurm, [], tmp_path)
    assert code == 0, err
    (job,) = submitted_jobs(out)
    output = tmp_path / "output"
    wait_until(lambda: run_statuses(output / "T_a", "train") == ["running"]
               and run_statuses(output / "T_b", "train") == ["running"], "a and b to run")
    for record in output.glob(".mlrunner-slurm.*"):
        record.unlink()  # only the `running` records say who holds the tasks now
    code, out, err = mlrunner(slurm, [], tmp_path)
    assert code == 0, err
    assert f"LEFT    output/T_a: Slurm job {job}_0 still holds it" in out
    assert "to submit: 0" in out and "Nothing to submit: live Slurm jobs hold the rest" in out
    element = stat(output / "T_a")["_runs"]["train"][-1]["pid"]
    os.kill(element, signal.SIGKILL)  # the element dies with no chance to record anything; its job ends
    wait_until(lambda: f"{job}_0" not in queue(slurm), f"{job}_0 to end")
    assert runlib.statuses(output / "T_a") == {"train": "running"}
    code, status, _ = mlrunner(slurm, ["--status"], tmp_path)
    # This cluster tracks processes by parentage (proctrack/linuxproc), so the command, in a process
    # group of its own, outlives its killed element: R12 shows it as orphaned, not interrupted, and
    # the element that runs T_a again ends that group first.
    assert re.search(r"T_a\s.*running \(orphaned, pid \d+\)", status), status
    assert re.search(r"T_b\s.*running \(", status), status
    code, out, err = mlrunner(slurm, [], tmp_path)
    assert code == 0, err
    assert f"LEFT    output/T_b: Slurm job {job}_1 still holds it" in out and "to submit: 1" in out
    (again,) = submitted_jobs(out)
    (tmp_path / "release").touch()
    slurm.wait_idle()
    assert runlib.statuses(output / "T_a") == {"train": "finished"}
    assert stat(output / "T_a")["_runs"]["train"][-1]["job"] == f"{again}_0"
    assert runlib.statuses(output / "T_b") == {"train": "finished"}


def hold_one(slurm, tmp_path, extra: str = "") -> str:
    """Submit one task (first, then train that waits for `release`); its job id once train runs."""
    runlib.write(tmp_path, f"""
        template:
          first: echo first
          train: echo run >> count; echo train-log; {HOLD}
        slurm: {{gpus: 1{extra}}}
        """)
    code, out, err = mlrunner(slurm, [], tmp_path)
    assert code == 0, err
    (job,) = submitted_jobs(out)
    directory = tmp_path / "output" / "default"
    wait_until(lambda: run_statuses(directory, "train") == ["running"], "train to run")
    return f"{job}_0"


def restart_when_pending(slurm, element: str) -> None:
    """A requeued job waits (Reason=BeginTime) before it starts again: let it start now, once
    Slurm can start it. Its old run's credential was revoked at the requeue, to the second, and
    a start on a credential of that same second fails ("Job credential revoked"): so wait until
    the old run's batch step is gone and the clock has passed the second after the requeue."""
    def waiting() -> bool:
        out = slurm.run("squeue", "--noheader", "--array", f"--jobs={element}", "--format=%T %r %A", check=False)
        return out.stdout.split()[:2] == ["PENDING", "BeginTime"]
    wait_until(waiting, f"{element} to be requeued")
    requeued = int(time.time())
    job_id = slurm.run("squeue", "--noheader", "--array", f"--jobs={element}", "--format=%A").stdout.strip()
    wait_until(lambda: not slurm.steps(job_id), f"the old run of {element} to end")
    wait_until(lambda: time.time() >= requeued + 2, "the revoked credential's second to pass")
    slurm.run("scontrol", "update", f"JobId={element}", "StartTime=now")


def check_resumed(tmp_path: Path) -> None:
    directory = tmp_path / "output" / "default"
    assert run_statuses(directory, "first") == ["finished"], "a finished command never runs twice"
    assert run_statuses(directory, "train") == ["interrupted", "finished"]
    assert (tmp_path / "count").read_text() == "run\nrun\n"
    logs = sorted(directory.glob("log.train.*"))
    assert len(logs) == 2, "the rerun writes its own log"
    assert [log.read_text().count("train-log") for log in logs] == [1, 1], "no duplicated log lines"
    assert logs[1].read_text() == "train-log\n"
    assert len(list(directory.glob("log.first.*"))) == 1


def test_scontrol_requeue_of_a_running_element_resumes_from_its_records_S4(slurm, tmp_path):
    element = hold_one(slurm, tmp_path)
    slurm.run("scontrol", "requeue", element)
    wait_until(lambda: run_statuses(tmp_path / "output" / "default", "train") == ["interrupted"], "interrupted")
    restart_when_pending(slurm, element)
    (tmp_path / "release").touch()
    slurm.wait_idle()
    check_resumed(tmp_path)
    (log,) = slurm_logs(tmp_path / "output")
    assert "(restart 1)" in log.read_text()


def test_usr2_ends_the_command_and_the_element_requeues_itself_S4(slurm, tmp_path):
    element = hold_one(slurm, tmp_path, ", max_requeue: 2")
    slurm.run("scancel", "--signal=USR2", "--batch", element)  # what Slurm sends before the time limit
    restart_when_pending(slurm, element)
    (tmp_path / "release").touch()
    slurm.wait_idle()
    check_resumed(tmp_path)
    (log,) = slurm_logs(tmp_path / "output")
    assert f"USR2: requeueing job {element} (restart 1 of at most 2)" in log.read_text()


def test_bad_partition_is_one_line_exit_2_and_nothing_written_S5(slurm, tmp_path):
    runlib.write(tmp_path, """
        template: {train: echo hi}
        slurm: {partition: nope}
        """)
    code, out, err = mlrunner(slurm, [], tmp_path)
    assert code == 2
    assert err == "mlrunner: sbatch refused the job: sbatch: error: Batch job submission failed: " \
                  "Invalid partition name specified\n"
    assert not (tmp_path / "output").exists() and not queue(slurm)


def test_missing_interpreter_on_the_node_is_reported_with_its_slurm_log_S5(slurm, tmp_path):
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.symlink_to(os.path.realpath(sys.executable))
    runlib.write(tmp_path, """
        template: {train: echo hi}
        slurm: {gpus: 1, options: [--hold]}
        """)
    driver = subprocess.Popen([str(python), "-m", "mlrunner", "--wait"], cwd=tmp_path, text=True,
                              env=runlib.environment(slurm.env(POLL_ENV)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    lines = []
    while not lines or not lines[-1].startswith("Submitted"):
        lines.append(driver.stdout.readline())
        assert lines[-1], "".join(lines) + driver.stderr.read()
    (job,) = submitted_jobs(lines[-1])
    python.unlink()  # the interpreter is gone before the job starts on its node
    slurm.run("scontrol", "release", job)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 1, out + err
    log = next((tmp_path / "output").glob(".slurm/*")) / f"slurm.{job}_0.log"
    assert f"Slurm job {job}_0 (output/default) ended before mlrunner started on its node; its log: {log}" in out
    assert re.search(rf"\| .*{re.escape(str(python))}: No such file or directory", out), out
    code, status, _ = mlrunner(slurm, ["--status"], tmp_path)
    assert f"ended before mlrunner started: {job}_0: output/default; its log: {log}" in status


def test_status_follow_and_stop_on_a_slurm_run_S2(slurm, tmp_path):
    runlib.write(tmp_path, """
        template:
          train: echo begin {t}; while true; do echo tick {t}; sleep 0.2; done
        slurm: {gpus: 1, max_running: 2}
        ---
        t: [a, b, c]
        """)
    code, out, err = mlrunner(slurm, [], tmp_path)
    assert code == 0, err
    (job,) = submitted_jobs(out)
    output = tmp_path / "output"
    wait_until(lambda: run_statuses(output / "T_a", "train") == ["running"]
               and run_statuses(output / "T_b", "train") == ["running"], "a and b to run")
    code, status, err = mlrunner(slurm, ["--status"], tmp_path)
    assert code == 0, err
    assert f"Slurm job {job} on output: 3 element(s): 1 pending, 2 running" in status
    assert re.search(rf"running  {job}_0 on {slurm.node}: output/T_a", status)
    assert re.search(rf"pending  {job}_2 \(\w+\): output/T_c", status)
    assert re.search(r"T_a\s.*running", status), status
    follower = start_mlrunner(slurm, ["--follow"], tmp_path)
    tagged = []
    while not any(line.startswith("T_b train tick b") for line in tagged):
        tagged.append(follower.stdout.readline())
        assert tagged[-1], "".join(tagged) + follower.stderr.read()
    code, stopped, err = mlrunner(slurm, ["--stop"], tmp_path)
    assert code == 0, err
    assert f"Cancelled Slurm job(s) {job}" in stopped
    follower.communicate(timeout=30)
    assert follower.returncode == 0, "--follow ends when the jobs end"
    assert not queue(slurm)
    for name in ("a", "b"):
        assert run_statuses(output / f"T_{name}", "train") == ["interrupted"]
    assert not (output / "T_c" / "stat").exists()
    code, status, _ = mlrunner(slurm, ["--status"], tmp_path)
    assert "Slurm job" not in status and re.search(r"T_a\s.*interrupted", status), status


def test_a_sweep_larger_than_max_array_size_is_split_S1(slurm, tmp_path):
    runlib.write(tmp_path, """
        template:
          train: echo {i}
        slurm: {gpus: 0, max_running: 2}
        ---
        i: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        """)
    code, out, err = mlrunner(slurm, ["--wait"], tmp_path)
    assert code == 0, out + err
    first, second = submitted_jobs(out)
    assert f"as job {first} (array 0-7), {second} (array 0-1)" in out
    assert "experiments finished: 10, failed: 0" in out
    runs = {i: stat(tmp_path / "output" / f"I_{i}")["_runs"]["train"][0] for i in range(10)}
    assert min(runs[i]["start"] for i in (8, 9)) >= max(runs[i]["end"] for i in range(8)), \
        "max_running holds for the sweep: the second chunk starts once the first has ended"
    for i in range(10):
        directory = tmp_path / "output" / f"I_{i}"
        (log,) = directory.glob("log.train.*")
        assert log.read_text() == f"{i}\n"
        assert stat(directory)["_runs"]["train"][0]["job"] == (f"{first}_{i}" if i < 8 else f"{second}_{i - 8}")


def test_a_command_killed_by_slurms_own_signal_is_interrupted_not_failed_S4(tmp_path, monkeypatch):
    """Slurm signals every process of a job: when the command dies of it before the runner sees
    its own SIGTERM, the runner records `failed`; the element puts that right. No cluster needed."""
    from mlrunner.run import processes
    from mlrunner.backends.slurm import element
    from mlrunner.plan.sweep import Task

    monkeypatch.setitem(processes.OWNER, "job", "41_3")
    directory = tmp_path / "E"
    directory.mkdir()
    task = Task(0, "E", str(directory), ("x",), (1,), ("first", "train", "test"))
    since = time.time()
    runs = {"first": [{"job": "41_3", "start": since - 60, "status": "finished"}],
            "train": [{"job": "41_3", "start": since + 1, "status": "failed", "reason": "exit status -15"}],
            "test": []}
    (directory / "stat").write_text(yaml.safe_dump({"first": "finished", "train": "failed", "test": "skipped",
                                                    "_runs": runs}))
    element._signalled_not_failed(task, False, since)
    record = stat(directory)
    assert runlib.statuses(directory) == {"first": "finished", "train": "interrupted", "test": "skipped"}
    assert record["_runs"]["train"][-1]["status"] == "interrupted"
    runs["train"][0].update(reason="exit status 3")  # a real failure stays one
    (directory / "stat").write_text(yaml.safe_dump({"first": "finished", "train": "failed", "_runs": runs}))
    element._signalled_not_failed(task, False, since)
    assert runlib.statuses(directory)["train"] == "failed"


def test_the_zipapp_submits_elements_that_run_the_same_zipapp_S1(slurm, tmp_path):
    sys.path.insert(0, str(runlib.REPO))
    import build_zipapp

    pyz = build_zipapp.build(tmp_path / "dist")
    runlib.write(tmp_path, """
        template:
          train: echo {x} on $CUDA_VISIBLE_DEVICES
        slurm: {gpus: 1}
        ---
        x: [1, 2]
        """)
    env = slurm.env(POLL_ENV)
    env.pop("PYTHONPATH", None)  # nothing but the zipapp can give the nodes mlrunner
    done = subprocess.run([sys.executable, str(pyz), "--wait"], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    (script,) = (tmp_path / "output").glob(".slurm/*/job.sh")
    assert f"exec {sys.executable} {pyz} --slurm-element" in script.read_text()
    assert "PYTHONPATH" not in script.read_text()
    for x in (1, 2):
        (log,) = (tmp_path / "output" / f"X_{x}").glob("log.train.*")
        assert re.fullmatch(rf"{x} on [0-3]\n", log.read_text())


def test_slurm_flag_submits_a_file_without_slurm_settings_with_the_defaults_S1(slurm, tmp_path):
    runlib.write(tmp_path, """
        template:
          train: echo CUDA=$CUDA_VISIBLE_DEVICES CPUS=$SLURM_CPUS_PER_TASK
        """)
    code, out, err = mlrunner(slurm, ["--slurm", "--wait"], tmp_path)
    assert code == 0, out + err
    (log,) = (tmp_path / "output" / "default").glob("log.train.*")
    assert re.fullmatch(r"CUDA=[0-3] CPUS=1\n", log.read_text()), "defaults: one GPU, one CPU"
    code, out, err = mlrunner(slurm, ["-f", "-r", "2"], tmp_path)
    assert code == 0 and "Finished: 1" in out, "without --slurm or 'slurm:' the same file runs locally"


def test_ctrl_c_stops_waiting_and_leaves_the_jobs_queued_S2(slurm, tmp_path):
    runlib.write(tmp_path, """
        template:
          train: echo hi
        slurm: {gpus: 1, options: [--hold]}
        """)
    waiter = start_mlrunner(slurm, ["--wait"], tmp_path)
    lines = []
    while not lines or not lines[-1].startswith("PENDING"):
        lines.append(waiter.stdout.readline())
        assert lines[-1], "".join(lines) + waiter.stderr.read()
    waiter.send_signal(signal.SIGINT)
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 130
    assert err == "mlrunner: stopped waiting; the Slurm jobs go on (--stop cancels them)\n"
    assert list(queue(slurm).values()) == ["PENDING"]


def test_a_record_owned_by_a_job_is_left_alone_where_slurm_cannot_be_asked_S3(tmp_path):
    """A local run on a tree whose `running` record a Slurm job owns, where squeue is missing:
    the job may well live, so the command is not run twice. No cluster needed."""
    runlib.write(tmp_path, """
        template:
          train: echo hi
        """)
    directory = tmp_path / "output" / "default"
    directory.mkdir(parents=True)
    (directory / "stat").write_text(yaml.safe_dump(
        {"train": "running", "_runs": {"train": [{"job": "77_0", "host": "node9", "pid": 1, "status": "running"}]}}))
    env = {"PATH": str(tmp_path / "no-slurm-here")}
    code, out, err = runlib.run(["-r", "0"], tmp_path, env=env)
    assert code == 0, out + err
    assert "BUSY    train, output/default: running in another mlrunner (host node9" in out
    assert runlib.statuses(directory) == {"train": "running"}


def test_status_says_when_the_queue_cannot_be_asked_and_goes_on_S2(tmp_path):
    runlib.write(tmp_path, """
        template:
          train: echo hi
        slurm: {gpus: 0}
        """)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / ".mlrunner-slurm.x").write_text(yaml.safe_dump(
        {"id": "x", "directory": str(tmp_path / "output" / ".slurm" / "x"), "chunks": [["5", 0, 1]],
         "outputs": ["output/default"]}))
    code, out, err = runlib.run(["--status"], tmp_path, env={"PATH": str(tmp_path / "no-slurm-here")})
    assert code == 0, err
    assert out.startswith("Slurm jobs on output: the queue cannot be asked (squeue is not on PATH")


def test_P2_elements_run_the_snapshot_of_their_submission(slurm, tmp_path):
    """`code: snapshot` with Slurm: the code is frozen when the driver submits; an element that
    starts after an edit and a commit still runs the submitted code, from the snapshot."""
    from gitrepo import commit_all, make_repo, set_version
    go = tmp_path / "go"
    repo = make_repo(tmp_path / "repo", params=f"code: snapshot\ntemplate:\n  train: while [ ! -e {{go}} ]; do sleep "
                                                f"0.1; done; python3 train.py\ndefault: {{go: {go}}}\nslurm: {{cpus: 1}}\n"
                                                "---\nseed: [1, 2]\n")
    code, out, err = mlrunner(slurm, [], repo)
    assert code == 0, out + err
    digest = next(line.split()[2] for line in out.splitlines() if line.startswith("Code: snapshot"))
    set_version(repo, 2)
    commit_all(repo, "version 2 while the jobs wait")
    go.write_text("")
    slurm.wait_idle()
    snapshot = (repo / "output" / ".mlrunner" / "code" / digest).resolve()
    for seed in (1, 2):
        log, = (repo / "output" / f"Seed_{seed}").glob("log.train.*")
        assert log.read_text().split() == ["VERSION", "1", "FROM", str(snapshot / "train.py")]
        assert stat(repo / "output" / f"Seed_{seed}")["_runs"]["train"][-1]["code"] == digest
