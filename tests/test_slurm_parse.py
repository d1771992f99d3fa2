"""The pure parts of the Slurm backend on golden text: Slurm's output, `slurm:` checks, sbatch flags (S1, S3, S5, C10).

The golden lines are what Slurm 22.05 (Debian 12's slurm-wlm) printed on the test cluster of
tests/slurmd.py, and what `sacct` prints where accounting exists.
"""

from __future__ import annotations

import pytest

from mlrunner.backends.slurm import queue
from mlrunner.backends.slurm.settings import Settings, sbatch_argv

SQUEUE = """\
12_2|PENDING||JobArrayTaskLimit
12_[3-5,9%2]|PENDING||JobArrayTaskLimit
12_0|RUNNING|vm|None
12_1|COMPLETING|vm|None
13|PENDING||BeginTime
"""

SCONTROL_CONFIG = """\
Configuration data as of 2026-11-28T05:05:01
AccountingStorageType   = accounting_storage/none
MaxArraySize            = 8
MinJobAge               = 600 sec
SchedulerParameters     = sched_interval=2,bf_interval=2
"""

SACCT = """\
12_0|COMPLETED
12_0.batch|COMPLETED
12_1|CANCELLED by 0
12_1.batch|CANCELLED
12_2|PREEMPTED
12_3|NODE_FAIL
"""


def test_sbatch_parsable_job_id_with_and_without_cluster():
    assert queue.parse_sbatch("4711\n") == "4711"
    assert queue.parse_sbatch("4711;cluster2\n") == "4711"
    with pytest.raises(queue.SlurmError):
        queue.parse_sbatch("sbatch: error: Batch job submission failed\n")


def test_squeue_lines_and_unsplit_pending_arrays_S3():
    states = queue.parse_squeue(SQUEUE)
    assert sorted(states) == ["12_0", "12_1", "12_2", "12_3", "12_4", "12_5", "12_9", "13"]
    assert states["12_0"].state == "RUNNING" and states["12_0"].node == "vm"
    assert states["12_4"].state == "PENDING" and states["12_4"].reason == "JobArrayTaskLimit"
    assert states["13"].reason == "BeginTime"
    assert queue.parse_squeue("") == {}


def test_expand_job_ids():
    assert queue.expand_job("7_[0-2,5%4]") == ["7_0", "7_1", "7_2", "7_5"]
    assert queue.expand_job("7_3") == ["7_3"]
    assert queue.expand_job("8") == ["8"]


def test_scontrol_config_keys():
    config = queue.parse_config(SCONTROL_CONFIG)
    assert config["MaxArraySize"] == "8"
    assert config["AccountingStorageType"] == "accounting_storage/none"
    assert "Configuration data as of 2026-11-28T05:05:01" not in config


def test_sacct_states_without_steps():
    assert queue.parse_sacct(SACCT) == {"12_0": "COMPLETED", "12_1": "CANCELLED", "12_2": "PREEMPTED",
                                        "12_3": "NODE_FAIL"}


def test_sbatch_argv_asks_requeue_usr2_and_throttle_S1_S4():
    settings = Settings(partition="gpu", gpus=2, cpus=8, mem="32G", time="24:00:00", account="x",
                        max_running=16, options=["--constraint=a100"], signal=120)
    argv = sbatch_argv(settings, array="0-99", log="/o/slurm.%A_%a.log", name="mlrunner:o", script="/o/job.sh",
                       script_args=["100"])
    assert argv[:2] == ["sbatch", "--parsable"]
    for flag in ("--array=0-99%16", "--requeue", "--signal=B:USR2@120", "--gres=gpu:2", "--cpus-per-task=8",
                 "--partition=gpu", "--mem=32G", "--time=24:00:00", "--account=x", "--constraint=a100",
                 "--output=/o/slurm.%A_%a.log", "--open-mode=append"):
        assert flag in argv
    assert argv[-2:] == ["/o/job.sh", "100"]
    assert not any(a.startswith("--dependency") for a in argv)
    chained = sbatch_argv(settings, array="0-9", log="l", name="n", script="s", script_args=[], after="4711")
    assert "--dependency=afterany:4711" in chained, "a throttled sweep's next chunk waits for the previous one"
    bare = sbatch_argv(Settings(gpus=0), array="0-3", log="l", name="n", script="s", script_args=[])
    assert not any(a.startswith(("--gres", "--partition", "--array=0-3%")) for a in bare)


@pytest.mark.parametrize("text, line, message", [
    ("slurm: [gpu]\n", 4, "must be a mapping"),
    ("slurm:\n  partition: gpu\n  gpu: 1\n", 6, "unknown key 'gpu'"),
    ("slurm:\n  gpus: -1\n", 5, "'gpus' must be a whole number >= 0"),
    ("slurm:\n  max_running: 0\n", 5, "'max_running' must be a whole number >= 1"),
    ("slurm:\n  time: 24:00:00\n", 5, "'time' must be a quoted Slurm time"),
    ("slurm:\n  mem: lots\n", 5, "'mem' must be a size"),
    ("slurm:\n  options: --exclusive\n", 5, "'options' must be a list of sbatch flags"),
    ("slurm:\n  partition: two words\n", 5, "'partition' must be one word"),
])
def test_bad_slurm_settings_are_one_line_with_the_line_C10(tmp_path, run_cli, text, line, message):
    (tmp_path / "params.yaml").write_text("template:\n  train: echo {lr}\ndefault: {lr: 1}\n" + text)
    code, out, err = run_cli([], tmp_path)
    assert code == 2 and out == ""
    assert err.startswith(f"params.yaml:{line}: 'slurm': {message}") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_good_settings_are_kept_on_the_config(load_config):
    config = load_config("""
        template: {train: echo}
        slurm: {partition: gpu, gpus: 1, cpus: 8, mem: 32G, time: "24:00:00", account: x, max_running: 16,
                options: ["--constraint=a100"], max_requeue: 2, signal: 60}
        """)
    assert config.slurm == Settings("gpu", 1, 8, "32G", "24:00:00", "x", 16, ["--constraint=a100"], 2, 60)
    assert load_config("template: {train: echo}\nslurm:\n").slurm == Settings()


def test_wait_without_slurm_is_one_line_exit_2(tmp_path, run_cli):
    (tmp_path / "params.yaml").write_text("template:\n  train: echo hi\n")
    code, out, err = run_cli(["--wait"], tmp_path)
    assert (code, out) == (2, "")
    assert err == "mlrunner: --wait follows Slurm jobs: it needs --slurm or 'slurm:' in the file " \
                  "(a local run waits anyway)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
