"""Submitting a plan to Slurm: a manifest, then one `sbatch --array` per chunk (SPEC S1-S3, S5).

A rerun submits only the tasks with unfinished commands that no live job holds: neither an
element of an earlier submission that is still pending or running, nor the owner of a `running`
record (both asked with one `squeue`). Nothing is written when `sbatch` refuses the job.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from typing import Dict, List

from ...options import Options
from ...plan.config import Config
from ...run.detach import _invocation
from ...errors import EXIT_OK, UserError
from ...plan.origin import remember
from ...view.report import orphans_line
from ...plan.resume import Review
from ...run.state import RUNNING, last_run, owner_alive
from ...plan.sweep import Plan, Task
from . import queue
from .settings import Settings, sbatch_argv
from ...run.console import log_tail
from .submission import DIRECTORY, Chunk, Submission, submissions, write_manifest

# The args an element needs to run its task as a local run would; the rest is the driver's.
ELEMENT_ARGS = ("output", "title", "command", "force", "rerun_changed", "keep_changed", "fail_fast", "debug",
                "no_subdir", "retry", "timeout", "grace", "yaml", "frozen_code")


def entry() -> List[str]:
    """How a node starts this very mlrunner: the same interpreter, and the same zipapp or package."""
    program = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program.endswith(".pyz"):
        return [sys.executable, program]
    return [sys.executable, "-m", "mlrunner"]


def job_script(cwd: str, manifest: str) -> str:
    """The batch script: `exec` makes mlrunner the batch shell itself, so USR2 reaches it (S4)."""
    import mlrunner
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(mlrunner.__file__)))
    lines = ["#!/bin/bash", "# mlrunner: each array element runs one task of the manifest (SPEC S1).",
             f"cd {shlex.quote(cwd)} || exit 1"]
    if os.path.isdir(package_parent):  # a package, not a zipapp: the nodes import this same copy
        lines.append(f"export PYTHONPATH={shlex.quote(package_parent)}${{PYTHONPATH:+:$PYTHONPATH}}")
    lines.append(f"MLRUNNER_SLURM_OFFSET=${{1:-0}} exec {' '.join(map(shlex.quote, entry()))} "
                 f"--slurm-element {shlex.quote(manifest)}")
    return "\n".join(lines) + "\n"


def _held(plan: Plan, reviews: List[Review], output: str) -> Dict[str, str]:
    """Task output -> the live job that holds it: an earlier submission's element, or the owner
    of a `running` record. Records of submissions whose jobs all ended are removed, after saying
    which of their elements ended before mlrunner started (S5)."""
    held: Dict[str, str] = {}
    earlier = submissions(output)
    arrays = [array for submission in earlier for array in submission.arrays()]
    states = queue.shared_queue.states(arrays) if arrays else {}
    for submission in earlier:
        live = False
        for position, job in submission.elements():
            if job in states:
                held[submission.outputs[position]] = job
                live = True
            elif submission.died_early(position, job):
                tail = log_tail(submission.log(job), 1)
                print(f"NOTE    Slurm job {job} ({submission.outputs[position]}) ended before mlrunner started on "
                      f"its node; its log: {submission.log(job)}" + (f": {tail[0]}" if tail else ""))
        if not live:
            submission.remove()
    for task, verdict in zip(plan.tasks, reviews):
        if verdict.start is None or task.output in held:
            continue
        for command in task.commands:
            run = last_run(verdict.stat, command)
            if verdict.stat.get(command) == RUNNING and run.get("job") and owner_alive(run):
                held[task.output] = str(run["job"])
    return held


def _task_data(task: Task) -> list:
    return [task.index, task.name, task.output, list(task.keys), list(task.values), list(task.commands),
            list(task.named_by)]


def _sbatch(argv: List[str]) -> str:
    result = queue.call(argv)
    if result.returncode != 0:
        raise UserError(f"sbatch refused the job: {queue.last_error(result)}")
    return queue.parse_sbatch(result.stdout)


def _cancel(jobs: List[str]) -> None:
    if jobs:
        queue.call(["scancel", *jobs])


def submit(plan: Plan, config: Config, reviews: List[Review], run_time: str, args: Options) -> int:
    """Submit every task that needs it; with --wait, follow them until they end (S2)."""
    settings: Settings = config.slurm or Settings()
    held = _held(plan, reviews, args.output)
    todo = [(t, r) for t, r in zip(plan.tasks, reviews) if r.start is not None and t.output not in held]
    if plan.orphans:
        print(orphans_line(plan.orphans, config))
    for verdict in reviews:
        for note in verdict.notes:
            print(f"NOTE    {note}")
    for output, job in list(held.items())[:10]:
        print(f"LEFT    {output}: Slurm job {job} still holds it")
    if len(held) > 10:
        print(f"LEFT    ... and {len(held) - 10} more experiment(s) held by live Slurm jobs")
    commands = sum(len(t.commands) - r.start for t, r in todo)
    print(f"Tasks: {len(plan.tasks)}, commands to run: {commands}, to submit: {len(todo)}", flush=True)
    if not todo:
        print("Nothing to submit" + (": live Slurm jobs hold the rest" if held else ": every command finished"),
              flush=True)
        return _wait([], plan, todo, held, args) if args.wait and held else EXIT_OK
    submission = _write(plan, config, [t for t, _ in todo], run_time, args, settings)
    remember(config.path, args.output, args.title, args.no_subdir)  # T1: views read it without -y
    me = _invocation()
    quoted = shlex.quote(args.output)
    chunks = ", ".join(f"{c.job} (array 0-{c.count - 1})" for c in submission.chunks)
    limit = f", at most {settings.max_running} running per array" if settings.max_running else ""
    print(f"Submitted {len(todo)} task(s) to Slurm as job {chunks}{limit}\n"
          f"  Slurm logs: {submission.directory}/slurm.<job>_<index>.log\n"
          f"  follow: {me} -o {quoted} --follow\n"
          f"  status: {me} -o {quoted} --status\n"
          f"  stop:   {me} -o {quoted} --stop", flush=True)
    return _wait([submission], plan, todo, held, args) if args.wait else EXIT_OK


def _wait(new: List[Submission], plan: Plan, todo: List, held: Dict[str, str], args: Options) -> int:
    """`--wait`: the tasks just submitted and those that live jobs already hold, until all end."""
    from .watch import watch
    arrays = {job.split("_")[0] for job in held.values()}
    earlier = [s for s in submissions(args.output) if set(s.arrays()) & arrays and s not in new]
    chosen = set(held) | {t.output for t, _ in todo}
    tasks = [t for t in plan.tasks if t.output in chosen]
    return watch(earlier + new, tasks, arrays, args.no_subdir)


def _write(plan: Plan, config: Config, tasks: List[Task], run_time: str, args: Options,
           settings: Settings) -> Submission:
    """The submission's directory, manifest and script, then one sbatch per chunk; on a refusal,
    the chunks already queued are cancelled and every file is removed again (S5)."""
    output_existed = os.path.isdir(args.output)
    ident = f"{run_time}-{os.getpid()}"
    directory = os.path.abspath(os.path.join(args.output, DIRECTORY, ident))
    os.makedirs(os.path.join(directory, "began"))
    submission = Submission(args.output, ident, directory, outputs=[t.output for t in tasks],
                            submitted=round(time.time(), 3), cwd=os.getcwd())
    try:
        config_copy = os.path.join(directory, os.path.basename(config.path))
        shutil.copyfile(config.path, config_copy)
        element_args = {key: getattr(args, key) for key in ELEMENT_ARGS}
        write_manifest(submission.manifest_path, {
            "config": config_copy, "run_time": run_time, "args": element_args, "max_requeue": settings.max_requeue,
            "tasks": [_task_data(t) for t in tasks]})
        script = os.path.join(directory, "job.sh")
        with open(script, "w", encoding="utf-8") as stream:
            stream.write(job_script(os.getcwd(), submission.manifest_path))
        size = queue.max_array_size()
        for offset in range(0, len(tasks), size):
            count = min(size, len(tasks) - offset)
            after = submission.chunks[-1].job if settings.max_running and submission.chunks else None
            argv = sbatch_argv(settings, array=f"0-{count - 1}", log=os.path.join(directory, "slurm.%A_%a.log"),
                               name=f"mlrunner:{os.path.basename(os.path.abspath(args.output))}",
                               script=script, script_args=[str(offset)], after=after)
            submission.chunks.append(Chunk(_sbatch(argv), offset, count))
        submission.save()
    except BaseException:
        _cancel(submission.arrays())
        shutil.rmtree(directory, ignore_errors=True)
        for parent in (os.path.dirname(directory), args.output if not output_existed else None):
            if parent:
                try:
                    os.rmdir(parent)
                except OSError:
                    pass
        raise
    return submission
