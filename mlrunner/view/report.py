"""`--dry-run`: what a run would start now, and the lines about a plan that a run prints too."""

from __future__ import annotations

import os
import sys
from typing import Iterable, List, Optional

from ..options import Options
from ..plan.config import Config, close_placeholder
from ..errors import EXIT_OK
from ..run.provenance import print_code_notes
from ..plan.resume import Review, review
from .status import on_change
from ..run.state import CHANGED, FINISHED, STAT, record_path
from ..plan.sweep import Plan
from ..plan.template import shell_line


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


def _reviews(plan: Plan, config: Config, args: Options) -> List[Review]:
    return review(plan, config.templates, args.output, no_subdir=args.no_subdir, force=args.force,
                  on_change=on_change(args), write_index=False,  # a dry run writes nothing (R9)
                  rerun_stopped=args.rerun_stopped)


def print_dry_run(plan: Plan, config: Config, resources: Optional[List[str]], run_time: str,
                  args: Options) -> int:
    """Print the exact lines a run would start now (T2), the tasks going to the workers in turn as
    they would first; `--all` adds the finished commands, each marked as a comment.

    A task's header says when a finished command's config changed (I2; it is listed, since a run
    asks about it) and what a run would do about a record that does not parse (I5).
    """
    if resources is None or resources == ["auto"]:
        from ..run.workers import resolve_resources
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
    print_code_notes(args.output, [record_path(t.output, STAT, t.name, args.no_subdir) for t in plan.tasks
                                    if os.path.basename(record_path("", STAT, t.name, args.no_subdir)) in present
                                    or t.name in present])
    return EXIT_OK
