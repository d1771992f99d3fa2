"""Printing that runs nothing: `--dry-run`, `--status` and `--examine`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Iterable, List, Optional, Tuple

from .config import Config, close_placeholder
from .errors import EXIT_OK, UserError
from .resume import Review, review
from .state import (CHANGED, FINISHED, ORPHANED, PARAM, RUNNING, STAT, STOPPED, Corrupt, last_run, read_record,
                    record_path, set_aside_name, statuses)
from .sweep import Plan
from .template import shell_line


def orphans_line(orphans: Iterable[str], config: Optional[Config] = None) -> str:
    """`Orphan params: {...}`, or "" when there are none (T7): a line only when it says something."""
    return f"Orphan params: {format_orphans(orphans, config)}" if orphans else ""


def format_orphans(orphans: Iterable[str], config: Optional[Config] = None) -> str:
    """Like a Python set, sorted so that the line is the same on every run; with `config`, a
    typo of a defaulted placeholder (`lrr` for `lr`) gets "(did you mean 'lr'?)"."""
    names = sorted(orphans)
    text = "{" + ", ".join(repr(n) for n in names) + "}" if names else "set()"
    guesses = [f"'{guess}'" for guess in (close_placeholder(n, config) for n in names if config) if guess]
    return text + (f" (did you mean {' or '.join(dict.fromkeys(guesses))}?)" if guesses else "")


def _on_change(args: argparse.Namespace) -> str:
    return "rerun" if args.rerun_changed else "keep" if args.keep_changed else "ask"


def _reviews(plan: Plan, config: Config, args: argparse.Namespace) -> List[Review]:
    return review(plan, config.templates, args.output, no_subdir=args.no_subdir, force=args.force,
                  on_change=_on_change(args), write_index=False,  # a dry run writes nothing (R9)
                  rerun_stopped=getattr(args, "rerun_stopped", False))


def print_dry_run(plan: Plan, config: Config, resources: Optional[List[str]], run_time: str,
                  args: argparse.Namespace) -> int:
    """Print the exact lines a run would start now (T2), the tasks going to the workers in turn as
    they would first; `--all` adds the finished commands, each marked as a comment.

    A task's header says when a finished command's config changed (I2; it is listed, since a run
    asks about it) and what a run would do about a record that does not parse (I5).
    """
    if resources is None or resources == ["auto"]:
        from .workers import resolve_resources
        resources = resolve_resources(None, None)
    resources = resources or [""]  # `-r` alone: hosts only, which a dry run does not contact
    reviews = _reviews(plan, config, args)
    write = sys.stdout.write
    orphans = orphans_line(plan.orphans, config)
    if orphans:
        print(orphans)
    if config.early_stop is not None:
        print(config.early_stop.describe())
    to_run = 0
    for task, verdict in zip(plan.tasks, reviews):
        start = len(task.commands) if verdict.start is None else verdict.start
        if start == len(task.commands) and not (args.all or verdict.changed):
            continue
        resource = resources[to_run % len(resources)] if start < len(task.commands) else ""
        where = f"gpu: {resource or 'cpu'}" if start < len(task.commands) else FINISHED
        header = f"# {task.index + 1}/{len(plan.tasks)} {task.output} ({where})"
        if verdict.changed:
            header += f" {CHANGED}: {', '.join(verdict.changed)}: {'; '.join(verdict.changes)}"
        lines = [header] + [f"# {note}" for note in verdict.notes + verdict.problems]
        rendered = task.render(config.templates, run_time, resource, "localhost")
        for position, (command, line) in enumerate(rendered.items()):
            text = shell_line(line, resource, task.log(command, run_time, args.no_subdir), args.debug)
            if position >= start:
                lines.append(text)
            elif args.all:
                mark = CHANGED if command in verdict.changed else FINISHED
                lines.append(f"# {mark}: " + text.replace("\n", "\n# "))
        to_run += start < len(task.commands)
        write("\n".join(lines) + "\n")
    commands = sum(len(t.commands) - r.start for t, r in zip(plan.tasks, reviews) if r.start is not None)
    print(f"Tasks: {len(plan.tasks)}, commands to run: {commands}")  # the count a run prints
    if plan.duplicates:
        print(f"Duplicates skipped: {plan.duplicates}")
    changed = sum(1 for verdict in reviews if verdict.changed)
    if changed:
        print(f"Changed since they finished: {changed} experiment(s); a run needs --rerun-changed or --keep-changed")
    try:
        present = set(os.listdir(args.output))
    except OSError:
        present = set()
    _print_code_notes(args.output, [record_path(t.output, STAT, t.name, args.no_subdir) for t in plan.tasks
                                    if os.path.basename(record_path("", STAT, t.name, args.no_subdir)) in present
                                    or t.name in present])
    return EXIT_OK


def _print_code_notes(output: str, stat_paths: Iterable[str]) -> None:
    """P1: the finished experiments whose code is not the work tree's now, one line per code."""
    from .provenance import code_notes, code_state
    now = code_state(".", exclude=[output])
    if not now.known:
        return
    stats = []
    for path in stat_paths:
        try:
            stats.append(read_record(path))
        except (Corrupt, OSError):
            pass  # --status warns about it on its own
    for line in code_notes(stats, now):
        print(line)


