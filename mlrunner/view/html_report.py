"""`--report`: the sweep as one self-contained HTML page (SPEC V1).

`history.collect` reads the records into plain rows and runs, and `render` turns them into HTML
with no I/O: a timeline of the worker slots (inline SVG, one bar per command run, the hover text in
SVG <title>s), the results table (sorted by a few lines of inline JS), one plot per metric and
swept param, and the failures with their logs' last lines. Nothing is fetched: no network, no
library, no font. Params and log lines are the user's and the commands' text, so everything
that comes from the records is escaped.
"""

from __future__ import annotations

import html
import os
import time
import urllib.parse
from typing import Any, Dict, Mapping, Optional, Sequence

from ..errors import UserError
from ..examine.parsers import Experiment, varying_params
from .charts import curves, fmt, scatter
from .history import Row, Run, collect, tail
from .timeline import layout

MAX_FAILURES = 100  # shown in full; the rest are counted
COLOURS = {"finished": "#3a9a4a", "failed": "#d0453a", "interrupted": "#e69a2e", "running": "#3a78c8",
           "timeout": "#8e4fc1", "skipped": "#9aa0a6", "stopped": "#b5651d"}  # stopped: by early_stop (A2)
OTHER_COLOUR = "#6b6f75"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _duration(seconds: float) -> str:
    """`0.42 s`, `12.5 s`, then `1:02:03`: sweeps of short commands are worth reading too."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _status_style() -> str:
    return "".join(f".s-{s}{{fill:{c}}}" for s, c in COLOURS.items()) + f".s-other{{fill:{OTHER_COLOUR}}}"


def _status_class(status: str) -> str:
    return f"s-{status}" if status in COLOURS else "s-other"


def timeline(runs: Sequence[Run]) -> str:
    """One row per worker slot, one bar per run; the pauses between separate runs cut out and
    marked; idle time per slot and the utilisation of all (T9, `timeline.layout`)."""
    if not runs:
        return "<p>No command has run yet.</p>"
    drawn = layout(runs)
    span = max(drawn.span, 1e-9)
    rows = drawn.lanes
    label, width, height, top = 110, 1000, 22, 24
    plot = width - label - 170
    bottom = top + height * len(rows)
    parts = [f'<svg class="timeline" viewBox="0 0 {width} {bottom + 4}" '
             f'width="{width}" role="img" aria-label="timeline of the worker slots">']
    for tick in range(6):
        x = label + plot * tick / 5
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" '
                     f'class="grid"/><text x="{x:.1f}" y="{top - 10}" class="tick">{_duration(span * tick / 5)}</text>')
    for offset, seconds in drawn.cuts():
        x = label + plot * offset / span
        parts.append(f'<g class="cut"><title>{_e(_duration(seconds))} between two runs, left out</title>'
                     f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}"/>'
                     f'<text x="{x + 3:.1f}" y="{bottom + 2}">✂</text></g>')
    for index, lane in enumerate(rows):
        parts.append(f'<g class="worker" data-worker="{_e(lane.name)}" transform="translate(0 {top + index * height})">'
                     f'<text x="{label - 8}" y="15" class="label">{_e(lane.name)}</text>')
        for run in lane.runs:  # 10^4 runs: every byte of a bar counts, so colours are classes
            x = label + plot * drawn.at(run.start) / span
            w = max(plot * (run.end - run.start) / span, 0.5)
            tip = f"{run.experiment} · {run.command} · {_duration(run.end - run.start)} · {run.status}"
            parts.append(f'<rect class="bar {_status_class(run.status)}" x="{x:.1f}" width="{w:.1f}">'
                         f'<title>{_e(tip)}</title></rect>')
        share = 100 * lane.idle / lane.available if lane.available > 0 else 0.0
        parts.append(f'<text x="{label + plot + 10}" y="15" class="idle">idle {_duration(lane.idle)} '
                     f'({share:.0f}%)</text></g>')
    parts.append("</svg>")
    cuts = drawn.cuts()
    left_out = (f" ({len(cuts)} pause{'s' if len(cuts) > 1 else ''} between runs left out: "
                f"{_duration(sum(s for _, s in cuts))})" if cuts else "")
    legend = " ".join(f'<span class="key" style="background:{c}"></span>{s}' for s, c in COLOURS.items())
    return (f'<p id="utilisation">Workers: {len(rows)}, runs: {len(runs)}, span {_duration(drawn.span)}{left_out}, '
            f'utilisation {100 * drawn.utilisation:.1f}% (busy worker-time / available)</p>'
            + "".join(parts) + f'<p class="legend">{legend}</p>')


def _cell(value: Any) -> str:
    """A table cell; the sorter reads a number from the text, so none is repeated in an attribute."""
    return f"<td>{_e(fmt(value))}</td>"


def _href(path: str, base: str) -> str:
    return urllib.parse.quote(os.path.relpath(path, base).replace(os.sep, "/"))


def results_table(rows: Sequence[Row], params: Sequence[str], metrics: Sequence[str], base: str) -> str:
    """Params that differ, the code (P1, P2), metrics, status, duration, peak GPU memory and log
    links; a click on a header sorts."""
    code = any(row.code for row in rows)
    gpu = any(row.gpu_mib is not None for row in rows)  # peak GPU memory, when nvidia-smi was read (G12)
    headers = ["experiment", *params, *(["code"] if code else []), *metrics, "status", "duration",
               *(["GPU MiB"] if gpu else []), "logs"]
    out = ['<table id="results"><thead><tr>'
           + "".join(f'<th data-column="{_e(h)}">{_e(h)}</th>' for h in headers) + "</tr></thead><tbody>"]
    for row in rows:
        logs = " ".join(f'<a href="{_href(path, base)}">{_e(command)}</a>' for command, path in row.logs.items())
        duration = f'<td data-v="{row.seconds!r}">{_duration(row.seconds)}</td>' if row.seconds is not None else "<td></td>"
        out.append("<tr>" + _cell(row.name) + "".join(_cell(row.params.get(p)) for p in params)
                   + (_code_cell(row.code) if code else "")
                   + "".join(_cell(row.metrics.get(m)) for m in metrics)
                   + f'<td class="status">{_e(row.status)}</td>' + duration
                   + (_cell(row.gpu_mib) if gpu else "") + f"<td>{logs}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _code_cell(code: Dict[str, Any]) -> str:
    """The snapshot's digest (P2), else the commit with `+changes` when the tree was dirty; the
    whole record in the tooltip."""
    commit = str(code.get("commit") or "")[:12]
    text = code.get("code") or (commit + ("+changes" if code.get("dirty") else "") if commit or code.get("dirty") else "")
    title = "; ".join(f"{k}: {v}" for k, v in code.items() if k in ("commit", "dirty", "code", "node", "python_version",
                                                                     "gpu_name"))
    return f'<td title="{_e(title)}">{_e(text)}</td>'


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
.cut line{stroke:#888;stroke-dasharray:3 3}
.frame{fill:none;stroke:#ccc}circle{fill:#3a78c8;fill-opacity:.7}
.curve{fill:none;stroke-width:1.5;stroke-opacity:.8;pointer-events:stroke}.curve:hover{stroke-width:4;stroke-opacity:1}
.c0{stroke:#3a78c8}.c1{stroke:#e69a2e}.c2{stroke:#3a9a4a}.c3{stroke:#8e4fc1}.c4{stroke:#d0453a}.c5{stroke:#1b9e9e}.c6{stroke:#c2459a}.c7{stroke:#6b6f75}
.stopped{stroke-dasharray:5 3}.stop{stroke:#b5651d;stroke-width:2;fill:none}.bar{y:3px;height:16px}
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
var NUMBER = /^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?$|^[-+]?(inf|nan)$/i;
var SPECIAL = {"inf": Infinity, "+inf": Infinity, "-inf": -Infinity};
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
      if (!NUMBER.test(text)) { return text; }
      var lower = text.toLowerCase();
      return lower in SPECIAL ? SPECIAL[lower] : /nan$/.test(lower) ? NaN : parseFloat(text);
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var numbers = typeof x === "number" && typeof y === "number";
      if (numbers && (x !== x || y !== y)) { return (x !== x) - (y !== y); }  // nan last, either way
      var order = numbers ? (x === y ? 0 : x < y ? -1 : 1) : String(x).localeCompare(String(y));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def render(rows: Sequence[Row], runs: Sequence[Run], metrics: Sequence[str], title: str, base: str,
           generated: float, series: Optional[Mapping[str, str]] = None) -> str:
    """The whole page. `base` is the report's directory, for the relative links to the logs;
    `series`: metric -> command, for the metrics read with their steps (T13)."""
    experiments = [Experiment(cache={}, metric={}, param=row.params) for row in rows]
    params = varying_params(experiments)
    drawn = "".join(curves(rows, m, command) for m, command in (series or {}).items())
    plots = drawn + "".join(scatter(rows, p, m) for m in metrics for p in params) or "<p>No metric to plot.</p>"
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
    series = {name: str(spec["command"]) for name, spec in metrics.items() if spec.get("step")}
    text = render(rows, runs, list(metrics), f"mlrunner report: {output}", directory, time.time(), series)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except OSError as error:
        raise UserError(f"--report {path}: cannot write: {error.strerror}") from None
    return path
