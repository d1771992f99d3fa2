"""Seeing and stopping submitted work: `--wait`, and the Slurm part of `--status`/`--stop`/`--follow` (S2).

The records each element writes are the truth; the queue only says which elements are still
pending or running. `--wait` reads the records every second (files, no load on the controller)
and asks `squeue` once per `MLRUNNER_SLURM_POLL` seconds (default 30) for all of its arrays
together, so waiting on 10^4 tasks costs the controller two calls a minute.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import Dict, Iterable, List, Optional, Set, Tuple

from ...errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ...run.state import FAILED, FINISHED, INTERRUPTED, RUNNING, SKIPPED, STAT, read_yaml, record_path, runs_of
from ...run.slots import shown
from ...plan.sweep import Task
from . import queue
from ...run.console import log_tail
from .submission import Submission, submissions

RECORD_POLL = 1.0
ENDED = (FINISHED, FAILED, SKIPPED)
SHOWN_ELEMENTS = 30  # per submission in --status; the rest are counted
EVENT = {RUNNING: "START  ", FINISHED: "DONE   ", FAILED: "FAIL   ", INTERRUPTED: "STOP   ", SKIPPED: None}


def _stat(task: Task, no_subdir: bool) -> Dict:
    return read_yaml(record_path(task.output, STAT, task.name, no_subdir))


def watch(watched: List[Submission], tasks: List[Task], arrays: Iterable[str] = (), no_subdir: bool = False) -> int:
    """Follow submissions on the console until none of their elements (nor `arrays`) is queued;
    exit 0 when every task finished."""
    arrays = sorted(set(arrays) | {a for s in watched for a in s.arrays()})
    seen: Dict[Tuple[int, str], Tuple[str, int]] = {}
    settled: Set[int] = set()  # tasks whose commands all ended: their records are not read again
    width = max((len(c) for t in tasks[:1000] for c in t.commands), default=0)
    pending_shown: Optional[str] = None
    next_queue = 0.0
    try:
        while True:
            live: Dict[str, queue.JobState] = {}
            asked = time.monotonic() >= next_queue
            if asked:
                live = queue.squeue(arrays)
                next_queue = time.monotonic() + queue.POLL
                pending = Counter(_reason(s) for s in live.values() if s.state == "PENDING")
                text = ", ".join(f"{n} {reason}" for reason, n in sorted(pending.items()))
                if pending and text != pending_shown:
                    print(f"PENDING {sum(pending.values())} element(s) in the queue ({text})", flush=True)
                pending_shown = text
            for position, task in enumerate(tasks):
                if position not in settled:
                    stat = _stat(task, no_subdir)
                    _events(position, task, len(tasks), width, stat, seen)
                    if all(stat.get(c) in ENDED for c in task.commands):
                        settled.add(position)
            if asked and not live:
                break
            time.sleep(min(RECORD_POLL, queue.POLL))
    except KeyboardInterrupt:
        print("mlrunner: stopped waiting; the Slurm jobs go on (--stop cancels them)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _summary(watched, tasks, no_subdir)


def _reason(state: queue.JobState) -> str:
    return "just submitted" if state.reason in ("", "None") else state.reason


def _events(position: int, task: Task, total: int, width: int, stat: Dict,
            seen: Dict[Tuple[int, str], Tuple[str, int]]) -> None:
    """Print what changed in one task's record since the last look: START, DONE, FAIL, STOP."""
    for command in task.commands:
        status, runs = stat.get(command), runs_of(stat, command)
        if status is None or seen.get((position, command)) == (status, len(runs)):
            continue
        seen[(position, command)] = (status, len(runs))
        word = EVENT.get(status)
        if word is None:
            continue
        run = runs[-1] if runs else {}
        digits = max(2, len(str(total)))
        line = (f"{word} node: {run.get('host', '?')}, gpu: {shown(str(run.get('worker', '?')))}, {command:<{width}}:"
                f"{position + 1:{digits}d}/{total:{digits}d}, {task.output}")
        if status in (FAILED, INTERRUPTED) and run.get("reason"):
            line += f" ({run['reason']})"
        print(line, flush=True)


