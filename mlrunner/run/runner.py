"""Run a plan: the checks, the workers, the signals and the summary (SPEC R3-R8, I2, I3).

Everything that can refuse a run (a changed config, a bad host, a bad size) is checked before the
detach point; then the executors are built, the scheduler runs, and the summary is printed.
"""

from __future__ import annotations

import gc
from dataclasses import replace
import os
import sys
import threading
from typing import List

from ..options import Options
from .allocator import Allocator, Place
from ..plan.config import Config
from .console import Console
from .detach import detach
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_TERMINATED, EXIT_USAGE, UserError
from ..backends.claims import lock_dir, trouble as claims_trouble
from ..backends.local import LocalExecutor
from .failures import failure_lines
from .gpu_policy import check_sizes
from ..plan.keep import keep_changes
from ..plan.origin import remember, repeat
from .provenance import Stamp
from ..view.report import orphans_line
from ..plan.resume import Review, review
from .runs import RunRecord
from .scheduler import Scheduler, Summary
from .signals import EXIT_BY_SIGNAL, RECORDER
from .snapshot import code_dir, code_for_run, frozen_code
from ..plan.sweep import Plan
from .workers import build_executors, host_specs

def _print_summary(console: Console, summary: Summary, halted: bool, args: Options) -> None:
    """What went wrong first, the counts last, where a terminal leaves them in sight (T6)."""
    if summary.requeued:
        console.print(f"Tasks moved to another worker after a host was lost: {summary.requeued}")
    if summary.not_run:
        why = ("--fail-fast stopped the run" if halted else summary.no_place if summary.no_place
               else "every worker that could take them was lost")
        console.print(f"Tasks not run ({why}): {summary.not_run}")
    if summary.failures:
        console.print("\n".join(failure_lines(summary.failures, repeat(args, "--status", config=False))))
    if summary.busy:
        console.print("Left to another mlrunner:\n" + "\n".join(f"    {b}" for b in summary.busy))
    if summary.hosts_left_out:
        console.print("Hosts left out (unreachable at start):\n" + "\n".join(f"    {h}" for h in summary.hosts_left_out))
    if summary.stopped:
        console.print(f"Stopped early (early_stop): {summary.stopped}")
    console.print(f"Finished: {summary.finished}, failed: {len(summary.failures)}, skipped: {summary.skipped}, "
                  f"interrupted: {summary.interrupted}, already finished: {summary.already}")


def _no_records(output: str) -> bool:
    """Nothing under `output` that could be an experiment's records (a fresh sweep): no directory,
    no `--no-subdir` `param.*` or `stat.*` file."""
    try:
        with os.scandir(output) as entries:
            return not any(e.is_dir() or e.name.startswith(("param.", "stat.")) for e in entries)
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _check_changes(plan: Plan, reviews: List[Review], args: Options) -> bool:
    """I2: say which finished commands' config changed; True when the run must not start."""
    changed = [(task, verdict) for task, verdict in zip(plan.tasks, reviews) if verdict.changed]
    if not changed:
        return False
    count = sum(len(verdict.changed) for _, verdict in changed)
    print(f"mlrunner: the config changed for {count} finished command(s) of {len(changed)} experiment(s):",
          file=sys.stderr)
    for task, verdict in changed[:5]:
        print(f"    {task.output} ({', '.join(verdict.changed)}): {'; '.join(verdict.changes)}", file=sys.stderr)
    if len(changed) > 5:
        print(f"    ... and {len(changed) - 5} more experiment(s) ({repeat(args, '--dry-run')} lists them all)",
              file=sys.stderr)
    print(f"mlrunner: to rerun them (and their tasks' later commands): {repeat(args, '--rerun-changed')}\n"
          f"mlrunner: to keep their results: {repeat(args, '--keep-changed')}", file=sys.stderr)
    return True