def _records(output: str) -> List[Tuple[str, str]]:
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


def _changes_by_stat(args: argparse.Namespace) -> Dict[str, Review]:
    """stat path -> review, from the configs that ran into the tree (T1) or `-y` (I2 in --status);
    {} without one."""
    from .origin import resolve
    changes: Dict[str, Review] = {}
    for source in resolve(args):
        if os.path.exists(source.path):
            changes.update(_changes_of(args, source.path, source.title, source.no_subdir or args.no_subdir))
    return changes


def _changes_of(args: argparse.Namespace, path: str, title: Optional[str], no_subdir: bool) -> Dict[str, Review]:
    """stat path -> review for one config file."""
    from . import config as config_module
    from .state import record_path
    from .sweep import expand
    try:
        config = config_module.load(path)
        plan = expand(config, config_module.select_sweeps(config, title), args.output, commands=args.command,
                      dedup=not args.no_dedup, no_subdir=no_subdir, max_tasks=args.max_tasks)
    except UserError as error:
        print(f"warning: {error}: --status cannot tell which results changed", file=sys.stderr)
        return {}
    reviews = review(plan, config.templates, args.output, no_subdir=no_subdir, force=args.force,
                     on_change=_on_change(args), write_index=False, seconds=True)  # it writes nothing (R9)
    if no_subdir:
        return {record_path(t.output, STAT, t.name, True): r for t, r in zip(plan.tasks, reviews)}
    return {t.output + os.sep + STAT: r for t, r in zip(plan.tasks, reviews)}  # the path as _records makes it


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


def print_status(args: argparse.Namespace) -> int:
    """One row per experiment: each command's status and how long it ran (R9 --status); a finished
    command whose params or template changed since shows as `changed` (I2)."""
    records = _records(args.output)
    changes = _changes_by_stat(args)
    rows = []
    counts: Dict[str, int] = {}
    for name, path in records:
        verdict = changes.get(path)
        kept = None  # the index's seconds of each command
        if verdict is not None and verdict.stat and not verdict.problems:
            stat, kept = verdict.stat, verdict.seconds  # the review read both records (or the index vouched for them)
        elif not os.path.exists(path):
            continue  # a directory without a stat: not an experiment, or one not started yet
        else:
            stat = _read_for_status(path)
            if stat is None:
                counts["unreadable"] = counts.get("unreadable", 0) + 1
                rows.append((name, "unreadable record"))
                continue
        cells = []
        for position, (command, status) in enumerate(statuses(stat).items()):
            if verdict is not None and command in verdict.changed:
                status = CHANGED
            counted = ORPHANED if status.startswith(f"{RUNNING} ({ORPHANED}") else status
            counts[counted] = counts.get(counted, 0) + 1
            seconds = kept[position] if kept else last_run(stat, command).get("seconds")
            if status == STOPPED:  # early_stop (A2): where the rule stopped it
                run = last_run(stat, command) or last_run(_read_for_status(path) or {}, command)
                step = (run.get("early_stop") or {}).get("step")
                status += f" at step {step:g}" if isinstance(step, (int, float)) else ""
            cells.append(f"{command}: {status}" + (f" ({seconds:.1f}s)" if isinstance(seconds, (int, float)) else ""))
        if verdict is not None and verdict.changed:
            cells.append(f"changed: {'; '.join(verdict.changes)}")
        rows.append((name, ", ".join(cells)))
    width = max((len(name) for name, _ in rows), default=10)
    print(f"{'experiment':<{width}}  commands")
    for name, cells in rows:
        print(f"{name:<{width}}  {cells}")
    print(f"Experiments: {len(rows)}; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    _print_code_notes(args.output, [path for _, path in records])
    return EXIT_OK


def print_examine(metrics: Dict[str, Dict[str, str]], output: str, fmt: str, provenance: bool = False) -> int:
    """The no-code metrics table of E6, with the `metric:` entries of the tree's config (T1); with
    `provenance`, what made each result (P1)."""
    from .examine.metrics import examine_table
    if not os.path.isdir(output):
        raise UserError(f"no output directory '{output}' (name another with -o)")
    print(examine_table(output, metrics, fmt, provenance=provenance), end="")
    return EXIT_OK
