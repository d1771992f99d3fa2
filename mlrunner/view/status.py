"""`--status`: every experiment of the plan with each command's status (SPEC R9, I2, T3, T13).

The table answers from the config that made the tree (T1): an experiment of the plan with no
records yet is `pending`, a finished command whose config changed since is `changed` (what a
rerun would ask about), a running command shows how long it has run, and the running commands
are listed once more at the end with the last line of their logs, cut to the terminal's width.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..options import Options
from ..run.console import clock
from ..errors import EXIT_OK, UserError
from ..run.provenance import print_code_notes
from ..plan.resume import Review, review
from ..run.state import (CHANGED, ORPHANED, PARAM, RUNNING, STAT, STOPPED, Corrupt, last_run, read_record, set_aside_name,
                    statuses)

PENDING = "pending"  # a command of the plan that has not started in this tree
TAIL_BYTES = 64 * 1024  # how much of a log's end is read for its last line: memory stays bounded
PIPED_WIDTH = 200  # where a log line is cut when stdout is not a terminal and COLUMNS is unset
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|[\x00-\x08\x0b-\x1f\x7f]")

Planned = Tuple[str, Tuple[str, ...], Review]  # an experiment of the plan: name, commands, verdict


def records_under(output: str) -> List[Tuple[str, str]]:
    """(row name, stat path) of every experiment that may be under `output`: its subdirectories'
    `stat` (which may not exist), and the `stat.<name>` files of a --no-subdir run."""
    if not os.path.isdir(output):
        raise UserError(f"no output directory '{output}' (name another with -o)")
    found = []
    with os.scandir(output) as entries:
        for entry in entries:
            if entry.is_dir():
                found.append((entry.name, entry.path + os.sep + STAT))  # os.path.join's result, quicker
            elif entry.name.startswith(STAT + ".") and not set_aside_name(entry.name) and entry.is_file():
                found.append((entry.name[len(STAT) + 1:], entry.path))
    return sorted(found)


def on_change(args: Options) -> str:
    return "rerun" if args.rerun_changed else "keep" if args.keep_changed else "ask"


def planned(args: Options) -> Dict[str, Planned]:
    """stat path -> the experiment of the plan there, from the configs that ran into the tree (T1)
    or `-y`; {} without one. The path is spelt as `records_under` spells it."""
    from ..plan.origin import resolve
    found: Dict[str, Planned] = {}
    for source in resolve(args):
        if os.path.exists(source.path):
            found.update(_planned_by(args, source.path, source.title, source.no_subdir or args.no_subdir))
    return found


def _planned_by(args: Options, path: str, title: Optional[str], no_subdir: bool) -> Dict[str, Planned]:
    from ..plan import config as config_module
    from ..run.state import record_path
    from ..plan.sweep import expand
    try:
        config = config_module.load(path)
        plan = expand(config, config_module.select_sweeps(config, title), args.output, commands=args.command,
                      dedup=not args.no_dedup, no_subdir=no_subdir, max_tasks=args.max_tasks)
    except UserError as error:
        print(f"warning: {error}: --status cannot tell which results changed", file=sys.stderr)
        return {}
    reviews = review(plan, config.templates, args.output, no_subdir=no_subdir, force=args.force,
                     on_change=on_change(args), write_index=False, seconds=True)  # it writes nothing (R9)
    if no_subdir:
        return {record_path(t.output, STAT, t.name, True): (t.name, t.commands, r) for t, r in zip(plan.tasks, reviews)}
    return {t.output + os.sep + STAT: (t.name, t.commands, r) for t, r in zip(plan.tasks, reviews)}


def _read_for_status(path: str) -> Optional[Dict]:
    """An experiment's `stat` (None when it does not parse), with a warning for it or its `param`."""
    param = os.path.join(os.path.dirname(path), PARAM + os.path.basename(path)[len(STAT):])
    try:
        read_record(param)
    except Corrupt as error:
        print(f"warning: {param} does not parse ({error.reason}); a run sets it aside and runs the experiment "
              "again", file=sys.stderr)
    except OSError:
        pass
    try:
        return read_record(path)
    except Corrupt as error:
        print(f"warning: {path} does not parse ({error.reason}); a run sets it aside and runs it again",
              file=sys.stderr)
        return None


def last_line(path: str, limit: int = TAIL_BYTES) -> str:
    """The line a terminal would show last for this log: the last non-blank line, and of a line
    redrawn with carriage returns (a progress bar) its last state. Only the last `limit` bytes are
    read; a line longer than that starts with `…`. Escape sequences and control characters are
    dropped, so that printing it cannot move the cursor or change colours."""
    try:
        with open(path, "rb") as stream:
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(size - limit, 0))
            tail = stream.read(limit)
    except OSError:
        return ""
    partial = b""  # the end of a line whose start is before the bytes read
    if size > limit:
        first = min((i for i in (tail.find(b"\n"), tail.find(b"\r")) if i >= 0), default=len(tail))
        partial, tail = tail[:first], tail[first + 1:]
    for line in reversed(tail.split(b"\n")):
        for state in reversed(line.split(b"\r")):
            text = _shown(state)
            if text:
                return text
    text = _shown(partial)
    return "…" + text if text else ""