def run(plan: Plan, config: Config, run_time: str, args: Options) -> int:
    """Run the plan and return the exit status (R4)."""
    on_change = "rerun" if args.rerun_changed else "keep" if args.keep_changed else "ask"
    streaming = (plan.filling and config.gpu is None and not (args.slurm or config.slurm is not None)
                 and _no_records(args.output))
    if streaming:  # nothing to review or to check first: the run starts while the plan fills
        reviews = [Review(start=0)] * plan.total
        to_run = plan.command_count
    else:
        plan.fill()
        reviews = review(plan, config.templates, args.output, no_subdir=args.no_subdir, force=args.force,
                         on_change=on_change, rerun_stopped=args.rerun_stopped)
        if config.gpu is not None:
            check_sizes(config.gpu, plan.tasks, config.path)
            problem = claims_trouble(lock_dir())
            if problem:
                raise UserError(problem)
        if on_change == "ask" and _check_changes(plan, reviews, args):
            return EXIT_USAGE
        to_run = sum(len(t.commands) - r.start for t, r in zip(plan.tasks, reviews) if r.start is not None)
    specs = host_specs(config, args)
    if config.code is not None and specs and os.path.isabs(args.output):
        raise UserError(f"code: snapshot with hosts needs -o relative to here (a host mirrors it under its workdir), "
                        f"not {args.output}")
    # P1: asked once per run; P2: a snapshot when something will run (UserError: exit 2)
    code, snapshot, workdir, code_line = code_for_run(config.code if to_run else None, args)
    args = replace(args, frozen_code=args.frozen_code or frozen_code(code, snapshot, workdir))
    for spec in specs if snapshot else []:  # hosts get the same snapshot through the code push (H13)
        spec.code, spec.start = os.path.join(code_dir(args.output), snapshot), workdir
    RECORDER.checkpoint()  # a signal while planning ends the run here, before anything starts (R10)
    # Every check is done: from here on, things start.
    if on_change == "keep" and not streaming:
        kept = keep_changes(plan, reviews, config.templates, args.no_subdir)
        if kept:
            print(f"Kept: {kept} experiment(s) whose config changed; their param records it (_kept)")
    gc.freeze()  # the plan and the records read so far live to the end: the collector skips them
    gc.enable()  # off while planning (cli._planning); a run, a Slurm --wait, lasts hours
    if args.slurm or config.slurm is not None:  # the tasks go to Slurm's job arrays instead (S1)
        from ..backends.slurm.submit import submit
        RECORDER.release()  # submitting and --wait stop on Ctrl-C as KeyboardInterrupt
        if code_line:
            print(code_line, flush=True)
        return submit(plan, config, reviews, run_time, args)
    detached = detach(args.output) if args.detach else None
    if detached is not None:  # the foreground side of --detach: the run goes on in the daemon (D1)
        return detached
    unreachable: List[str] = []
    executors = build_executors(config, args, specs, unreachable)
    try:
        RECORDER.checkpoint()  # connecting to hosts takes a while: a signal meanwhile ends the run
    except BaseException:
        for executor in executors:
            executor.close()
        raise
    if not executors:
        print("mlrunner: no workers: no local resource and no reachable host", file=sys.stderr)
        return EXIT_FAILED
    places = [Place(e, [g for g in e.resource.split(",") if g], remote=not isinstance(e, LocalExecutor))
              for e in executors]
    if plan.orphans:
        print(orphans_line(plan.orphans, config))
    for verdict in reviews:
        for note in verdict.notes:
            print(f"NOTE    {note}")
    if config.early_stop is not None:
        print(config.early_stop.describe())
    print(f"Tasks: {plan.total}, commands to run: {to_run}", flush=True)
    if code_line:
        print(code_line, flush=True)
    for executor in executors:
        if isinstance(executor, LocalExecutor):
            executor.cwd = workdir
    if not args.slurm_element:  # T1: views read it without -y
        remember(config.path, args.output, args.title, args.no_subdir)
    console = Console(to_run, len(executors))
    allocator = Allocator(places, config.gpu, say=console.print)
    scheduler = Scheduler(plan, config, allocator, run_time, args, reviews, console)
    scheduler.summary.hosts_left_out = unreachable
    scheduler.stamp = Stamp(code, snapshot, gpus=config.gpu is not None)
    if streaming:
        threading.Thread(target=plan.fill, name="plan", daemon=True).start()
    try:
        with console, RunRecord(args.output, console, args.grace):  # the record --status/--stop/--follow read (D2)
            summary = scheduler.run()
            _print_summary(console, summary, scheduler.halted.is_set(), args)
            scheduler.stopper.act()  # a signal during the summary still sets the exit status
    finally:
        for executor in executors:
            executor.close()
    if scheduler.stopper.signal_number is not None:
        return EXIT_BY_SIGNAL.get(scheduler.stopper.signal_number, EXIT_TERMINATED)
    return EXIT_FAILED if summary.failures or summary.not_run else EXIT_OK