def _summary(watched: List[Submission], tasks: List[Task], no_subdir: bool) -> int:
    finished = failed = other = 0
    failures: List[str] = []
    for task in tasks:
        stat = _stat(task, no_subdir)
        statuses = [stat.get(c) for c in task.commands]
        if all(s == FINISHED for s in statuses):
            finished += 1
        elif FAILED in statuses:
            failed += 1
            failures.append(task.output)
        else:
            other += 1
    never = [(s, p, j) for s in watched for p, j in s.elements() if s.died_early(p, j)]
    final = queue.sacct(j for _, _, j in never[:5])  # where accounting exists: how Slurm saw them end
    print(f"Slurm: experiments finished: {finished}, failed: {failed}, not finished: {other}, "
          f"elements that ended before mlrunner started: {len(never)}")
    for output in failures[:20]:
        print(f"    failed: {output}")
    for submission, position, job in never[:5]:
        state = f" ({final[job]})" if job in final else ""
        print(f"    Slurm job {job}{state} ({submission.outputs[position]}) ended before mlrunner started on its "
              f"node; its log: {submission.log(job)}")
        print("\n".join(f"        | {line}" for line in log_tail(submission.log(job))))
    return EXIT_OK if finished == len(tasks) else EXIT_FAILED


def _live_states(found: List[Submission]) -> Dict[str, queue.JobState]:
    arrays = [array for submission in found for array in submission.arrays()]
    return queue.shared_queue.states(arrays) if arrays else {}


def print_submissions(output: str) -> None:
    """The Slurm part of `--status` (S2): each live element's state, job id and node; and the
    elements that ended before mlrunner started, with their logs (S5)."""
    found = submissions(output) if os.path.isdir(output) else []
    if not found:
        return
    try:
        states = _live_states(found)
    except queue.SlurmError as error:  # the records below still say what ran
        print(f"Slurm jobs on {output}: the queue cannot be asked ({error})\n", flush=True)
        return
    for submission in found:
        elements = list(submission.elements())
        live = [(p, j) for p, j in elements if j in states]
        never = [(p, j) for p, j in elements if j not in states and submission.died_early(p, j)]
        if not live and not never:  # all ended, nothing to tell: the record has served
            submission.remove()
            continue
        counts = Counter(states[j].state for _, j in live)
        what = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "none queued"
        print(f"Slurm job {', '.join(submission.arrays())} on {output}: {len(elements)} element(s): {what}")
        for position, job in live[:SHOWN_ELEMENTS]:
            state = states[job]
            where = f" on {state.node}" if state.node and state.state != "PENDING" else f" ({state.reason})"
            print(f"  {state.state.lower():<8} {job}{where}: {submission.outputs[position]}")
        if len(live) > SHOWN_ELEMENTS:
            print(f"  ... and {len(live) - SHOWN_ELEMENTS} more element(s) in the queue")
        for position, job in never[:5]:
            tail = log_tail(submission.log(job), 1)
            print(f"  ended before mlrunner started: {job}: {submission.outputs[position]}; its log: "
                  f"{submission.log(job)}" + (f": {tail[0]}" if tail else ""))
    print(flush=True)


def stop_submissions(output: str) -> bool:
    """`--stop` (S2): cancel the live elements of every submission on `output` and wait until
    Slurm has ended them (their elements record `interrupted`); False when there was none."""
    found = submissions(output) if os.path.isdir(output) else []
    states = _live_states(found)
    arrays = sorted({job.split("_")[0] for job in states} & {a for s in found for a in s.arrays()})
    if not arrays:
        return False
    print(f"Cancelling Slurm job(s) {', '.join(arrays)} (scancel): their commands are ended and recorded "
          f"as interrupted", flush=True)
    queue.call(["scancel", *arrays])
    deadline = time.monotonic() + 120
    while queue.squeue(arrays) and time.monotonic() < deadline:
        time.sleep(min(1.0, queue.POLL))
    print(f"Cancelled Slurm job(s) {', '.join(arrays)}", flush=True)
    return True


_active: Dict[str, Tuple[float, bool]] = {}  # output -> (when asked, answer)


def active(output: str) -> bool:
    """Is any element of a submission on `output` still pending or running? `--follow` asks this
    every fraction of a second; the queue is asked once per MLRUNNER_SLURM_POLL seconds."""
    asked, answer = _active.get(output, (-queue.POLL, False))
    if time.monotonic() - asked < queue.POLL:
        return answer
    found = submissions(output) if os.path.isdir(output) else []
    answer = bool(found) and any(j in _live_states(found) for s in found for _, j in s.elements())
    _active[output] = (time.monotonic(), answer)
    return answer
