"""What the records under an output root say happened: one row per experiment, one run per
command run (SPEC V2), read from `param` and `stat` as the runner wrote them, old shapes included.

The HTML report draws these; they are plain data, so that drawing stays a pure function.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import UserError
from ..examine.logs import MAX_POINTS, points_per_curve, read_series
from ..examine.metrics import compile_metrics, read_metric
from ..run.processes import owner_alive
from ..run.state import orphan
from ..run.provenance import recorded
from ..run.state import Corrupt, gpu_mib, read_record, runs_of, set_aside_name

RUN_TIME = re.compile(r"\.(\d{8}\.\d{6})(?=\.|$)")  # in `log.<cmd>.<time>[.<name>][.retryN]`
TAIL_LINES = 20  # of each failed command's log
NOT_FAILURES = ("finished", "skipped", "running", "interrupted", "changed", "pending", "stopped")


@dataclass
class Run:
    """One run of one command, as a bar of the timeline."""

    experiment: str
    command: str
    worker: str
    start: float
    end: float
    status: str
    began: str = ""  # when the mlrunner that ran it began (its log's name says), "" when unknown (T9)


@dataclass
class Row:
    """One experiment, as a row of the results table."""

    name: str
    params: Dict[str, Any]
    status: str
    seconds: Optional[float]
    logs: Dict[str, str] = field(default_factory=dict)  # command -> log path of its newest run
    metrics: Dict[str, Any] = field(default_factory=dict)
    failures: List[Tuple[str, str, str]] = field(default_factory=list)  # (command, status, log path)
    code: Dict[str, Any] = field(default_factory=dict)  # what made its newest run (P1): provenance.recorded
    gpu_mib: Optional[int] = None  # the peak GPU memory its commands were seen to take (G12)
    series: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)  # metric -> (step, value) (T13)
    stops: Dict[str, Optional[float]] = field(default_factory=dict)  # command early_stop stopped -> at step (A2)


def number(value: Any) -> Optional[float]:
    """A real number (not a bool) as a float, else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _epoch(text: Any) -> Optional[float]:
    """The old records' `started: '2026-11-28 04:50:01'` (local time) as epoch seconds."""
    try:
        return time.mktime(time.strptime(str(text), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def _read(path: str) -> Optional[Dict[str, Any]]:
    """A record, {} when missing, None when it does not parse (the report says `unreadable`)."""
    try:
        return read_record(path)
    except (Corrupt, OSError):
        return None


def _experiment(directory: str, name: str, now: float, compiled: Mapping[str, Tuple[str, Any]],
                shared: bool = False, steps: Optional[Mapping[str, Any]] = None, size: int = MAX_POINTS
                ) -> Tuple[Row, List[Run]]:
    """One experiment's row and runs; `shared`: its records are `stat.<name>`/`param.<name>` in the
    output root, beside the other experiments' (--no-subdir); `steps`: metric -> its step regex,
    for the metrics that are series, each kept to `size` points."""
    suffix = f".{name}" if shared else ""
    stat = _read(os.path.join(directory, "stat" + suffix))
    params = {k: v for k, v in (_read(os.path.join(directory, "param" + suffix)) or {}).items()
              if not str(k).startswith("_")}
    if stat is None:
        return Row(name, params, "unreadable", None), []
    status_of = {str(k): str(v) for k, v in stat.items() if not str(k).startswith("_")}
    runs: List[Run] = []
    row = Row(name, params, "pending", None, code=recorded(stat))
    total = 0.0
    for command, status in status_of.items():
        history = runs_of(stat, command)
        last = history[-1] if history else {}
        if status == "running" and not owner_alive(last) and orphan(last) is None:
            status = status_of[command] = "interrupted"  # its runner is gone, as --status says (R6, R12)
        for position, run in enumerate(history):
            start = number(run.get("start")) or _epoch(run.get("started"))
            seconds = number(run.get("seconds"))
            end = number(run.get("end")) or (start + seconds if start is not None and seconds is not None else None)
            last = position == len(history) - 1
            run_status = status if last else str(run.get("status") or "")
            if start is not None:
                began = RUN_TIME.search(os.path.basename(str(run.get("log") or "")))
                runs.append(Run(name, command, str(run.get("worker") or "?"), start,
                                end if end is not None else (now if run_status == "running" else start), run_status,
                                began.group(1) if began else ""))
            if last:
                total += seconds or 0.0
                if run.get("log"):
                    row.logs[command] = os.path.join(directory, os.path.basename(str(run["log"])))
        if command not in row.logs:
            logs = sorted(n for n in os.listdir(directory) if n.startswith(f"log.{command}.") and n.endswith(suffix))
            if logs:
                row.logs[command] = os.path.join(directory, logs[-1])
        if status == "stopped":
            decided = history[-1].get("early_stop") if history else None
            row.stops[command] = number(decided.get("step")) if isinstance(decided, dict) else None
        if status not in NOT_FAILURES:
            row.failures.append((command, status, row.logs.get(command, "")))
    values = set(status_of.values())
    row.status = (values.pop() if len(values) == 1 else
                  " ".join(f"{c}:{s}" for c, s in status_of.items()) if values else "pending")
    row.seconds = round(total, 3) if status_of else None
    row.gpu_mib = gpu_mib(stat)
    for metric, (command, pattern) in compiled.items():
        log = row.logs.get(command)
        row.metrics[metric] = read_metric(directory, command, pattern, log) if log or not shared else None
        if steps and metric in steps and log:
            row.series[metric] = read_series(log, steps[metric], pattern, size)
    return row, runs


def collect(output: str, metrics: Mapping[str, Mapping[str, str]], now: Optional[float] = None
            ) -> Tuple[List[Row], List[Run]]:
    """Every experiment under `output` (a directory that holds a `stat`, or a `stat.<name>` in the
    root itself under --no-subdir), and every run it recorded."""
    if not os.path.isdir(output):
        raise UserError(f"no output directory '{output}' (name another with -o)")
    compiled = compile_metrics(metrics)
    steps = {name: re.compile(str(spec["step"])) for name, spec in metrics.items() if spec.get("step")}
    now = time.time() if now is None else now
    rows: List[Row] = []
    runs: List[Run] = []
    with os.scandir(output) as entries:
        found = [(e.name, False) for e in entries if e.is_dir() and os.path.exists(os.path.join(e.path, "stat"))]
    found += [(n[len("stat."):], True) for n in os.listdir(output)
              if n.startswith("stat.") and not set_aside_name(n)]  # temporary files start with "."
    size = points_per_curve(len(found))  # what a chart of as many curves draws of each (T13)
    for name, shared in sorted(found):
        row, recorded = _experiment(output if shared else os.path.join(output, name), name, now, compiled, shared,
                                    steps, size)
        rows.append(row)
        runs.extend(recorded)
    return rows, runs


def tail(path: str, lines: int = TAIL_LINES) -> str:
    """The last lines of a log, read from its end: a log may be gigabytes."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(stream.tell() - 64 * 1024, 0))
            text = stream.read().decode("utf-8", "replace")
    except OSError as error:
        return f"(no log: {error.strerror})"
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
