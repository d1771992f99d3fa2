"""The scheduler: one thread per worker pulls tasks from the pool in order (SPEC R1-R8)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Set

from .config import Config
from .console import Console
from .detach import detach
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED
from .executors.base import Executor, HostLost, Outcome, Process, wait_for
from .pool import Pool
from .report import format_orphans
from .runs import RunRecord
from .state import FAILED, FINISHED, INTERRUPTED, SKIPPED, Experiment, first_to_run
from .sweep import Plan, Task
from .template import shell_line
from .workers import build_executors


@dataclass
class Summary:
    finished: int = 0
    already: int = 0
    skipped: int = 0
    interrupted: int = 0
    requeued: int = 0
    not_run: int = 0
    failures: List[str] = field(default_factory=list)
    busy: List[str] = field(default_factory=list)


class Scheduler:
    """Runs a plan on executors; `stop()` (from a signal handler) ends every running tree."""

    def __init__(self, plan: Plan, config: Config, executors: Sequence[Executor], run_time: str,
                 args: argparse.Namespace, starts: List[Optional[int]], console: Console):
        self.plan = plan
        self.config = config
        self.executors = executors
        self.run_time = run_time
        self.args = args
        self.starts = starts  # per task: first command to run, None when all finished
        self.console = console
        self.summary = Summary()
        self.stopping = threading.Event()
        self.signal_number: Optional[int] = None
        self._lock = threading.Lock()
        self.pool = Pool(plan.tasks)
        self._running: Set[Process] = set()
        self._enders: List[threading.Thread] = []
        self._width = max((len(c) for t in plan.tasks[:1000] for c in t.commands), default=0)

    def run(self) -> Summary:
        threads = [threading.Thread(target=self._worker, args=(e,), daemon=True) for e in self.executors]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short joins keep the main thread free for signal handlers
        for ender in self._enders:
            ender.join()
        if not self.stopping.is_set():
            self.summary.not_run = self.pool.left()
        return self.summary

    def stop(self, number: int) -> None:
        """End every running command's process tree: SIGTERM, then SIGKILL after the grace (R8)."""
        with self._lock:
            self.signal_number = self.signal_number or number
            self.stopping.set()
            self.pool.close()
            for process in self._running:
                ender = threading.Thread(target=process.end, args=(self.args.grace,), daemon=True)
                ender.start()
                self._enders.append(ender)

    def _worker(self, executor: Executor) -> None:
        while executor.ready(self.pool.finished):
            task = self.pool.take()
            if task is None:
                return
            lost = False
            try:
                lost = self._run_task(task, executor)
            except HostLost:
                lost = True
            if lost and not self.stopping.is_set():
                with self._lock:
                    self.summary.requeued += 1
                self.console.print(f"REQUEUE {task.output}: host {executor.host} lost; another worker takes it")
            self.pool.done(task, requeue=lost)

    def _run_task(self, task: Task, executor: Executor) -> bool:
        """Run a task's commands in order; True when its host was lost under it."""
        if self.starts[task.index] is None:  # finished before this run began
            with self._lock:
                self.summary.already += len(task.commands)
            return False
        experiment = Experiment(task.output, task.name, shared=self.args.no_subdir)
        executor.prepare(task.output)
        commands = task.render(self.config.templates, self.run_time, executor.resource, executor.host)
        scripts = {c: shell_line(line, executor.resource, self._log(task, c), self.args.debug)
                   for c, line in commands.items()}
        param = dict(task.params, _name=task.name, _output=task.output, _time=self.run_time, _scripts=scripts)
        rerun = self.args.force
        for position, command in enumerate(task.commands):
            # Once a command runs, the later ones run too: their inputs changed (R6).
            verdict = experiment.claim(command, rerun, executor.label, param)
            if verdict == FINISHED:
                with self._lock:
                    self.summary.already += 1
                continue
            if verdict != "run":
                self._note_busy(task, command, verdict)
                return False
            rerun, param = True, None  # param is written with the first command that runs
            info = self._info(executor, command, task)
            outcome = self._run_command(executor, experiment, task, command, commands[command], info)
            if outcome is None or outcome.lost:
                return outcome is not None
            if outcome.code != 0:
                later = {c: SKIPPED for c in task.commands[position + 1:]}
                experiment.record(dict({command: FAILED}, **later), outcome.seconds, outcome.reason)
                with self._lock:
                    self.summary.failures.append(f"{task.output} ({command}: {outcome.reason})")
                    self.summary.skipped += len(later)
                self.console.print(f"FAIL    {info} ({outcome.reason})")
                return False
            experiment.record({command: FINISHED}, outcome.seconds)
            with self._lock:
                self.summary.finished += 1
            self.console.print(f"DONE    {info}")
        return False

    def _run_command(self, executor: Executor, experiment: Experiment, task: Task, command: str, line: str,
                     info: str) -> Optional[Outcome]:
        """Run one command, with its retries; None when the run was stopped under it.

        A lost host's command is `interrupted` here and its outcome says `lost`.
        """
        self.console.print(f"START   {info}")
        for attempt in range(self.args.retry + 1):
            log = self._log(task, command) + (f".retry{attempt}" if attempt else "")
            if self.stopping.is_set():
                break
            # Start outside the lock, so that workers do not queue behind each other's fork.
            process = executor.start(shell_line(line, executor.resource, log, self.args.debug), self.args.debug)
            with self._lock:
                self._running.add(process)
                missed_stop = self.stopping.is_set()
            if missed_stop:  # stop() ran before this process was in the set: end it here
                process.end(self.args.grace)
            self.console.started_command()
            outcome = wait_for(process, self.args.timeout, self.args.grace)
            with self._lock:
                self._running.discard(process)
            self.console.ended_command(outcome.code == 0, outcome.seconds)
            self._collect(executor, task)
            if outcome.lost:
                experiment.record({command: INTERRUPTED}, outcome.seconds, outcome.reason)
                self.console.print(f"LOST    {info} ({outcome.reason})")
                return outcome
            if self.stopping.is_set():
                experiment.record({command: INTERRUPTED}, outcome.seconds, "interrupted")
                with self._lock:
                    self.summary.interrupted += 1
                self.console.print(f"STOP    {info}")
                return None
            if outcome.code == 0 or attempt == self.args.retry:
                return outcome
            self.console.print(f"RETRY   {info} ({outcome.reason}; attempt {attempt + 2} of {self.args.retry + 1})")
        experiment.record({command: INTERRUPTED})
        return None

    def _collect(self, executor: Executor, task: Task) -> None:
        """Bring a remote command's files home, partial logs included (H5)."""
        try:
            executor.collect(task.output)
        except HostLost:
            pass  # the files stay on the host; the task runs again elsewhere
        except Exception as error:  # a failed copy must not end the run: say it and go on
            self.console.print(f"warning: copying {task.output} back from {executor.host} failed: {error}")

    def _log(self, task: Task, command: str) -> str:
        return task.log(command, self.run_time, self.args.no_subdir)

    def _info(self, executor: Executor, command: str, task: Task) -> str:
        total = len(self.plan.tasks)
        width = max(2, len(str(total)))
        return (f"gpu: {executor.label}, {command:<{self._width}}:{task.index + 1:{width}d}/{total:{width}d}, "
                f"{task.output}")

    def _note_busy(self, task: Task, command: str, verdict: str) -> None:
        with self._lock:
            self.summary.busy.append(f"{task.output} ({command}: {verdict})")
        self.console.print(f"BUSY    {command}, {task.output}: {verdict}")


