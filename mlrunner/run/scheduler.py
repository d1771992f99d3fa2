"""The scheduler: workers take tasks from the pool in order and places from the allocator (SPEC R2-R8, I3-I4).

A command's life is claim+start (one locked step in `state.py`) -> wait -> copy its files home ->
record, and it ends one of these ways: finished (its files home), failed (exit status, timeout,
files that never came, or an error of ours: I4), interrupted (Ctrl-C, SIGTERM, SIGHUP), out of GPU
memory (tried again larger: G5), or lost with its host, also while copying (the task goes back to
the pool, H6).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..options import Options
from .allocator import Allocator, Grant, NoPlace
from ..plan.config import Config
from .console import Console
from .detach import LOG_NAME
from .early_stop.monitor import Monitor
from ..backends.base import Executor, HostLost, Machine, Outcome, Process, wait_for
from .gpu_policy import OOM_TRIES, gib, oom_in_log
from .pool import Pool
from .provenance import Stamp
from ..plan.resume import Memory, Review
from .signals import Stopper
from .slots import shown
from .state import FAILED, FINISHED, INTERRUPTED, RUN, STOPPED as STOPPED_EARLY, Experiment
from ..plan.sweep import Plan, Task
from ..backends.sync import Scope
from ..plan.template import shell_line

# How a command's turn ended, as `_run_command` tells `_run_task`.
DONE, ALREADY, BUSY, FAIL, STOPPED, LOST, OOM = "done", "already", "busy", "fail", "stopped", "lost", "oom"
EARLY = "early"  # ended by the early_stop rule (A2)
SYNC_TRIES = 3  # copies of a command's files back from its host before it is failed for want of them
SYNC_PAUSE = 0.5  # seconds before the second copy; doubled before each next one


@dataclass
class Failure:
    output: str
    command: str
    reason: str
    log: Optional[str] = None
    order: int = 0  # the task's place in the plan: the summary lists failures in plan order


@dataclass
class Summary:
    finished: int = 0
    already: int = 0
    skipped: int = 0
    interrupted: int = 0
    stopped: int = 0  # by the early_stop rule (A2)
    requeued: int = 0
    not_run: int = 0
    failures: List[Failure] = field(default_factory=list)
    busy: List[str] = field(default_factory=list)
    hosts_left_out: List[str] = field(default_factory=list)  # hosts that could not be reached at start (H12)
    no_place: Optional[str] = None  # why no GPU could take the tasks left (gpu.wait: false)


@dataclass
class Lease:
    """The grant a task runs under; an out-of-memory retry swaps it for a larger one (G5)."""

    grant: Optional[Grant]

    @property
    def executor(self) -> Executor:
        return self.grant.place.executor


class Scheduler:
    """Runs a plan on executors; its `stopper` ends every running tree on a signal (R8, R10)."""

    def __init__(self, plan: Plan, config: Config, allocator: Allocator, run_time: str,
                 args: Options, reviews: List[Review], console: Console):
        self.plan = plan
        self.config = config
        self.allocator = allocator
        self.run_time = run_time
        self.args = args
        self.reviews = reviews
        self.console = console
        self.summary = Summary()
        self.halted = threading.Event()  # --fail-fast after a failure: no new command starts
        self._lock = threading.Lock()
        # Tasks finished before this run began need no worker: counted here, never handed out.
        self.memory = Memory(config.templates, args.output, args.no_subdir)
        self.pool = Pool(task for task in plan.stream() if reviews[task.index].start is not None)
        self.summary.already = sum(len(t.commands) for t in plan.tasks if reviews[t.index].start is None)
        self.stopper = Stopper(args.grace, console.print, self.pool.close)
        self.stopping = self.stopper.stopping  # set by the first SIGINT, SIGTERM or SIGHUP (R8)
        self._width: Optional[int] = None  # of the command names, once the first tasks are there
        # Watches the logs and ends the experiments the early_stop rule stops (A2).
        self.early = Monitor(config.early_stop, args.grace) if config.early_stop is not None else None
        self.stamp: Optional[Stamp] = None  # what each command's `_runs` entry records of its code (P1)

    def run(self) -> Summary:
        """The workers of each machine (this one, each host): one per place, or per_gpu of them per
        place with `gpu:`. A host's workers wait while it is away; each takes a place on its machine."""
        threads = [threading.Thread(target=self._worker, args=(machine,), daemon=True)
                   for machine in self.allocator.machines for _ in range(self.allocator.workers(machine))]
        if self.early is not None:
            self.early.start(list(self.plan.tasks), lambda task: self.reviews[task.index].stat, self.args.no_subdir)
        self.stopper.act()  # a signal that came while the run was being prepared: nothing starts
        for thread in threads:
            thread.start()
        self.stopper.wait(threads)  # the signals are acted on here, in the main thread (R10)
        if self.early is not None:
            self.early.close()
        if not self.stopping.is_set():
            self.summary.not_run = self.pool.left()
        self.memory.close()
        return self.summary

    # -- a worker's loop -------------------------------------------------------------------------
    def _worker(self, machine: Machine) -> None:
        while machine.ready(self.pool.finished):
            task = self.pool.take()
            if task is None:
                return
            lost, back, lease = False, False, Lease(None)
            try:
                start = self.reviews[task.index].start
                lease.grant = self.allocator.acquire(
                    self.allocator.size(task.commands[start:], task.params), self.stopping, machine)
                if lease.grant is not None:
                    lost = self._run_task(task, lease)
            except HostLost:
                lost = True
            except NoPlace as error:
                back = error.elsewhere  # this machine's GPUs are all left out: other machines take it
                if not back:
                    self._no_place(task, str(error))
            except Exception as error:  # a bug of ours must not hang the pool (I4); the task is failed
                self._fail_untracked(task, error)
            finally:
                self.allocator.release(lease.grant)
                if lost and not self.stopping.is_set():
                    with self._lock:
                        self.summary.requeued += 1
                    self.console.print(f"REQUEUE {task.output}: host {machine.name} lost; another worker takes it")
                self.pool.done(task, requeue=lost or back)
            if back:
                return

    def _run_task(self, task: Task, lease: Lease) -> bool:
        """Run a task's commands in order; True when its host was lost under it."""
        verdict = self.reviews[task.index]
        experiment = Experiment(task.output, task.name, shared=self.args.no_subdir)
        param: Optional[Dict] = None
        lines: Dict[str, str] = {}
        ran = self.args.force  # once a command runs, the later ones run too: their inputs changed (R6)
        whole = verdict.start == 0  # every command of the task runs in this run, to its end
        for position, command in enumerate(task.commands):
            if position < verdict.start:
                self._count("already", 1)
                continue
            later = list(task.commands[position + 1:])
            for oom_try in range(OOM_TRIES + 1):
                executor = lease.executor
                try:
                    if not lines:  # the first command to run on this place: the directory, this run's params
                        executor.prepare(task.output)
                        lines = task.render(self.config.templates, self.run_time, executor.resource, executor.host)
                        scripts = {c: shell_line(lines[c], executor.resource, self._log(task, c), self.args.debug)
                                   for c in task.commands}
                        param = dict(task.params, _name=task.name, _output=task.output, _time=self.run_time,
                                     _scripts=scripts)
                    # A retry of ours reruns only what is still not finished: another run on the
                    # tree may have finished it meanwhile (G10).
                    ending = self._run_command(lease, experiment, task, command, lines[command],
                                               ran or command in verdict.rerun, param, later,
                                               oom_left=oom_try < OOM_TRIES)
                except HostLost:
                    raise
                except Exception as error:  # I4: fail this command with the reason, and go on
                    ending = self._fail(experiment, task, command, f"{type(error).__name__}: {error}", later)
                if ending != OOM:
                    break
                param, lines = None, {}
                if not self._regrant(lease, task, command, oom_try):
                    return False
            if ending == DONE:
                param, ran = None, True
            elif ending == ALREADY:
                self._count("already", 1)
                whole = False
            else:
                return ending == LOST
        if whole:
            self.memory.task_done(task, experiment.signed, experiment.stat_written)
        return False

    def _regrant(self, lease: Lease, task: Task, command: str, oom_try: int) -> bool:
        """After an out-of-memory end: give the place back and wait for one with more room (G5)."""
        old = lease.grant
        size = self.allocator.oom_size(old)
        self.console.print(f"OOM     gpu: {shown(old.slot)}, {self._info_plain(command, task)} (out of GPU "
                           f"memory with {gib(old.mib)} reserved; again with {gib(size)}, try {oom_try + 2} of "
                           f"{OOM_TRIES + 1})")
        self.allocator.release(old)
        lease.grant = None
        lease.grant = self.allocator.acquire(size, self.stopping, old.place.machine, avoid=old.place)
        return lease.grant is not None

    def _no_place(self, task: Task, reason: str) -> None:
        """No GPU can take this task: too large for any (a failure), or every one skipped (the run ends)."""
        if "gpu.wait is false" in reason:
            with self._lock:
                first = self.summary.no_place is None
                self.summary.no_place = reason
            self.pool.close()
            if first:
                self.console.print(f"STOP    no GPU left to run on: {reason}")
            return
        with self._lock:
            self.summary.failures.append(Failure(task.output, "-", reason, order=task.index))
        self.console.print(f"FAIL    {task.output} ({reason})")

    def _run_command(self, lease: Lease, experiment: Experiment, task: Task, command: str, line: str,
                     rerun: bool, param: Optional[Dict], later: List[str], oom_left: bool = False) -> str:
        """Run one command, with its retries, and record how it ended."""
        executor = lease.executor
        info = self._info(lease.grant.slot, command, task)
        for attempt in range(self.args.retry + 1):
            if self.stopping.is_set() or self.halted.is_set():
                return STOPPED
            log = self._log(task, command) + (f".retry{attempt}" if attempt else "")
            claim = experiment.start(
                command, rerun=rerun, worker=lease.grant.slot, log=log, param=param,
                line=lambda path: shell_line(line, executor.resource, path, self.args.debug),
                launch=lambda script: self._launch(lease, script), grace=self.args.grace,
                extra=self.stamp.fields(executor) if self.stamp else None,
                say=lambda note: self.console.print(f"NOTE    {note}"))
            for note in claim.notes:
                self.console.print(f"NOTE    {note}")
            if claim.verdict == FINISHED:
                return ALREADY
            if claim.verdict != RUN:
                self._note_busy(task, command, claim.verdict)
                return BUSY
            param = None
            if attempt == 0:
                self.console.print(f"START   {info}")
            watched = self.early is not None and self.early.watch(command, task.output, claim.log, claim.process)
            outcome = wait_for(claim.process, self.args.timeout, self.args.grace)
            decision = self.early.forget(task.output) if watched else None
            self.stopper.ended(claim.process)
            missing = self._collect(executor, task, claim.log, outcome)
            seen = self.allocator.gpu_mib(lease.grant)  # its peak GPU memory (G12)
            if outcome.lost:
                self.console.ended_command("lost", outcome.seconds)
                self._notes(experiment.finish(command, INTERRUPTED, outcome.seconds, outcome.reason, gpu_mib=seen))
                self.console.print(f"LOST    {info} ({outcome.reason})")
                return LOST
            if self.stopping.is_set():
                self.console.ended_command(INTERRUPTED, outcome.seconds)
                self._notes(experiment.finish(command, INTERRUPTED, outcome.seconds, "interrupted", gpu_mib=seen))
                self._count("interrupted", 1)
                self.console.print(f"STOP    {info}")
                return STOPPED
            if decision is not None and outcome.code != 0:
                return self._stopped_early(experiment, task, command, decision, outcome.seconds, later, info)
            if missing:  # never `finished` with files missing: failed, run again by --retry or the next run
                outcome.reason = missing if outcome.code == 0 else f"{outcome.reason}; {missing}"
            elif outcome.code == 0:
                self.console.ended_command(FINISHED, outcome.seconds)
                self._notes(experiment.finish(command, FINISHED, outcome.seconds, gpu_mib=seen))
                self._count("finished", 1)
                self.console.print(f"DONE    {info}")
                return DONE
            self.console.ended_command(FAILED, outcome.seconds)
            if self.allocator.policy and oom_in_log(claim.log):
                if oom_left:
                    self._notes(experiment.finish(command, FAILED, outcome.seconds, "out of GPU memory", gpu_mib=seen))
                    return OOM
                outcome.reason = "out of GPU memory, every try"
            if attempt < self.args.retry:
                self._notes(experiment.finish(command, FAILED, outcome.seconds, outcome.reason, gpu_mib=seen))
                self.console.print(f"RETRY   {info} ({outcome.reason}; attempt {attempt + 2} of "
                                   f"{self.args.retry + 1})")
                continue
            return self._fail(experiment, task, command, outcome.reason or "failed", later, outcome.seconds,
                              claim.log, info, seen)
        return STOPPED

    def _launch(self, lease: Lease, script: str) -> Process:
        process = lease.executor.start(script, self.args.debug)
        self.allocator.attach(lease.grant, getattr(process, "pgid", None))
        self.stopper.started(process)  # ended at once when a stop began before it was known
        self.console.started_command()
        return process

    def _fail(self, experiment: Experiment, task: Task, command: str, reason: str, later: List[str],
              seconds: Optional[float] = None, log: Optional[str] = None, info: Optional[str] = None,
              gpu_mib: Optional[int] = None) -> str:
        """Record a failed command and skip the task's later ones; with --fail-fast, stop starting."""
        try:
            self._notes(experiment.finish(command, FAILED, seconds, reason, skipped=later, gpu_mib=gpu_mib))
        except Exception as error:  # the record itself cannot be written (I4): say so, and go on
            reason = f"{reason}; its record could not be written either: {type(error).__name__}: {error}"
        with self._lock:
            self.summary.failures.append(Failure(task.output, command, reason, log, task.index))
            self.summary.skipped += len(later)
        self.console.print(f"FAIL    {info or self._info_plain(command, task)} ({reason})")
        if self.args.fail_fast and not self.halted.is_set():
            self.halted.set()
            self.pool.close()
            self.console.print("--fail-fast: no new command starts; running ones finish")
        return FAIL

    def _stopped_early(self, experiment: Experiment, task: Task, command: str, decision, seconds: float,
                       later: List[str], info: str) -> str:
        """Record a command the early_stop rule ended, with what decided it; its task is done (A2)."""
        self.console.ended_command(STOPPED_EARLY, seconds)
        self._notes(experiment.finish(command, STOPPED_EARLY, seconds, decision.reason(), later, decision.record()))
        with self._lock:
            self.summary.stopped += 1
            self.summary.skipped += len(later)
        self.console.print(f"STOPPED {info} ({decision.reason()})")
        return EARLY

    def _fail_untracked(self, task: Task, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            self.summary.failures.append(Failure(task.output, "-", reason, order=task.index))
        self.console.print(f"FAIL    {task.output} ({reason})")

    def _collect(self, executor: Executor, task: Task, log: str, outcome: Outcome) -> Optional[str]:
        """Bring a remote command's files home, partial logs included (H5): None once they all came,
        else why not after SYNC_TRIES tries (they are still on the host). A host lost meanwhile makes
        the outcome `lost`: the command is not finished, its task runs again (H6)."""
        scope = Scope(self.args.no_subdir, (os.path.basename(log),), (os.path.basename(self.config.path), LOG_NAME))
        why = ""
        for attempt in range(SYNC_TRIES):
            if attempt:
                self.stopping.wait(SYNC_PAUSE * 2 ** (attempt - 1))  # a stop does not wait for the pause
            try:
                executor.collect(task.output, scope)
                return None
            except HostLost:
                if not outcome.lost:
                    outcome.lost, outcome.reason = True, f"host {executor.host} lost while its files were copied back"
                return None
            except Exception as error:  # a broken copy: the next try brings what is missing
                why = f"{type(error).__name__}: {error}".rstrip(": ")
                self.console.print(f"warning: copying {task.output} back from {executor.host} failed "
                                   f"(try {attempt + 1} of {SYNC_TRIES}): {why}")
        return f"its files did not come back from {executor.host}: {why}"

    def _count(self, what: str, number: int) -> None:
        with self._lock:
            setattr(self.summary, what, getattr(self.summary, what) + number)

    def _notes(self, notes: List[str]) -> None:
        for note in notes:
            self.console.print(f"NOTE    {note}")

    def _log(self, task: Task, command: str) -> str:
        return task.log(command, self.run_time, self.args.no_subdir)

    def _info(self, slot: str, command: str, task: Task) -> str:
        return f"gpu: {shown(slot)}, " + self._info_plain(command, task)

    def _info_plain(self, command: str, task: Task) -> str:
        total = self.plan.total or len(self.plan.tasks)
        if self._width is None:
            self._width = max((len(c) for t in self.plan.tasks[:1000] for c in t.commands), default=0)
        width = max(2, len(str(total)))
        return f"{command:<{self._width}}:{task.index + 1:{width}d}/{total:{width}d}, {task.output}"

    def _note_busy(self, task: Task, command: str, verdict: str) -> None:
        with self._lock:
            self.summary.busy.append(f"{task.output} ({command}: {verdict})")
        self.console.print(f"BUSY    {command}, {task.output}: {verdict}")
