"""Command line: parse the flags, then hand over to planning, running or reporting (SPEC R9)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import tempfile
import sys
from dataclasses import replace
from datetime import datetime
from typing import Iterator, List, Optional

from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError
from .flags import build_parser
from .options import Options
from .run.signals import EXIT_BY_SIGNAL, RECORDER, Interrupted

BEST_ROWS = 10  # rows `--examine --best METRIC` shows when no N is given


def _command(args: Options) -> int:
    from .plan import config as config_module
    from .plan.sweep import expand

    args = replace(args, yaml=args.yaml or "params.yaml")
    config = config_module.load(args.yaml)
    RECORDER.checkpoint()
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    if args.hosts or config.hosts:  # check host settings before anything starts (C10)
        from .plan import hosts
        hosts.select(args.hosts, hosts.parse_config(config.hosts, config.path), hosts.parse_sync(config.sync, config.path))
    if config.early_stop is not None:  # A1: refused where no rule can see the peers' values
        from .run.early_stop.settings import refuse_backend
        refusal = refuse_backend(config.early_stop, args.slurm or config.slurm is not None)
        if refusal:
            raise UserError(refusal, args.yaml)
    if config.code is not None:  # P2: a git work tree to copy, and an output tree the snapshot can reach
        from .run.snapshot import check
        check(args.output)
    if args.wait and not (args.slurm or config.slurm is not None):
        raise UserError("--wait follows Slurm jobs: it needs --slurm or 'slurm:' in the file (a local run waits anyway)")
    for command in args.command or []:
        if command not in config.templates:
            raise UserError(f"-c: unknown command '{command}' (commands: {', '.join(config.templates)})", args.yaml)
    sweeps = config_module.select_sweeps(config, args.title)
    plan = expand(config, sweeps, args.output, commands=args.command, sample=args.sample,
                  sample_seed=args.sample_seed, dedup=not args.no_dedup, no_subdir=args.no_subdir,
                  lazy=not (args.debug or args.dry_run), max_tasks=args.max_tasks)
    if args.debug:
        plan.tasks = plan.tasks[:1]
        plan.total = len(plan.tasks)
        args = replace(args, force=True)
    run_time = datetime.now().strftime("%Y%m%d.%H%M%S")
    from .run.workers import check_resources
    resources = check_resources(args.resource, config.resources)
    RECORDER.checkpoint()
    if args.dry_run:
        from .view.report import print_dry_run
        return print_dry_run(plan, config, resources, run_time, args)
    check_output_dir(args.output)
    from .run.runner import run
    return run(plan, config, run_time, args)


def check_output_dir(output: str) -> None:
    """A run must be able to write under `output`: say so in one line before anything starts.

    The probe creates and removes a scratch directory, so it leaves nothing behind and sees what
    the kernel would refuse (a file in the way, /proc, no write permission) as the run would.
    """
    existing = os.path.abspath(output)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == os.path.abspath(output) else f"cannot be created: {existing} is a file"
        raise UserError(f"-o {output}: {what}; name an output directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mlrunner-probe-", dir=existing))
    except OSError as error:
        raise UserError(f"-o {output}: cannot create files in {existing} ({error.strerror})") from None


def _report(args: Options) -> int:
    """`--report`: the records under -o, with the metrics of the config file when it is there."""
    from .view.html_report import write_report
    from .plan.origin import metrics_of, resolve

    metrics = metrics_of(resolve(args), missing_ok=True)
    path = write_report(args.output, args.report or os.path.join(args.output, "report.html"), metrics)
    print(f"Report: {path}")
    return EXIT_OK


def _check_long_run_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--detach, --stop and --follow each go alone: with another mode they would mean two things (D1-D4)."""
    mine = {"--detach": args.detach, "--stop": args.stop, "--follow": args.follow is not None}
    others = {"-d": args.debug, "--dry-run": args.dry_run, "--status": args.status, "--examine": args.examine,
              "--report": getattr(args, "report", None) is not None}
    chosen = [flag for flag, on in mine.items() if on]
    clashes = [flag for flag, on in others.items() if on]
    if chosen and len(chosen) + len(clashes) > 1:
        parser.error(f"{chosen[0]} cannot go with {', '.join((chosen[1:] + clashes))}")


def _check_examine_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--sort, --best and --mean-over shape the --examine table (T4, T12); `--best M N` gets N checked."""
    given = [flag for flag, value in (("--sort", args.sort), ("--best", args.best), ("--mean-over", args.mean_over))
             if value is not None]
    if given and not args.examine:
        parser.error(f"{given[0]} goes with --examine")
    if args.sort is not None:
        args.sort = args.sort.strip()
    if args.best is not None:
        args.best = [word.strip() for word in args.best]
        if len(args.best) > 2 or (len(args.best) == 2 and not (args.best[1].isdigit() and int(args.best[1]) > 0)):
            parser.error(f"--best takes a metric and a count of rows, e.g. --best loss 5, not {' '.join(args.best)}")
        args.best = (args.best[0], int(args.best[1]) if len(args.best) == 2 else BEST_ROWS)


@contextlib.contextmanager
def _planning() -> Iterator[None]:
    """No garbage collector while the config, the plan and the records are read: they make
    10^5-10^6 objects that live to the end and form no cycles, and the collector's passes over
    them took a third of a rerun's time. A run turns it back on, with those objects frozen,
    before its first command (runner.py); --follow and --stop keep it throughout."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def main(argv: Optional[List[str]] = None) -> int:
    installed_here = RECORDER.install()  # False when __main__ did it; a signal from now on is recorded (R10)
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_long_run_flags(parser, args)
    if args.all and not args.dry_run:
        parser.error("--all goes with --dry-run (it lists the finished commands too)")
    _check_examine_flags(parser, args)
    options = Options.from_flags(args)
    try:
        if not _runs_commands(options):
            RECORDER.release()  # these modes stop on Ctrl-C as KeyboardInterrupt, as before
        if options.slurm_element:
            from .backends.slurm.element import run_element
            return run_element(options.slurm_element)
        if options.stop:
            from .run.stop import stop
            return stop(options.output)
        if options.follow is not None:
            from .view.follow import follow
            return follow(options.output, options.follow)
        if options.status:
            from .view.status import print_status
            from .run.runs import print_runs
            print_runs(options.output)
            with _planning():
                return print_status(options)
        if options.report is not None:
            return _report(options)
        if options.examine:
            from .examine.table import print_examine
            with _planning():
                return print_examine(options)
        with _planning():
            return _command(options)
    except UserError as error:
        print(error if error.path else f"mlrunner: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `mlrunner --dry-run | head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:  # in a mode that stops on Ctrl-C as usual
        print("mlrunner: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Interrupted as signalled:  # before any command started (reading, expanding, connecting)
        with contextlib.suppress(OSError):
            print(f"mlrunner: {signalled}: stopped before any command started", file=sys.stderr)
        return EXIT_BY_SIGNAL[signalled.number]
    finally:
        if installed_here:  # called from Python code: its own handlers come back
            RECORDER.release(quiet=True)


def _runs_commands(args: Options) -> bool:
    """Does this invocation start commands (a run, a Slurm element), where signals are recorded (R10)?"""
    return not (args.stop or args.follow is not None or args.status or args.report is not None or args.examine
                or args.dry_run)
