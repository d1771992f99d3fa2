"""Printing that runs nothing: `--dry-run`, `--status` and `--examine`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable, List, Optional

from .config import Config, close_placeholder
from .errors import EXIT_OK, UserError
from .state import RUNS, STAT, read_yaml, statuses
from .sweep import Plan
from .template import shell_line


def format_orphans(orphans: Iterable[str], config: Optional[Config] = None) -> str:
    """Like a Python set, sorted so that the line is the same on every run; with `config`, a
    typo of a defaulted placeholder (`lrr` for `lr`) gets "(did you mean 'lr'?)"."""
    names = sorted(orphans)
    text = "{" + ", ".join(repr(n) for n in names) + "}" if names else "set()"
    guesses = [f"'{guess}'" for guess in (close_placeholder(n, config) for n in names if config) if guess]
    return text + (f" (did you mean {' or '.join(dict.fromkeys(guesses))}?)" if guesses else "")


def print_dry_run(plan: Plan, config: Config, resources: Optional[List[str]], run_time: str,
                  args: argparse.Namespace) -> int:
    """Print the exact lines a run would start; task i goes to worker i mod n, as it would first."""
    if resources is None or resources == ["auto"]:
        from .workers import resolve_resources
        resources = resolve_resources(None, None)
    resources = resources or [""]  # `-r` alone: hosts only, which a dry run does not contact
    write = sys.stdout.write
    print(f"Orphan params: {format_orphans(plan.orphans, config)}")
    for task in plan.tasks:
        resource = resources[task.index % len(resources)]
        lines = [f"# {task.index + 1}/{len(plan.tasks)} {task.output} (gpu: {resource or 'cpu'})"]
        for command, line in task.render(config.templates, run_time, resource, "localhost").items():
            lines.append(shell_line(line, resource, task.log(command, run_time, args.no_subdir), args.debug))
        write("\n".join(lines) + "\n")
    print(f"Tasks: {len(plan.tasks)}, commands to run: {plan.command_count}")
    if plan.duplicates:
        print(f"Duplicates skipped: {plan.duplicates}")
    return EXIT_OK


def _experiments(output: str) -> List[str]:
    if not os.path.isdir(output):
        raise UserError(f"no output directory '{output}' (name another with -o)")
    with os.scandir(output) as entries:
        return sorted(e.path for e in entries if e.is_dir() and os.path.exists(os.path.join(e.path, STAT)))


def print_status(output: str) -> int:
    """One row per experiment: each command's status and how long it ran (R9 --status)."""
    rows = []
    counts: dict = {}
    for directory in _experiments(output) + ([output] if os.path.exists(os.path.join(output, STAT)) else []):
        stat = read_yaml(os.path.join(directory, STAT))
        runs = stat.get(RUNS) or {}
        cells = []
        for command, status in statuses(stat).items():
            counts[status] = counts.get(status, 0) + 1
            seconds = (runs.get(command) or {}).get("seconds")
            cells.append(f"{command}: {status}" + (f" ({seconds:.1f}s)" if isinstance(seconds, (int, float)) else ""))
        rows.append((os.path.relpath(directory, output), ", ".join(cells)))
    width = max((len(name) for name, _ in rows), default=10)
    print(f"{'experiment':<{width}}  commands")
    for name, cells in rows:
        print(f"{name:<{width}}  {cells}")
    print(f"Experiments: {len(rows)}; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return EXIT_OK


def print_examine(config: Config, output: str, fmt: str) -> int:
    """The no-code metrics table of E6."""
    from .examine.metrics import examine_table
    if not os.path.isdir(output):
        raise UserError(f"no output directory '{output}' (name another with -o)")
    print(examine_table(output, config.metrics, fmt), end="")
    return EXIT_OK