def _copy_config(config: Config, output: str, title: Optional[str]) -> None:
    os.makedirs(output, exist_ok=True)
    target = os.path.join(output, os.path.basename(config.path) + (f".{title}" if title else ""))
    temporary = f"{target}.{os.getpid()}.tmp"
    shutil.copyfile(config.path, temporary)
    os.replace(temporary, target)


def _scan(plan: Plan, no_subdir: bool, force: bool) -> List[Optional[int]]:
    """Per task, the first command that is not finished yet (R6)."""
    starts = []
    for task in plan.tasks:
        experiment = Experiment(task.output, task.name, shared=no_subdir)
        starts.append(first_to_run(experiment.read_stat(), experiment.keys(task.commands), force))
    return starts


def _print_summary(console: Console, summary: Summary, tasks: int) -> None:
    console.print(f"Finished: {summary.finished}, failed: {len(summary.failures)}, skipped: {summary.skipped}, "
                  f"interrupted: {summary.interrupted}, already finished: {summary.already}")
    if summary.requeued:
        console.print(f"Tasks moved to another worker after a host was lost: {summary.requeued}")
    if summary.not_run:
        console.print(f"Tasks not run (every worker that could take them was lost): {summary.not_run}")
    if summary.failures:
        console.print("Failed:\n" + "\n".join(f"    {f}" for f in summary.failures))
    if summary.busy:
        console.print("Left to another mlrunner:\n" + "\n".join(f"    {b}" for b in summary.busy))


def run(plan: Plan, config: Config, run_time: str, args: argparse.Namespace) -> int:
    """Run the plan and return the exit status (R4)."""
    starts = _scan(plan, args.no_subdir, args.force)
    to_run = sum(len(t.commands) - s for t, s in zip(plan.tasks, starts) if s is not None)
    # Every check is done: from here on, things start.
    detached = detach(args.output) if args.detach else None
    if detached is not None:  # the foreground side of --detach: the run goes on in the daemon (D1)
        return detached
    executors = build_executors(config, args)
    if not executors:
        print("mlrunner: no workers: no local resource and no reachable host", file=sys.stderr)
        return EXIT_FAILED
    print(f"Orphan params: {format_orphans(plan.orphans)}")
    print(f"Tasks: {len(plan.tasks)}, commands to run: {to_run}", flush=True)
    _copy_config(config, args.output, args.title)
    console = Console(to_run, len(executors))
    scheduler = Scheduler(plan, config, executors, run_time, args, starts, console)
    previous = {s: signal.signal(s, lambda number, _frame: scheduler.stop(number))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with console, RunRecord(args.output, console):  # the record --status/--stop/--follow read (D2)
            summary = scheduler.run()
            _print_summary(console, summary, len(plan.tasks))
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for executor in executors:
            executor.close()
    if scheduler.signal_number is not None:
        return EXIT_INTERRUPTED if scheduler.signal_number == signal.SIGINT else EXIT_TERMINATED
    return EXIT_FAILED if summary.failures or summary.not_run else EXIT_OK