def _shown(state: bytes) -> str:
    """A line's text without what a terminal would act on; "" when blank."""
    text = _ESCAPES.sub("", state.decode("utf-8", "replace").replace("\t", " ")).rstrip()
    return text if text.strip() else ""


def fit(text: str, width: int) -> str:
    """`text` in `width` columns: cut, with `…` for what is left out."""
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def output_width() -> int:
    """The terminal's width (read each time: it may have been resized); $COLUMNS, else
    PIPED_WIDTH when stdout is not a terminal. One column is kept free: writing the last one makes
    some terminals wrap."""
    return shutil.get_terminal_size((PIPED_WIDTH + 1, 24)).columns - 1


def print_status(args: Options) -> int:
    """One row per experiment of the plan and of the tree: each command's status and how long it
    ran (R9), `changed` where the config changed since (I2), `pending` where nothing ran yet (T3);
    then the running commands with their logs' last lines (T13), then the counts."""
    records = records_under(args.output)
    plan = planned(args)
    rows: List[Tuple[str, str]] = []
    running: List[Tuple[str, str, float, str]] = []  # name, command, seconds so far, log
    counts: Dict[str, int] = {}
    seen = set()
    now = time.time()
    for name, path in records:
        entry = plan.get(path)
        seen.add(path)
        commands, verdict = (entry[1], entry[2]) if entry else ((), None)
        kept = None  # the index's seconds of each command
        if verdict is not None and not verdict.problems and (verdict.stat or not os.path.exists(path)):
            stat, kept = verdict.stat, verdict.seconds  # the review read both records (or the index vouched for them)
        elif not os.path.exists(path):
            continue  # a directory without a stat that the plan does not know: not an experiment
        else:
            stat = _read_for_status(path)
            if stat is None:
                counts["unreadable"] = counts.get("unreadable", 0) + 1
                rows.append((name, "unreadable record"))
                continue
        rows.append((name, _cells(name, path, stat, kept, commands, verdict, counts, running, now)))
    for path, (name, commands, verdict) in plan.items():
        if path not in seen:  # nothing of it in the tree yet
            rows.append((name, _cells(name, path, {}, None, commands, verdict, counts, running, now)))
    rows.sort()
    width = max((len(name) for name, _ in rows), default=10)
    print(f"{'experiment':<{width}}  commands")
    for name, cells in rows:
        print(f"{name:<{width}}  {cells}")
    _print_running(running)
    print(f"Experiments: {len(rows)}; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print_code_notes(args.output, [path for _, path in records])
    return EXIT_OK


def _cells(name: str, path: str, stat: Dict[str, Any], kept: Optional[List[Any]], commands: Iterable[str],
           verdict: Optional[Review], counts: Dict[str, int], running: List[Tuple[str, str, float, str]],
           now: float) -> str:
    """One experiment's commands, in the order they ran, then those of the plan still to come."""
    cells = []
    known = statuses(stat)
    for position, (command, status) in enumerate(list(known.items()) + [(c, PENDING) for c in commands
                                                                         if c not in known]):
        if verdict is not None and command in verdict.changed:
            status = CHANGED
        counted = ORPHANED if status.startswith(f"{RUNNING} ({ORPHANED}") else status  # R12
        counts[counted] = counts.get(counted, 0) + 1
        if status == PENDING:
            cells.append(f"{command}: {status}")
            continue
        run = last_run(stat, command)
        seconds = kept[position] if kept else run.get("seconds")
        if status == STOPPED:  # early_stop (A2): where the rule stopped it
            run = run or last_run(_read_for_status(path) or {}, command)
            step = (run.get("early_stop") or {}).get("step")
            status += f" at step {step:g}" if isinstance(step, (int, float)) else ""
        if status == RUNNING and isinstance(run.get("start"), (int, float)):
            so_far = max(now - run["start"], 0.0)
            running.append((name, command, so_far, _log_of(path, run)))
            cells.append(f"{command}: {status} ({clock(so_far)} so far)")
            continue
        cells.append(f"{command}: {status}" + (f" ({seconds:.1f}s)" if isinstance(seconds, (int, float)) else ""))
    if verdict is not None and verdict.changed:
        cells.append(f"changed: {'; '.join(verdict.changes)}")
    return ", ".join(cells)


def _log_of(stat_path: str, run: Dict[str, Any]) -> str:
    """The run's log, found beside its `stat` by name: the path it records is spelt from the
    runner's working directory, which need not be ours."""
    log = run.get("log")
    return os.path.join(os.path.dirname(stat_path), os.path.basename(log)) if isinstance(log, str) else ""


def _print_running(running: List[Tuple[str, str, float, str]]) -> None:
    """`Running now: N`, then per command its elapsed time and its log's last line (T13)."""
    if not running:
        return
    width = output_width()
    print(f"Running now: {len(running)}")
    names = max(len(name) for name, *_ in running)
    commands = max(len(command) for _, command, *_ in running)
    for name, command, seconds, log in sorted(running):
        head = f"  {name:<{names}}  {command:<{commands}}  {clock(seconds)}"
        text = last_line(log) if log else ""
        print(fit(f"{head}  {text}" if text else head, width))
