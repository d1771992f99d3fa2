"""What is left to do: each task of the plan against its records on disk (SPEC R6, I1, I2, I5).

A run, `--dry-run` and `--status` all ask `review`, so they agree. It only reads: a run sets a
corrupt record aside when it claims the experiment's first command, and says so then.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ..run.index import Index, Journal, Signature, signature
from ..run.slots import host_of
from ..run.state import FINISHED, KEPT, PARAM, RUNNING, RUNS, STAT, STOPPED, Corrupt, last_run, read_record, record_path
from .sweep import Plan, Task, hashed_name, same_value
from .template import Template

# Both shapes of a recorded shell line: `export CUDA_VISIBLE_DEVICES=0; { cmd\n} > log 2>&1` (I6)
# and the older `CUDA_VISIBLE_DEVICES=0 cmd > log 2>&1`, with `2>&1 | tee log` under -d.
_LOG = r"(?:'(?:[^']|'\"'\"')*'|\S+)"  # a log path as shlex.quote writes it
_SCRIPT_RES = (re.compile(rf"export CUDA_VISIBLE_DEVICES=(\S+); \{{ (.*)\n\}}(?: > {_LOG} 2>&1| 2>&1 \| tee {_LOG})\Z", re.S),
               re.compile(rf"CUDA_VISIBLE_DEVICES=(\S+) (.*)(?: > {_LOG} 2>&1| 2>&1 \| tee {_LOG})\Z", re.S))


@dataclass
class Review:
    """One task's verdict: where to start, which finished commands run again, and why."""

    start: Optional[int]  # the first command to run; None when every command is done
    rerun: Set[str] = field(default_factory=set)  # finished commands that run again
    changed: List[str] = field(default_factory=list)  # finished commands whose config changed (I2)
    changes: List[str] = field(default_factory=list)  # what changed: `lr: 0.1 -> 0.01`, `template of train`
    notes: List[str] = field(default_factory=list)  # experiments moved to a hash-suffixed name (I1)
    problems: List[str] = field(default_factory=list)  # records that cannot be used (I4, I5): not run yet
    stat: Dict[str, Any] = field(default_factory=dict)  # the record, or the index's statuses from it
    seconds: Optional[List[Any]] = None  # the index's seconds of each command's last run, in `stat`'s order
    unreadable: bool = False  # forced, or its param is corrupt: every command runs


class _Unreadable(dict):
    """A record that exists but cannot be used: the experiment counts as not run (I5)."""


def _read(path: str, problems: List[str]) -> Dict[str, Any]:
    try:
        return read_record(path)
    except Corrupt as error:
        problems.append(f"{path} does not parse ({error.reason}): a run sets it aside and runs its commands again")
    except OSError as error:  # the experiment's path is a file, say: its run fails with the reason (I4)
        problems.append(f"{path}: cannot be read ({error.strerror})")
    return _Unreadable()


def _own_params(param: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in param.items() if not str(k).startswith("_")}


def _identify(task: Task, root: str, no_subdir: bool, notes: List[str], problems: List[str]) -> Dict[str, Any]:
    """The task's recorded params; a directory holding other values for the params that name the
    task is another experiment, so the task moves to its hash-suffixed name (I1)."""
    param = _read(record_path(task.output, PARAM, task.name, no_subdir), problems)
    recorded = _own_params(param)
    params = task.params
    clash = [k for k in task.named_by if k in recorded and not same_value(recorded[k], params[k])]
    if not clash:
        return param
    held = ", ".join(f"{k}: {recorded[k]!r}" for k in clash)
    wanted = ", ".join(f"{k}: {params[k]!r}" for k in clash)
    old = task.output if not no_subdir else f"{task.output} ({task.name})"
    task.rename(hashed_name(task.name, [(k, params[k]) for k in task.named_by]), root, no_subdir)
    notes.append(f"{old} holds {held}; this experiment ({wanted}) is {task.output if not no_subdir else task.name}")
    return _read(record_path(task.output, PARAM, task.name, no_subdir), problems)


