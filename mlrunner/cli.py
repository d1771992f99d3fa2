"""Command line: parse the flags, then hand over to planning, running or reporting (SPEC R9)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import os
import re
import tempfile
import sys
from datetime import datetime
from typing import Iterator, List, Optional

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError
from .run.signals import EXIT_BY_SIGNAL, RECORDER, Interrupted

DURATION_RE = re.compile(r"\s*(?:\d+(?:\.\d+)?\s*[dhms]\s*)+\Z|\s*\d+(?:\.\d+)?\s*\Z")
PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
BEST_ROWS = 10  # rows `--examine --best METRIC` shows when no N is given


def duration(text: str) -> float:
    """`90`, `90s`, `90m`, `2h`, `1d`, `1h30m`, `1h 30m` -> seconds; units at most once, largest first."""
    parts = PART_RE.findall(text) if DURATION_RE.match(text) else []
    units = [unit for _, unit in parts]
    seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
    if not parts or seconds <= 0 or units != sorted(set(units), key="dhms".find):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 90s, 90m, 2h, 1h30m)")
    return seconds


def resource_value(text: str) -> str:
    """A `-r` value: a GPU id (G11) or `auto`; `-r gpu0` is refused before anything starts."""
    from .run.gpus import GPU_ID_HINT, gpu_id

    checked = "auto" if text == "auto" else gpu_id(text)
    if checked is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU id ({GPU_ID_HINT}) or auto")
    return checked


def positive_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a default only where there is one worth reading: never `(default: None)`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _signed_keys(words: List[str]) -> List[str]:
    """`--sort -loss` and `--best -acc 3`: argparse would take `-loss` for a flag, but not ` -loss`
    (`_check_examine_flags` strips the space)."""
    return [" " + word if previous in ("--sort", "--best") and re.match(r"-[^-\d]", word) else word
            for previous, word in zip([""] + words, words)]


class _Parser(argparse.ArgumentParser):
    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        """`-dry-run` would read as `-d -r y-run` and run: a single-dash word that is a long option
        without one of its dashes is refused (G11)."""
        words = list(sys.argv[1:] if args is None else args)
        for word in words:
            if word == "--":
                break
            name = word.split("=")[0]
            if re.match(r"-[a-z][a-z-]+\Z", name) and "-" + name in self._option_string_actions:
                self.error(f"{word}: long options take two dashes: did you mean -{word}?")
        return super().parse_known_args(_signed_keys(words), namespace)

    def error(self, message: str) -> None:  # one line, exit 2 (R4), no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: {message}{self._hint(message)} (see --help)\n")

    def _hint(self, message: str) -> str:
        """`--dryrun` -> did you mean --dry-run?; `mlrunner other.yaml` -> use -y other.yaml."""
        if not message.startswith("unrecognized arguments: "):
            return ""
        hints = []
        for word in message[len("unrecognized arguments: "):].split():
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=")[0], self._option_string_actions, n=1)
                hints += [f"did you mean {close[0]}?"] if close else []
            elif not word.startswith("-") and (os.path.isfile(word) or word.endswith((".yaml", ".yml"))):
                hints.append(f"to read {word}, use -y {word}")
        return f"; {'; '.join(hints)}" if hints else ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlrunner",
        description="Run every experiment of a params.yaml sweep on a pool of GPU workers; "
                    "rerun to resume what did not finish.",
        epilog="Single files: copy dist/mlrunner.pyz (python3 build_zipapp.py) to each GPU server and run it "
               "there with python3; for --hosts, run dist/mlrunner-ssh-<platform>.pyz (build_zipapp.py --with-ssh) "
               "on the machine that drives the hosts, which need only python3.",
        formatter_class=_HelpFormatter)
    parser.add_argument("-y", "--yaml", help="the config file (default: params.yaml); without -y, --status, "
                                             "--examine and --report read the one that ran into -o")
    parser.add_argument("-o", "--output", default="output", help="output root: one directory per experiment")
    parser.add_argument("-t", "--title", help="run only the sweep documents with this _title")
    parser.add_argument("-c", "--command", nargs="+", help="run only these commands (overrides _cmd)")
    parser.add_argument("-r", "--resource", nargs="*", type=resource_value,
                        help="workers' CUDA_VISIBLE_DEVICES, e.g. `-r 0 1 2,3`, or `-r auto` (overrides 'resource'); "
                             "`-r` alone: no local worker, hosts only")
    parser.add_argument("-f", "--force", action="store_true", help="rerun commands that already finished")
    changed = parser.add_mutually_exclusive_group()
    changed.add_argument("--rerun-changed", action="store_true",
                         help="rerun finished commands whose params or template changed (and their tasks' later ones)")
    changed.add_argument("--keep-changed", action="store_true",
                         help="keep the results of finished commands whose params or template changed")
    parser.add_argument("--rerun-stopped", action="store_true",
                        help="rerun experiments that the early_stop rule stopped (a rerun leaves them stopped)")
    parser.add_argument("--fail-fast", action="store_true",
                        help="after the first failure start no new command; running ones finish (exit 1)")
    parser.add_argument("-d", "--debug", action="store_true",
                        help="run the first task only, show its log on the console, force")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the shell lines a run would start now; run and write nothing")
    parser.add_argument("--all", action="store_true", help="with --dry-run: also the finished commands, marked")
    parser.add_argument("--sample", type=positive_int, metavar="N",
                        help="run N random combinations of each sweep document")
    parser.add_argument("--sample-seed", type=int, metavar="S", help="seed for --sample, to repeat a draw")
    parser.add_argument("--max-tasks", type=positive_int, metavar="N",
                        help="refuse a sweep of more combinations, counted before any is made (default: 10^7)")
    parser.add_argument("--no-dedup", action="store_true", help="keep tasks whose params equal an earlier task's")
    parser.add_argument("--no-subdir", action="store_true",
                        help="put every experiment in the output root; logs get the experiment name")
    parser.add_argument("--retry", type=positive_int, default=0, metavar="N", help="rerun a failed command up to N times")
    parser.add_argument("--timeout", type=duration, metavar="DURATION",
                        help="end a command that runs longer (e.g. 90m, 2h) and mark it failed")
    parser.add_argument("--grace", type=duration, default=10.0, metavar="DURATION",
                        help="after SIGTERM, wait this long before SIGKILL")
    parser.add_argument("--status", action="store_true", help="print every experiment's command statuses; run nothing")
    parser.add_argument("--detach", action="store_true",
                        help="after every check, go on in the background (immune to the terminal closing), "
                             "the console in <output>/mlrunner.log")
    parser.add_argument("--stop", action="store_true",
                        help="end the runs in progress under -o (as SIGTERM) and wait, at most their grace + 5s; "
                             "exit 1 when a run's record is not proven to be its run, or a run did not end")
    parser.add_argument("--follow", nargs="?", const="", metavar="REGEX",
                        help="print the running commands' logs under -o as they grow, tagged '<experiment> <command>', "
                             "until the runs end; REGEX selects experiments")
    parser.add_argument("--examine", action="store_true",
                        help="print the params that differ, the 'metric' values and the status of every experiment")
    parser.add_argument("--format", choices=("tsv", "csv", "markdown", "table"),
                        help="table format for --examine (default: an aligned table on a terminal, tsv piped)")
    parser.add_argument("--sort", metavar="KEY", help="with --examine: rows by this column; -KEY descending")
    parser.add_argument("--best", nargs="+", metavar=("METRIC", "N"), type=str,
                        help="with --examine: the N (default 10) best rows by METRIC: the lowest first, -METRIC the "
                             "highest, early_stop's mode for its own metric")
    parser.add_argument("--mean-over", metavar="PARAM",
                        help="with --examine: mean ± std of each metric over PARAM, for experiments equal in the "
                             "other params (n: how many)")
    parser.add_argument("--provenance", action="store_true",
                        help="with --examine: also the git commit, changes, host, Python and GPU of each result")
    parser.add_argument("--report", nargs="?", const="", metavar="FILE",
                        help="write one HTML file (default <output>/report.html) with a timeline of the workers, "
                             "the results table, metric plots and failures; run nothing")
    parser.add_argument("--hosts", help="remote hosts whose GPUs are more workers, e.g. gpu1,alice@gpu2:2222 "
                                        "(needs paramiko, or the mlrunner-ssh-*.pyz; python3 on each host)")
    parser.add_argument("--accept-new-hosts", action="store_true",
                        help="trust and record host keys not yet in ~/.ssh/known_hosts (never changed ones)")
    parser.add_argument("--slurm", action="store_true",
                        help="submit the tasks to Slurm as job arrays (the file's 'slurm:' settings, or defaults) "
                             "and return; rerun to resubmit what did not finish")
    parser.add_argument("--wait", action="store_true", help="with Slurm: follow the jobs on the console until they end")
    parser.add_argument("--slurm-element", metavar="MANIFEST", help=argparse.SUPPRESS)  # one array element (S1)
    parser.add_argument("--version", action="version", version=f"mlrunner {__version__}")
    return parser


def _command(args: argparse.Namespace) -> int:
    from .plan import config as config_module
    from .plan.sweep import expand

    args.yaml = args.yaml or "params.yaml"
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
        args.force = True
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


def _report(args: argparse.Namespace) -> int:
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
    try:
        if not _runs_commands(args):
            RECORDER.release()  # these modes stop on Ctrl-C as KeyboardInterrupt, as before
        if args.slurm_element:
            from .backends.slurm.element import run_element
            return run_element(args.slurm_element)
        if args.stop:
            from .run.stop import stop
            return stop(args.output)
        if args.follow is not None:
            from .view.follow import follow
            return follow(args.output, args.follow)
        if args.status:
            from .view.status import print_status
            from .run.runs import print_runs
            print_runs(args.output)
            with _planning():
                return print_status(args)
        if args.report is not None:
            return _report(args)
        if args.examine:
            from .examine.table import print_examine
            with _planning():
                return print_examine(args)
        with _planning():
            return _command(args)
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


def _runs_commands(args: argparse.Namespace) -> bool:
    """Does this invocation start commands (a run, a Slurm element), where signals are recorded (R10)?"""
    return not (args.stop or args.follow is not None or args.status or args.report is not None or args.examine
                or args.dry_run)
