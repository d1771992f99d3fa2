"""One array element on its node: run the manifest's task as a local run would (SPEC S1, S3, S4).

The task runs through the runner's own `run()` with one local worker whose resource is the
`CUDA_VISIBLE_DEVICES` Slurm gave the job (`-r` of a local run), so `param`, `stat`, logs,
statuses and the console are exactly a local run's. The `running` records name the Slurm job (`<array>_<index>`) and
the node, so a resume asks the queue whether their owner still lives.

Preemption and time limits: the job was submitted with `--signal=B:USR2@<grace>`, and the batch
shell `exec`s this process, so USR2 arrives here: the running command is ended as R8 and
recorded `interrupted`, and the element requeues itself (at most `max_requeue` times) to resume
from its records. A requeue from outside (`scontrol requeue`, preemption) sends SIGTERM: the
same ending, and Slurm puts the job back itself. A requeued element runs without `-f`, so
commands that finished before the requeue are not run twice.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace
from typing import Any, Dict

from ...plan import config as config_module
from ...options import Options
from ...errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE
from ...run.processes import HOST, OWNER
from ...run.state import FAILED, INTERRUPTED, Experiment, locked, runs_of, write_record
from ...plan.sweep import Plan, Task
from . import queue
from .submission import read_manifest


KILLED = {f"exit status {code}" for code in (-signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT, 128 + signal.SIGTERM,
                                            128 + signal.SIGKILL, 128 + signal.SIGINT)}


def _task(data: list) -> Task:
    _index, name, output, keys, values, commands, named_by = data
    return Task(0, name, output, tuple(keys), tuple(values), tuple(commands), tuple(named_by))


def _mark_began(manifest_path: str, position: int) -> None:
    """Say that mlrunner runs on the node: an element without this ended before (S5)."""
    path = os.path.join(os.path.dirname(manifest_path), "began", str(position))
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(f"{queue.own_job()} {HOST} {os.getpid()}\n")


def run_element(manifest_path: str) -> int:
    """Run the task of this array element; the exit status is a local run's (R4)."""
    from ...run.runner import run

    manifest: Dict[str, Any] = read_manifest(manifest_path)
    position = int(os.environ.get("MLRUNNER_SLURM_OFFSET", "0")) + int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    if not 0 <= position < len(manifest["tasks"]):
        print(f"mlrunner: element {position} is not in {manifest_path}", file=sys.stderr)
        return EXIT_USAGE
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    _mark_began(manifest_path, position)
    OWNER.update(job=queue.own_job(), host=HOST)
    submitted = Options(**manifest["args"])
    # Slurm's GPUs are this task's one worker (S1), named as they are: nothing to translate (G11).
    resource = os.environ.pop("CUDA_VISIBLE_DEVICES", "")
    args = replace(submitted,
                   resource=[resource],
                   force=submitted.force and restarts == 0,  # after a requeue, what finished stays finished
                   keep_changed=not submitted.rerun_changed,  # the submission already asked (I2)
                   slurm_element=manifest_path)  # the submission told the tree its config (T1): not this copy
    config = config_module.load(manifest["config"])
    config.slurm, config.hosts = None, {}  # here the task runs on this node, nowhere else
    if hasattr(config, "gpu"):
        config.gpu = None  # Slurm gave this job its GPUs: no packing beside it
    plan = Plan()
    plan.tasks = [_task(manifest["tasks"][position])]
    print(f"mlrunner element {queue.own_job()} on {HOST} (restart {restarts}), "
          f"CUDA_VISIBLE_DEVICES={resource!r}: {plan.tasks[0].output}", flush=True)
    preempted = []

    def on_usr2(_number: int, _frame: Any) -> None:  # run() ends the command on SIGTERM (R8)
        preempted.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGUSR2, on_usr2)
    began = time.time()
    status = run(plan, config, manifest["run_time"], args)
    if preempted or status in (EXIT_TERMINATED, EXIT_INTERRUPTED):
        _signalled_not_failed(plan.tasks[0], args.no_subdir, began)
    if preempted:
        return _requeue(restarts, manifest.get("max_requeue", 3))
    return status


def _signalled_not_failed(task: Task, no_subdir: bool, since: float) -> None:
    """Slurm signals every process of the job, the command's too: a command that died of that
    signal before the runner saw its own was recorded `failed`; it was `interrupted` (S4, R8)."""
    experiment = Experiment(task.output, task.name, shared=no_subdir)
    with locked(task.output):
        stat = experiment.read_stat()
        for command in task.commands:
            runs = runs_of(stat, command)
            run = runs[-1] if runs else {}
            if (stat.get(command) == FAILED and run.get("job") == OWNER.get("job") and run.get("start", 0) >= since
                    and str(run.get("reason", "")) in KILLED):
                stat[command] = run["status"] = INTERRUPTED
                run["reason"] = "interrupted (Slurm ended the job)"
                write_record(experiment.stat_path, stat, sort_keys=False, durable=True)


def _requeue(restarts: int, limit: int) -> int:
    """After USR2: put this element back in the queue, unless it was requeued `limit` times (S4)."""
    job = queue.own_job()
    if restarts >= limit:
        print(f"USR2: not requeued: job {job} was requeued {restarts} time(s) already (max_requeue: {limit})",
              flush=True)
        return EXIT_FAILED
    print(f"USR2: requeueing job {job} (restart {restarts + 1} of at most {limit}); it resumes from its records",
          flush=True)
    result = queue.call(["scontrol", "requeue", str(job)])
    if result.returncode != 0:
        print(f"USR2: scontrol requeue {job} failed: {queue.last_error(result)}", flush=True)
        return EXIT_FAILED
    return 0