def _value_diff(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    out = []
    for key in list(old) + [k for k in new if k not in old]:
        if key not in new:
            out.append(f"{key}: {old[key]!r} -> (unset)")
        elif key not in old:
            out.append(f"{key}: (unset) -> {new[key]!r}")
        elif not same_value(old[key], new[key]):
            out.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return out


def recorded_command(script: Any) -> Optional[tuple]:
    """(resource, command) of a recorded shell line; None when it has another shape."""
    if not isinstance(script, str):
        return None
    for pattern in _SCRIPT_RES:
        match = pattern.match(script)
        if match:
            try:
                return shlex.split(match.group(1))[0] if match.group(1) != "''" else "", match.group(2)
            except (ValueError, IndexError):
                return None
    return None


def line_now(task: Task, templates: Dict[str, Template], param: Dict[str, Any], stat: Dict[str, Any],
             command: str) -> Optional[Tuple[str, str]]:
    """(recorded, now) of a finished command: the line it ran and the line this config makes of it,
    both without what varies by design from run to run: `_time`, the worker's resource and host,
    the log name, the spelling of the output directory (`-o out`, `-o ./out/`, a tree moved since)
    (I2). None when its recorded line has another shape."""
    scripts = param.get("_scripts") if isinstance(param.get("_scripts"), dict) else {}
    found = recorded_command(scripts.get(command))
    if found is None:
        return None
    resource, line = found
    host = host_of(str(last_run(stat, command).get("worker") or ""))
    spelling = param.get("_output") if isinstance(param.get("_output"), str) else None
    return line, task.render(templates, str(param.get("_time", "")), resource, host, spelling)[command]


def kept_lines(param: Dict[str, Any]) -> Dict[str, str]:
    """command -> the line `--keep-changed` took a finished command's result for (T5), the latest."""
    kept: Dict[str, str] = {}
    entries = param.get(KEPT)
    for entry in entries if isinstance(entries, list) else []:
        lines = entry.get("lines") if isinstance(entry, dict) else None
        kept.update((k, v) for k, v in (lines.items() if isinstance(lines, dict) else ()) if isinstance(v, str))
    return kept


def _template_changes(task: Task, templates: Dict[str, Template], param: Dict[str, Any],
                      stat: Dict[str, Any], commands: Sequence[str]) -> List[str]:
    """Finished commands whose line now differs from the one they ran and from the one a
    `--keep-changed` took them for (I2, T5)."""
    changed = []
    kept = kept_lines(param)
    for command in commands:
        lines = line_now(task, templates, param, stat, command)
        if lines is not None and lines[1] != lines[0] and lines[1] != kept.get(command):
            changed.append(command)
    return changed


def review(plan: Plan, templates: Dict[str, Template], root: str, *, no_subdir: bool, force: bool,
           on_change: str = "ask", write_index: bool = True, seconds: bool = False,
           rerun_stopped: bool = False) -> List[Review]:
    """Per task, what a run does with it. `on_change` is `ask`, `rerun` or `keep` (I2); a task an
    early_stop rule stopped is done unless `rerun_stopped` (A2).

    It only reads the records, and with `write_index` writes what it learnt to the index (a run does;
    `--dry-run` and `--status` write nothing): the run itself sets corrupt records aside when it
    claims their commands. A verdict from the index has its commands' `seconds` only when asked for
    them (`--status` shows them; a run needs the statuses alone).
    """
    out = []
    try:
        existing = set(os.listdir(root))  # one listing; a task with nothing there has nothing to read
    except OSError:
        existing = set()

    def present(name: str) -> bool:  # has records to read
        if no_subdir:
            return bool({record_path("", STAT, name, True), record_path("", PARAM, name, True)} & existing)
        return name in existing

    index = Index(root, "review")
    digests = _Digests(templates, no_subdir)
    fresh = Review(start=0)  # one for every task with no records: nothing changes a verdict once made
    alike: Dict[Tuple[int, Tuple[str, ...]], Optional[Review]] = {}  # one for the tasks whose entries say the same
    for task in plan.tasks:
        if not present(task.name):
            out.append(fresh)
            continue
        signatures = digests.signatures(task)
        digest = digests.of(task, signatures)
        known = None if force else index.get(task.name, digest)
        result = None
        if known is not None:
            shared, own = known[0], known[1] if seconds else None
            if own is None:  # the index holds one object for the entries alike: one verdict for them
                key = (id(shared), task.commands)
                if key not in alike:
                    alike[key] = _verdict(shared, None, task.commands, on_change, rerun_stopped)
                result = alike[key]
            else:
                result = _verdict(shared, own, task.commands, on_change, rerun_stopped)
        if result is None:
            result = _read_and_compare(task, templates, root, no_subdir, force)
            if not (force or result.notes or result.problems or RUNNING in result.stat.values()):
                index.put(task.name, digest, signatures, *_summary(result.changed, result.changes, result.stat))
            _decide(result, task.commands, on_change, rerun_stopped)
        out.append(result)
    if write_index:
        index.save(gone=lambda name: not present(name))
    return out


def _decide(result: Review, commands: Sequence[str], on_change: str, rerun_stopped: bool = False) -> None:
    """Where the task starts, and which finished commands run again."""
    if result.unreadable:  # an unusable param: the experiment counts as not run
        result.start, result.rerun = 0, {c for c in commands if result.stat.get(c) == FINISHED}
        return
    if not rerun_stopped and any(result.stat.get(c) == STOPPED for c in commands):
        result.start = None  # stopped early: the rule's decision stands (A2)
        return
    if on_change == "rerun":
        result.rerun = set(result.changed)
    result.start = None
    for position, command in enumerate(commands):
        if result.stat.get(command) != FINISHED or command in result.rerun:
            result.start = position
            break


class _Digests:
    """The index key of a task's verdict: its records' signatures, its params, its commands and
    the templates (tasks of one document share their tuples: one digest for those)."""

    def __init__(self, templates: Dict[str, Template], no_subdir: bool):
        self.shape = Index.inputs(sorted((n, t.text) for n, t in templates.items()))
        self.no_subdir = no_subdir
        self.layouts: Dict[tuple, str] = {}

    def paths(self, task: Task) -> List[str]:
        """The task's `param` and `stat`."""
        if self.no_subdir:
            return [record_path(task.output, kind, task.name, True) for kind in (PARAM, STAT)]
        return [task.output + "/" + PARAM, task.output + "/" + STAT]

    def signatures(self, task: Task) -> List[Signature]:
        return [signature(path) for path in self.paths(task)]

    def of(self, task: Task, signatures: List[Signature]) -> str:
        layout = (task.keys, task.commands, task.named_by)
        if layout not in self.layouts:
            self.layouts[layout] = Index.inputs(self.shape, *layout)
        return Index.digest(signatures, Index.inputs(self.layouts[layout], task.values))


class Memory:
    """What a run tells the next review about the tasks it ran whole (every command, to the end):
    their verdict is known without reading their records, as long as no one changed them since
    (index.Journal)."""

    def __init__(self, templates: Dict[str, Template], root: str, no_subdir: bool):
        self.digests = _Digests(templates, no_subdir)
        self.journal = Journal(root, "review")

    def task_done(self, task: Task, written: Dict[str, Signature], stat: Dict[str, Any]) -> None:
        """`written`: the signature of each record right after this run last wrote it; `stat`: what it wrote."""
        paths = self.digests.paths(task)
        signatures = [signature(path) for path in paths]
        if [written.get(path) for path in paths] != signatures or RUNNING in stat.values():
            return  # changed by someone since, or another run has a command of it running
        self.journal.add(task.name, self.digests.of(task, signatures), *_summary([], [], stat))

    def close(self) -> None:
        self.journal.close()


def _summary(changed: List[str], changes: List[str], stat: Dict[str, Any]) -> Tuple[list, Optional[list]]:
    """What the index keeps of a verdict on a `stat` without a running command: all that a rerun
    and `--status` read of it. Shared by many experiments: what changed and each command's status;
    its own: the seconds of each command's last run (None where it has none)."""
    statuses = {command: status for command, status in stat.items() if command != RUNS}
    seconds = [last_run(stat, command).get("seconds") for command in statuses]
    return [changed, changes, statuses], (seconds if any(s is not None for s in seconds) else None)


def _verdict(shared: Any, seconds: Any, commands: Sequence[str], on_change: str,
             rerun_stopped: bool = False) -> Optional[Review]:
    """The verdict an index entry keeps (what `_summary` made); None when the entry is not one."""
    if not (type(shared) is list and len(shared) == 3 and type(shared[0]) is list and type(shared[1]) is list
            and type(shared[2]) is dict):
        return None
    changed, changes, stat = shared
    if not all(type(text) is str for text in [*changed, *changes, *stat.values()]):
        return None
    if seconds is not None and (type(seconds) is not list or len(seconds) != len(stat)):
        return None
    result = Review(start=None, changed=changed, changes=changes, stat=stat, seconds=seconds)
    _decide(result, commands, on_change, rerun_stopped)
    return result


def _read_and_compare(task: Task, templates: Dict[str, Template], root: str, no_subdir: bool,
                      force: bool) -> Review:
    """The task's records read, checked against its params and templates (I1, I2, I5)."""
    notes: List[str] = []
    problems: List[str] = []
    param = _identify(task, root, no_subdir, notes, problems)
    stat = _read(record_path(task.output, STAT, task.name, no_subdir), problems)
    result = Review(start=None, notes=notes, problems=problems, stat=stat)
    if force or isinstance(param, _Unreadable):
        result.unreadable = True
        return result
    result.changed, result.changes = changes(task, templates, param, stat)
    return result


def changes(task: Task, templates: Dict[str, Template], param: Dict[str, Any],
            stat: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """(the finished commands whose config changed, what changed) of a task, from its records (I2)."""
    finished = [c for c in task.commands if stat.get(c) == FINISHED]
    if not (param and finished):
        return [], []
    changed = _value_diff(_own_params(param), task.params)
    if changed:
        return finished, changed
    commands = _template_changes(task, templates, param, stat, finished)
    return commands, [f"template of {c}" for c in commands]
