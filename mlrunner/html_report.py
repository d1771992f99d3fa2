"""`--report`: the sweep as one self-contained HTML page (SPEC V1).

The records under the output root are read into plain rows (`collect`), and `render` turns them
into HTML with no I/O: a timeline of the workers (inline SVG, one bar per command run, the hover
text in SVG <title>s), the results table (sorted by a few lines of inline JS), one plot per
metric and swept param, and the failures with their logs' last lines. Nothing is fetched: no
network, no library, no font. Params and log lines are the user's and the commands' text, so
everything that comes from the records is escaped.
"""

from __future__ import annotations

import html
import math
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from . import records
from .errors import UserError
from .examine.examiner import Experiment, varying_params
from .examine.metrics import compile_metrics, read_metric
from .state import owner_alive

TAIL_LINES = 20  # of each failed command's log
MAX_FAILURES = 100  # shown in full; the rest are counted
NOT_FAILURES = ("finished", "skipped", "running", "interrupted", "changed", "pending")
COLOURS = {"finished": "#3a9a4a", "failed": "#d0453a", "interrupted": "#e69a2e", "running": "#3a78c8",
           "timeout": "#8e4fc1", "skipped": "#9aa0a6"}
OTHER_COLOUR = "#6b6f75"


@dataclass
class Run:
    """One run of one command, as a bar of the timeline."""

    experiment: str
    command: str
    worker: str
    start: float
    end: float
    status: str


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


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _epoch(text: Any) -> Optional[float]:
    """The old records' `started: '2026-11-28 04:50:01'` (local time) as epoch seconds."""
    try:
        return time.mktime(time.strptime(str(text), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def _runs_of(stat: Dict[str, Any], command: str) -> List[Dict[str, Any]]:
    """`_runs` of one command, oldest first; older records hold one mapping, not a list (V2)."""
    value = (stat.get("_runs") or {}).get(command) if isinstance(stat.get("_runs"), dict) else None
    runs = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
    return [run for run in runs if isinstance(run, dict)]


def _read(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as stream:
            data = records.loads(stream.read().decode("utf-8", "replace"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _experiment(directory: str, name: str, now: float, compiled: Mapping[str, Tuple[str, Any]],
                shared: bool = False) -> Tuple[Row, List[Run]]:
    """One experiment's row and runs; `shared`: its records are `stat.<name>`/`param.<name>` in the
    output root, beside the other experiments' (--no-subdir)."""
    suffix = f".{name}" if shared else ""
    stat = _read(os.path.join(directory, "stat" + suffix))
    params = {k: v for k, v in _read(os.path.join(directory, "param" + suffix)).items() if not str(k).startswith("_")}
    status_of = {str(k): str(v) for k, v in stat.items() if not str(k).startswith("_")}
    runs: List[Run] = []
    row = Row(name, params, "pending", None)
    total = 0.0
    for command, status in status_of.items():
        history = _runs_of(stat, command)
        if status == "running" and not owner_alive(history[-1] if history else {}):
            status = status_of[command] = "interrupted"  # its runner is gone, as --status says (R6)
        for position, run in enumerate(history):
            start = _number(run.get("start")) or _epoch(run.get("started"))
            seconds = _number(run.get("seconds"))
            end = _number(run.get("end")) or (start + seconds if start is not None and seconds is not None else None)
            last = position == len(history) - 1
            run_status = status if last else str(run.get("status") or "")
            if start is not None:
                runs.append(Run(name, command, str(run.get("worker") or "?"), start,
                                end if end is not None else (now if run_status == "running" else start), run_status))
            if last:
                total += seconds or 0.0
                if run.get("log"):
                    row.logs[command] = os.path.join(directory, os.path.basename(str(run["log"])))
        if command not in row.logs:
            logs = sorted(n for n in os.listdir(directory) if n.startswith(f"log.{command}.") and n.endswith(suffix))
            if logs:
                row.logs[command] = os.path.join(directory, logs[-1])
        if status not in NOT_FAILURES:
            row.failures.append((command, status, row.logs.get(command, "")))
    values = set(status_of.values())
    row.status = (values.pop() if len(values) == 1 else
                  " ".join(f"{c}:{s}" for c, s in status_of.items()) if values else "pending")
    row.seconds = round(total, 3) if status_of else None
    for metric, (command, pattern) in compiled.items():
        log = row.logs.get(command)
        row.metrics[metric] = read_metric(directory, command, pattern, log) if log or not shared else None
    return row, runs


def collect(output: str, metrics: Mapping[str, Mapping[str, str]], now: Optional[float] = None
            ) -> Tuple[List[Row], List[Run]]:
    """Every experiment under `output` (a directory that holds a `stat`, or a `stat.<name>` in the
    root itself under --no-subdir), and every run it recorded."""
    if not os.path.isdir(output):
        raise UserError(f"no output directory '{output}' (name another with -o)")
    compiled = compile_metrics(metrics)
    now = time.time() if now is None else now
    rows: List[Row] = []
    runs: List[Run] = []
    with os.scandir(output) as entries:
        found = [(e.name, False) for e in entries if e.is_dir() and os.path.exists(os.path.join(e.path, "stat"))]
    found += [(n[len("stat."):], True) for n in os.listdir(output)
              if n.startswith("stat.") and ".corrupt." not in n and not n.endswith(".tmp")]
    for name, shared in sorted(found):
        row, recorded = _experiment(output if shared else os.path.join(output, name), name, now, compiled, shared)
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


# Rendering: pure functions of the rows and runs ------------------------------------------------

def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _duration(seconds: float) -> str:
    """`0.42 s`, `12.5 s`, then `1:02:03`: sweeps of short commands are worth reading too."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _worker_key(worker: str) -> Tuple:
    """Natural order: 0, 1, 2, 10, cpu, gpu1:0."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", worker) if part)


def _busy(intervals: Sequence[Tuple[float, float]]) -> float:
    """Length of the union of intervals: two runs on one worker never count twice."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _status_style() -> str:
    return "".join(f".s-{s}{{fill:{c}}}" for s, c in COLOURS.items()) + f".s-other{{fill:{OTHER_COLOUR}}}"


def _status_class(status: str) -> str:
    return f"s-{status}" if status in COLOURS else "s-other"


def timeline(runs: Sequence[Run]) -> str:
    """One row per worker, one bar per run; idle time per worker and the utilisation of all."""
    if not runs:
        return "<p>No command has run yet.</p>"
    t0 = min(r.start for r in runs)
    span = max(max(r.end for r in runs) - t0, 1e-9)
    workers = sorted({r.worker for r in runs}, key=_worker_key)
    by_worker: Dict[str, List[Run]] = {w: [] for w in workers}
    for run in runs:
        by_worker[run.worker].append(run)
    label, width, height, top = 110, 1000, 22, 24
    plot = width - label - 170
    parts = [f'<svg class="timeline" viewBox="0 0 {width} {top + height * len(workers) + 4}" '
             f'width="{width}" role="img" aria-label="timeline of the workers">']
    for tick in range(6):
        x = label + plot * tick / 5
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{top + height * len(workers)}" '
                     f'class="grid"/><text x="{x:.1f}" y="{top - 10}" class="tick">{_duration(span * tick / 5)}</text>')
    busy_total = 0.0
    for index, worker in enumerate(workers):
        y = top + index * height
        busy = _busy([(r.start, r.end) for r in by_worker[worker]])
        busy_total += busy
        parts.append(f'<g class="worker" data-worker="{_e(worker)}" transform="translate(0 {y})">'
                     f'<text x="{label - 8}" y="15" class="label">{_e(worker)}</text>')
        for run in by_worker[worker]:  # 10^4 runs: every byte of a bar counts, so colours are classes
            x = label + plot * (run.start - t0) / span
            w = max(plot * (run.end - run.start) / span, 0.5)
            tip = f"{run.experiment} · {run.command} · {_duration(run.end - run.start)} · {run.status}"
            parts.append(f'<rect class="bar {_status_class(run.status)}" x="{x:.1f}" width="{w:.1f}">'
                         f'<title>{_e(tip)}</title></rect>')
        parts.append(f'<text x="{label + plot + 10}" y="15" class="idle">idle {_duration(span - busy)} '
                     f'({100 * (span - busy) / span:.0f}%)</text></g>')
    parts.append("</svg>")
    utilisation = busy_total / (span * len(workers))
    legend = " ".join(f'<span class="key" style="background:{c}"></span>{s}' for s, c in COLOURS.items())
    return (f'<p id="utilisation">Workers: {len(workers)}, runs: {len(runs)}, span {_duration(span)}, '
            f'utilisation {100 * utilisation:.1f}% (busy worker-time / available)</p>'
            + "".join(parts) + f'<p class="legend">{legend}</p>')


def _cell(value: Any) -> str:
    """A table cell; the sorter reads a number from the text, so none is repeated in an attribute."""
    return f"<td>{_e(_fmt(value))}</td>"


def _href(path: str, base: str) -> str:
    return urllib.parse.quote(os.path.relpath(path, base).replace(os.sep, "/"))


def results_table(rows: Sequence[Row], params: Sequence[str], metrics: Sequence[str], base: str) -> str:
    """Params that differ, metrics, status, duration and log links; a click on a header sorts."""
    headers = ["experiment", *params, *metrics, "status", "duration", "logs"]
    out = ['<table id="results"><thead><tr>'
           + "".join(f'<th data-column="{_e(h)}">{_e(h)}</th>' for h in headers) + "</tr></thead><tbody>"]
    for row in rows:
        logs = " ".join(f'<a href="{_href(path, base)}">{_e(command)}</a>' for command, path in row.logs.items())
        duration = f'<td data-v="{row.seconds!r}">{_duration(row.seconds)}</td>' if row.seconds is not None else "<td></td>"
        out.append("<tr>" + _cell(row.name) + "".join(_cell(row.params.get(p)) for p in params)
                   + "".join(_cell(row.metrics.get(m)) for m in metrics)
                   + f'<td class="status">{_e(row.status)}</td>' + duration + f"<td>{logs}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def scatter(rows: Sequence[Row], param: str, metric: str) -> str:
    """`metric` against `param`: a numeric axis (log when the values span decades) or categories."""
    points = [(row.params.get(param), _number(row.metrics.get(metric)), row.name) for row in rows]
    points = [(x, y, name) for x, y, name in points if x is not None and y is not None and math.isfinite(y)]
    if not points:
        return ""
    width, height, pad = 320, 220, 40
    numeric = all(_number(x) is not None for x, _, _ in points)
    if numeric:
        xs = [float(x) for x, _, _ in points]
        log = min(xs) > 0 and max(xs) / min(xs) >= 100
        xs = [math.log10(x) for x in xs] if log else xs
        low, high = min(xs), max(xs)
        margin = (high - low) * 0.05
        ticks = [(v, _fmt(10 ** v if log else v)) for v in (low, high)]
    else:
        categories = sorted({str(x) for x, _, _ in points})
        xs = [float(categories.index(str(x))) for x, _, _ in points]
        low, high = -0.5, len(categories) - 0.5
        ticks = [(float(i), c) for i, c in enumerate(categories)][:12]
        log, margin = False, 0.0
    low, high = low - margin, high + margin
    ys = [y for _, y, _ in points]
    bottom, top = min(ys), max(ys)
    bottom, top = bottom - (top - bottom) * 0.05, top + (top - bottom) * 0.05

    def px(x: float) -> float:
        return pad + (width - 2 * pad) * ((x - low) / (high - low) if high > low else 0.5)

    def py(y: float) -> float:
        return height - pad - (height - 2 * pad) * ((y - bottom) / (top - bottom) if top > bottom else 0.5)

    parts = [f'<figure class="plot"><svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'data-metric="{_e(metric)}" data-param="{_e(param)}">',
             f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" class="frame"/>']
    for value, text in ticks:
        parts.append(f'<text x="{px(value):.1f}" y="{height - pad + 14}" class="tick">{_e(text)}</text>')
    for value in (min(ys), max(ys)):
        parts.append(f'<text x="{pad - 4}" y="{py(value) + 4:.1f}" class="ytick">{_e(_fmt(value))}</text>')
    shown: Dict[Tuple[int, int], List[Tuple[str, float]]] = {}  # one dot per pixel: 10^4 points stay small
    for x, (_, y, name) in zip(xs, points):
        shown.setdefault((round(px(x)), round(py(y))), []).append((name, y))
    for (cx, cy), here in shown.items():
        more = f" (and {len(here) - 1} more here)" if len(here) > 1 else ""
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="3.5"><title>{_e(here[0][0])}: {_e(metric)} '
                     f'{_e(_fmt(here[0][1]))}{more}</title></circle>')
    scale = " (log)" if log else ""
    parts.append(f'</svg><figcaption>{_e(metric)} against {_e(param)}{scale}</figcaption></figure>')
    return "".join(parts)


def failures(rows: Sequence[Row], base: str) -> str:
    found = [(row, f) for row in rows for f in row.failures]
    if not found:
        return "<p>None.</p>"
    out = []
    for row, (command, status, log) in found[:MAX_FAILURES]:
        link = f' <a href="{_href(log, base)}">log</a>' if log else ""
        out.append(f'<details class="failure" open><summary>{_e(row.name)} · {_e(command)}: {_e(status)}{link}'
                   f'</summary><pre>{_e(tail(log) if log else "(no log)")}</pre></details>')
    if len(found) > MAX_FAILURES:
        out.append(f"<p>… and {len(found) - MAX_FAILURES} more failed commands (see the table).</p>")
    return "".join(out)


STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#202124}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
svg text{font:11px system-ui,sans-serif;fill:#444}
.label,.ytick{text-anchor:end}.tick{text-anchor:middle}.grid{stroke:#e3e3e3}
.frame{fill:none;stroke:#ccc}circle{fill:#3a78c8;fill-opacity:.7}.bar{y:3px;height:16px}
.key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
th{cursor:pointer;background:#f4f4f4;user-select:none}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
.plot{display:inline-block;margin:0 12px 12px 0}figcaption{text-align:center;font-size:12px}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;max-height:24em}
"""

# Sorts the table's rows by the clicked column: numbers (data-v) by value, text by locale,
# empty cells last; a second click reverses.
SCRIPT = """
var NUMBER = /^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?$/i;
document.querySelectorAll("#results th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var descending = th.getAttribute("aria-sort") === "ascending";
    document.querySelectorAll("#results th").forEach(function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var body = document.querySelector("#results tbody");
    var rows = Array.prototype.slice.call(body.rows);
    function key(row) {
      var cell = row.cells[column];
      var value = cell.getAttribute("data-v");
      var text = value === null ? cell.textContent : value;
      return NUMBER.test(text) ? parseFloat(text) : text;
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def render(rows: Sequence[Row], runs: Sequence[Run], metrics: Sequence[str], title: str, base: str,
           generated: float) -> str:
    """The whole page. `base` is the report's directory, for the relative links to the logs."""
    experiments = [Experiment(cache={}, metric={}, param=row.params) for row in rows]
    params = varying_params(experiments)
    plots = "".join(scatter(rows, p, m) for m in metrics for p in params) or "<p>No metric to plot.</p>"
    counts: Dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    summary = ", ".join(f"{_e(s)}: {n}" for s, n in sorted(counts.items()))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(generated))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}{_status_style()}</style></head><body>'
            f"<h1>{_e(title)}</h1><p>Experiments: {len(rows)} ({summary}); written {stamp}.</p>"
            f"<h2>Timeline</h2>{timeline(runs)}"
            f"<h2>Results</h2>{results_table(rows, params, metrics, base)}"
            f"<h2>Metrics</h2>{plots}"
            f"<h2>Failures</h2>{failures(rows, base)}"
            f"<script>{SCRIPT}</script></body></html>\n")


def write_report(output: str, path: str, metrics: Mapping[str, Mapping[str, str]]) -> str:
    """Read the records under `output`, write the page to `path` atomically, return `path`."""
    if not os.path.isdir(output):
        raise UserError(f"no output directory '{output}' (name another with -o)")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory):
        raise UserError(f"--report {path}: " + ("is a directory" if os.path.isdir(path)
                                                 else f"no directory {directory}"))
    rows, runs = collect(output, metrics)
    text = render(rows, runs, list(metrics), f"mlrunner report: {output}", directory, time.time())
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except OSError as error:
        raise UserError(f"--report {path}: cannot write: {error.strerror}") from None
    return path
