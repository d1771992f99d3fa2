"""The command line's flags: the parser, in groups by what they are for, and the values' types.

`cli.py` parses with it and dispatches; a Slurm element (`backends/slurm/element.py`) builds the
same parser to read the flags its submission recorded.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from typing import List

from . import __version__
from .errors import EXIT_USAGE

DURATION_RE = re.compile(r"\s*(?:\d+(?:\.\d+)?\s*[dhms]\s*)+\Z|\s*\d+(?:\.\d+)?\s*\Z")
PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


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
    """The flags in groups by what they are for, each help one line (docs/cli.md says more)."""
    parser = _Parser(
        prog="mlrunner", add_help=False,
        description="Run every experiment of a params.yaml sweep on a pool of GPU workers; "
                    "rerun to resume what did not finish.",
        epilog="Single files: copy dist/mlrunner.pyz (python3 build_zipapp.py) to each GPU server and run it "
               "there with python3; for --hosts, run dist/mlrunner-ssh-<platform>.pyz (build_zipapp.py --with-ssh) "
               "on the machine that drives the hosts, which need only python3. Every flag: docs/cli.md.",
        formatter_class=_HelpFormatter)
    running = parser.add_argument_group("running")
    running.add_argument("-y", "--yaml", help="the config file (default: params.yaml)")
    running.add_argument("-o", "--output", default="output", help="root of the experiment directories")
    running.add_argument("-f", "--force", action="store_true", help="rerun commands that already finished")
    running.add_argument("-d", "--debug", action="store_true", help="run the first task only, log on the console, forced")
    running.add_argument("--dry-run", action="store_true", help="print the shell lines a run would start; run nothing")
    running.add_argument("--all", action="store_true", help="with --dry-run: also the finished commands")
    running.add_argument("--fail-fast", action="store_true", help="after a failure, start no new command (exit 1)")
    running.add_argument("--retry", type=positive_int, default=0, metavar="N", help="rerun a failed command up to N times")
    running.add_argument("--no-subdir", action="store_true", help="all experiments in the output root, names in logs")
    running.add_argument("-h", "--help", action="help", help="show this help and exit")
    running.add_argument("--version", action="version", version=f"mlrunner {__version__}")

    choosing = parser.add_argument_group("choosing what runs")
    choosing.add_argument("-t", "--title", help="run only the sweep documents with this _title")
    choosing.add_argument("-c", "--command", nargs="+", help="run only these commands (overrides _cmd)")
    choosing.add_argument("--sample", type=positive_int, metavar="N", help="run N random combinations of each sweep document")
    choosing.add_argument("--sample-seed", type=int, metavar="S", help="seed for --sample, to repeat a draw")
    choosing.add_argument("--max-tasks", type=positive_int, metavar="N",
                          help="refuse a sweep of more combinations (default: 10^7)")
    choosing.add_argument("--no-dedup", action="store_true", help="keep tasks whose params equal an earlier task's")
    choosing.add_argument("--rerun-stopped", action="store_true", help="rerun the experiments that early_stop stopped")

    changed = parser.add_argument_group("changed configs (one of)").add_mutually_exclusive_group()
    changed.add_argument("--rerun-changed", action="store_true", help="rerun finished commands whose config changed")
    changed.add_argument("--keep-changed", action="store_true", help="keep finished results whose config changed")

    long_runs = parser.add_argument_group("long runs")
    long_runs.add_argument("--timeout", type=duration, metavar="DURATION",
                           help="end and fail a command that runs longer (e.g. 2h)")
    long_runs.add_argument("--grace", type=duration, default=10.0, metavar="DURATION",
                           help="on stop, wait this long before SIGKILL")
    long_runs.add_argument("--detach", action="store_true", help="go on in the background; console in -o/mlrunner.log")
    long_runs.add_argument("--stop", action="store_true", help="end the runs in progress under -o, and wait")
    long_runs.add_argument("--follow", nargs="?", const="", metavar="REGEX", help="print running commands' logs as they grow")

    viewing = parser.add_argument_group("viewing")
    viewing.add_argument("--status", action="store_true", help="print every experiment's status; run nothing")
    viewing.add_argument("--examine", action="store_true", help="table the params that differ, metrics and status")
    viewing.add_argument("--format", choices=("tsv", "csv", "markdown", "table"),
                         help="table format of --examine (default: table on a tty)")
    viewing.add_argument("--sort", metavar="KEY", help="with --examine: rows by KEY; -KEY descending")
    viewing.add_argument("--best", nargs="+", metavar=("METRIC", "N"), type=str,
                         help="with --examine: the N (default 10) best rows")
    viewing.add_argument("--mean-over", metavar="PARAM", help="with --examine: mean ± std of each metric over PARAM")
    viewing.add_argument("--provenance", action="store_true", help="with --examine: also commit, host, Python and GPU")
    viewing.add_argument("--report", nargs="?", const="", metavar="FILE",
                         help="write one HTML page (default: <output>/report.html)")

    hosts = parser.add_argument_group("hosts")
    hosts.add_argument("--hosts", help="remote hosts as more workers, e.g. gpu1,alice@gpu2")
    hosts.add_argument("--accept-new-hosts", action="store_true", help="trust and record host keys not yet known")

    slurm = parser.add_argument_group("Slurm")
    slurm.add_argument("--slurm", action="store_true", help="submit the tasks to Slurm as job arrays and return")
    slurm.add_argument("--wait", action="store_true", help="with --slurm: follow the jobs until they end")
    slurm.add_argument("--slurm-element", metavar="MANIFEST", help=argparse.SUPPRESS)  # one array element (S1)

    gpus = parser.add_argument_group("GPUs")
    gpus.add_argument("-r", "--resource", nargs="*", type=resource_value,
                      help="local workers' GPUs (-r 0 1 2,3, auto, or none)")
    return parser
