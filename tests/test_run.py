"""Local runs with real bash processes and real files (SPEC R1-R7, R9)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import subprocess
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from runlib import REPO, STAND_INS, load, run, start, statuses, write

SEED = (REPO / "examples" / "seed" / "params.yaml").read_text()

# Stand-ins for the seed's fairseq scripts: they record when they ran and on which GPU.
TRAIN = """\
import os, sys, time
out = sys.argv[sys.argv.index("--save-dir") + 1]
start = time.time()
print("CUDA_VISIBLE_DEVICES=" + os.environ["CUDA_VISIBLE_DEVICES"])
print("CUDA_DEVICE_ORDER=" + os.environ.get("CUDA_DEVICE_ORDER", ""))
time.sleep(1.0)
open(os.path.join(out, "checkpoint1.pt"), "w").write("w")
with open("spans.txt", "a") as spans:
    spans.write(f"{start} {time.time()}\\n")
"""
AVERAGE = """\
import sys
out = sys.argv[sys.argv.index("--output") + 1]
open(out, "w").write("averaged")
"""
GENERATE = """\
import sys
path = sys.argv[sys.argv.index("--path") + 1]
open(path).read()
print("BLEU4 = 27.31, 60.1/33.2/20.5/12.9")
"""


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    write(tmp_path, SEED)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "scripts" / "average_checkpoints.py").write_text(AVERAGE)
    (tmp_path / "generate.py").write_text(GENERATE)
    return tmp_path


def test_r1_r2_seed_example_runs_four_workers_at_once(seed_dir: Path):
    code, out, err = run([], seed_dir)
    assert code == 0, err
    assert "Tasks: 5, commands to run: 15" in out
    assert re.search(r"^START   gpu: 0, train: 1/ 5, output/Norm_new-Moment_0.1$", out, re.M)
    assert "Finished: 15, failed: 0" in out
    spans = [tuple(map(float, line.split())) for line in (seed_dir / "spans.txt").read_text().splitlines()]
    assert len(spans) == 5
    # The first four trainings overlap: the latest start comes before the earliest end.
    first = sorted(spans)[:4]
    assert max(s for s, _ in first) < min(e for _, e in first)
    gpus = set()
    for directory in ["Norm_new-Moment_0.1", "Norm_new-Moment_0.05", "Norm_batch-Moment_0.1",
                      "Norm_batch-Moment_0.05", "Norm_batch-EaStop_T"]:
        log, = (seed_dir / "output" / directory).glob("log.train.*")
        gpu = re.search(r"CUDA_VISIBLE_DEVICES=(\d)", log.read_text()).group(1)
        assert f"export CUDA_VISIBLE_DEVICES={gpu}; {{ python train.py" in load(seed_dir / "output" / directory / "param")["_scripts"]["train"]
        assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in log.read_text()
        gpus.add(gpu)
        assert statuses(seed_dir / "output" / directory) == {"train": "finished", "avg": "finished", "test": "finished"}
    assert gpus == {"0", "1", "2", "3"}


def test_r5_param_and_stat_files(seed_dir: Path):
    assert run(["-c", "train", "-t", "nothing"], seed_dir)[0] == 2  # no such title: nothing written
    assert not (seed_dir / "output").exists()
    assert run(["-c", "train", "avg"], seed_dir)[0] == 0
    directory = seed_dir / "output" / "Norm_new-Moment_0.1"
    param = load(directory / "param")
    assert set(param) == {"data", "norm", "moment", "early-stop", "_name", "_output", "_time", "_scripts"}
    assert param["norm"] == "new" and param["moment"] == 0.1 and param["early-stop"] is False
    assert param["_name"] == "Norm_new-Moment_0.1" and param["_output"] == "output/Norm_new-Moment_0.1"
    assert re.fullmatch(r"\d{8}\.\d{6}", param["_time"])
    assert set(param["_scripts"]) == {"train", "avg"}
    assert statuses(directory) == {"train": "finished", "avg": "finished"}
    assert (seed_dir / "output" / "params.yaml").read_text() == SEED
    # A later run of another command merges its script into `_scripts`.
    assert run(["-c", "test"], seed_dir)[0] == 0
    assert set(load(directory / "param")["_scripts"]) == {"train", "avg", "test"}


def test_r2_failure_skips_later_commands_and_exits_1(seed_dir: Path):
    (seed_dir / "scripts" / "average_checkpoints.py").write_text("import sys; sys.exit(3)")
    code, out, _ = run([], seed_dir)
    assert code == 1
    assert re.search(r"^FAIL    gpu: \d, avg  : 1/ 5, output/Norm_new-Moment_0.1 \(exit status 3\)$", out, re.M)
    assert statuses(seed_dir / "output" / "Norm_new-Moment_0.1") == {
        "train": "finished", "avg": "failed", "test": "skipped"}
    assert "Finished: 5, failed: 5, skipped: 5" in out
    assert "    output/Norm_new-Moment_0.1 (avg: exit status 3)" in out


def _logs(directory: Path) -> list:
    return sorted(p.name for p in directory.glob("log.*"))


def test_r6_rerun_skips_finished_and_force_reruns(seed_dir: Path):
    assert run(["-c", "train"], seed_dir)[0] == 0
    directory = seed_dir / "output" / "Norm_batch-EaStop_T"
    before = _logs(directory)
    time.sleep(1.1)  # a new run gets a new timestamp
    code, out, _ = run(["-c", "train"], seed_dir)
    assert code == 0 and "commands to run: 0" in out and "already finished: 5" in out
    assert _logs(directory) == before
    code, out, _ = run(["-c", "train", "-f"], seed_dir)
    assert code == 0 and "commands to run: 5" in out
    assert len(_logs(directory)) == 2


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_r6_fix_stale_running_is_interrupted_and_later_commands_rerun(seed_dir: Path):
    assert run([], seed_dir)[0] == 0
    directory = seed_dir / "output" / "Norm_new-Moment_0.1"
    stat = load(directory / "stat")
    stat["avg"] = "running"  # as a killed run leaves it
    stat["_runs"]["avg"] = {"host": os.uname().nodename, "pid": _dead_pid(), "pid_start": 1}
    (directory / "stat").write_text(__import__("yaml").safe_dump(stat))
    code, out, _ = run(["--status"], seed_dir)
    assert re.search(r"Norm_new-Moment_0.1 .*avg: interrupted", out)
    before = _logs(directory)
    time.sleep(1.1)
    code, out, _ = run([], seed_dir)
    assert code == 0 and "commands to run: 2" in out
    new = set(_logs(directory)) - set(before)
    assert {name.split(".")[1] for name in new} == {"avg", "test"}  # test runs again too: its input changed
    assert statuses(directory) == {"train": "finished", "avg": "finished", "test": "finished"}


def test_r7_two_runs_on_one_tree_never_run_a_command_twice(tmp_path: Path):
    write(tmp_path, """
        template:
          work: echo "$$ start" >> {_output}/ledger; sleep 0.3; echo "$$ end" >> {_output}/ledger
        resource: [0, 1]
        ---
        i: [1, 2, 3, 4, 5, 6]
        """)
    first = start([], tmp_path)
    second = start([], tmp_path)
    assert first.wait(60) == 0 and second.wait(60) == 0
    for i in range(1, 7):
        ledger = (tmp_path / "output" / f"I_{i}" / "ledger").read_text().split("\n")
        assert len([line for line in ledger if line.endswith("start")]) == 1, ledger
        assert statuses(tmp_path / "output" / f"I_{i}") == {"work": "finished"}


def _log(directory: Path) -> str:
    log, = directory.glob("log.*")
    return log.read_text()


def test_r1_auto_uses_nvidia_smi_gpus(tmp_path: Path):
    write(tmp_path, """
        template:
          show: echo "$CUDA_VISIBLE_DEVICES {_resource}"
        resource: auto
        ---
        i: [1, 2, 3]
        """)
    env = {"PATH": f"{STAND_INS}:{os.environ['PATH']}", "FAKE_GPUS": "3"}
    code, out, _ = run(["--dry-run"], tmp_path, env)
    assert [line.split()[1] for line in out.splitlines() if line.startswith("export CUDA")] == [
        "CUDA_VISIBLE_DEVICES=0;", "CUDA_VISIBLE_DEVICES=1;", "CUDA_VISIBLE_DEVICES=2;"]
    assert run([], tmp_path, env)[0] == 0
    for i in (1, 2, 3):
        gpu, rendered = _log(tmp_path / "output" / f"I_{i}").split()
        assert gpu == rendered and gpu in {"0", "1", "2"}


def test_r1_no_gpu_means_one_cpu_worker_and_a_warning(tmp_path: Path):
    write(tmp_path, """
        template:
          show: echo "[$CUDA_VISIBLE_DEVICES]"
        ---
        i: [1, 2]
        """)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {"PATH": f"{empty}:/usr/bin:/bin"}
    code, out, err = run(["-r", "auto"], tmp_path, env)
    assert code == 0
    assert "nvidia-smi not found" in err and "one CPU worker" in err
    assert _log(tmp_path / "output" / "I_1") == "[]\n"
    assert "gpu: cpu:0, show: 1/ 2" in out


def test_r1_resource_entries_and_user_device_order(tmp_path: Path):
    write(tmp_path, """
        template:
          show: echo "$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER"
        resource: ["1,2"]
        ---
        i: 1
        """)
    assert run([], tmp_path, {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})[0] == 0
    assert _log(tmp_path / "output" / "I_1") == "1,2 FASTEST_FIRST\n"


def test_r9_retry_reruns_a_failed_command(tmp_path: Path):
    write(tmp_path, """
        template:
          flaky: bash flaky.sh {_output}
        resource: [0]
        ---
        i: 1
        """)
    (tmp_path / "flaky.sh").write_text('test -e "$1/tried" && exit 0; touch "$1/tried"; exit 1\n')
    code, out, _ = run(["--retry", "1"], tmp_path)
    assert code == 0, out
    assert "RETRY   gpu: 0, flaky: 1/ 1, output/I_1 (exit status 1; attempt 2 of 2)" in out
    assert [p.name.endswith(".retry1") for p in sorted((tmp_path / "output" / "I_1").glob("log.*"))] == [False, True]
    assert statuses(tmp_path / "output" / "I_1") == {"flaky": "finished"}


def test_r9_debug_runs_first_task_with_log_on_console(seed_dir: Path):
    code, out, _ = run(["-d"], seed_dir)
    assert code == 0
    assert "CUDA_VISIBLE_DEVICES=0" in out and "BLEU4 = 27.31" in out
    assert sorted(p.name for p in (seed_dir / "output").iterdir()
                  if not p.name.startswith(".mlrunner-")) == ["Norm_new-Moment_0.1", "params.yaml"]
    log, = (seed_dir / "output" / "Norm_new-Moment_0.1").glob("log.test.*")
    assert "BLEU4" in log.read_text()


def test_r9_debug_keeps_the_exit_status_through_tee(tmp_path: Path):
    write(tmp_path, "template: {fail: exit 4}\nresource: [0]\n")
    code, out, _ = run(["-d"], tmp_path)
    assert code == 1 and "exit status 4" in out


def test_r9_no_subdir_shares_the_output_root(seed_dir: Path):
    code, _, _ = run(["--no-subdir", "-c", "train"], seed_dir)
    assert code == 0
    output = seed_dir / "output"
    logs = sorted(p.name for p in output.glob("log.train.*"))
    assert len(logs) == 5 and all(re.fullmatch(r"log\.train\.\d{8}\.\d{6}\.Norm_\w+-\w+_[\w.]+", n) for n in logs)
    assert sorted(p.name for p in output.glob("stat.*")) == sorted(f"stat.{n[len('log.train.') + 16:]}" for n in logs)
    assert load(output / "stat.Norm_new-Moment_0.1")["train"] == "finished"
    assert load(output / "param.Norm_new-Moment_0.1")["moment"] == 0.1
    code, out, _ = run(["--no-subdir", "-c", "train"], seed_dir)
    assert code == 0 and "commands to run: 0" in out


def test_r9_status_prints_every_experiment(seed_dir: Path):
    (seed_dir / "scripts" / "average_checkpoints.py").write_text("import sys; sys.exit(1)")
    run([], seed_dir)
    code, out, _ = run(["--status"], seed_dir)
    assert code == 0
    assert re.search(r"^Norm_batch-EaStop_T +train: finished \(\d+\.\ds\), avg: failed \(\d+\.\ds\), test: skipped$",
                     out, re.M)
    assert out.rstrip().endswith("Experiments: 5; failed: 5, finished: 5, skipped: 5")


def test_r4_exit_status_2_for_bad_flags_and_missing_output(tmp_path: Path):
    code, _, err = run(["--status", "-o", "nowhere"], tmp_path)
    assert code == 2 and "nowhere" in err and "Traceback" not in err
    code, _, err = run(["--retry", "x"], tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_r3_live_status_line_on_a_terminal(tmp_path: Path):
    write(tmp_path, "template: {nap: sleep 1.2}\nresource: [0]\n")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "mlrunner"], cwd=tmp_path, stdout=follower,
                               stderr=follower, env=dict(os.environ, PYTHONPATH=str(REPO)))
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(30) == 0
    screen = b"".join(chunks).decode()
    assert re.search(r"\r\x1b\[K\[[a-z ]*done 0/1, running 1, failed 0, left 0, elapsed 0:00:0", screen), screen
    assert "Finished: 1, failed: 0" in screen


def test_r3_plain_lines_when_not_a_terminal(tmp_path: Path):
    write(tmp_path, "template: {nap: sleep 0.7}\nresource: [0]\n")
    code, out, _ = run([], tmp_path)
    assert code == 0 and "\x1b" not in out and "\r" not in out
