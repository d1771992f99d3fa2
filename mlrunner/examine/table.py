"""The `--examine` table: its columns, `--sort`, `--best`, `--mean-over`, and its formats (SPEC E6, T4, T12).

Columns: the experiment's name, each alias's case and the params that differ (in sweep order when
the tree's config is known), `code` and the provenance columns when asked, the metrics, `status`.
On a terminal the table is aligned; piped it is TSV, or what `--format` names.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import statistics
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..options import Options
from ..errors import EXIT_OK, UserError
from ..run.provenance import COLUMNS
from .parsers import Experiment, varying_params
from .metrics import GPU_MIB, compile_metrics, examined
from .tree import Tree

FORMATS = ("tsv", "csv", "markdown", "table")
Table = Tuple[List[str], List[List[Any]]]

_TSV = str.maketrans("\t\r\n", "   ")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "tsv") -> str:
    """The table as text: `tsv`, `csv`, a `markdown` pipe table or an aligned `table` (numbers to
    the right); missing values are empty."""
    headers = [str(header) for header in headers]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows([[_cell(value) for value in row] for row in rows])
        return buffer.getvalue()
    if fmt == "tsv":
        lines = [headers] + [[_cell(value) for value in row] for row in rows]
        return "".join("\t".join(cell.translate(_TSV) for cell in line) + "\n" for line in lines)
    if fmt == "markdown":
        lines = [[re.sub(r"[\r\n]", " ", _cell(value)).replace("|", r"\|") for value in line]
                 for line in [headers] + [list(row) for row in rows]]
        widths = [max(3, *(len(line[column]) for line in lines)) for column in range(len(headers))]
        lines.insert(1, ["-" * width for width in widths])
        return "".join("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |\n"
                       for line in lines)
    if fmt == "table":
        cells = [headers] + [[_cell(value).translate(_TSV) for value in row] for row in rows]
        widths = [max(len(line[column]) for line in cells) for column in range(len(headers))]
        right = [bool(rows) and all(_number(row[column]) or row[column] is None for row in rows)
                 for column in range(len(headers))]
        return "".join("  ".join(cell.rjust(width) if flush else cell.ljust(width)
                                 for cell, width, flush in zip(line, widths, right)).rstrip() + "\n"
                       for line in cells)
    raise ValueError(f"unknown table format '{fmt}' (choose from {', '.join(FORMATS)})")


def build(experiments: Mapping[str, Experiment], metrics: Sequence[str], tree: Optional[Tree] = None,
          provenance: bool = False, concise: bool = True) -> Tuple[List[str], List[List[Any]], List[str]]:
    """Headers, rows and the param columns: name, alias cases and params that differ (sweep
    order), code/provenance, metrics, status."""
    names = list(experiments)
    rows = [experiments[name] for name in names]
    order = tree.order if tree else ()
    cases = [tree.cases(experiment.param) for experiment in rows] if tree and tree.aliases else [{} for _ in rows]
    shown = [Experiment(cache={}, metric={}, param=dict(experiment.param, **case))
             for experiment, case in zip(rows, cases)]
    params = varying_params(shown, concise, order)
    codes = [experiment.cache.get("code") or {} for experiment in rows]
    extra = (["code"] if any("code" in code for code in codes) else []) + (list(COLUMNS) if provenance else [])
    metrics = list(metrics) + [GPU_MIB] * (GPU_MIB not in metrics and any(GPU_MIB in e.metric for e in rows))
    headers = ["experiment"] + params + extra + metrics + ["status"]
    table = [[name] + [experiment.param.get(key) for key in params]
             + [_provenance_cell(code.get(key)) for key in extra]
             + [original.metric.get(metric) for metric in metrics]
             + [original.cache.get("status")]
             for name, experiment, original, code in zip(names, shown, rows, codes)]
    return headers, table, params


def _provenance_cell(value: Any) -> Any:
    """A cell of the P1 columns: submodules as `path@commit`, a clean tree's `dirty` as `no`."""
    if isinstance(value, dict):
        return " ".join(f"{path}@{str(commit)[:12]}" for path, commit in sorted(value.items()))
    return "no" if value is False else value


def _column(headers: Sequence[str], key: str, flag: str) -> int:
    if key not in headers:
        raise UserError(f"{flag}: no column '{key}' (columns: {', '.join(headers)})")
    return list(headers).index(key)


def sort_rows(headers: Sequence[str], rows: List[List[Any]], key: str, flag: str = "--sort") -> List[List[Any]]:
    """Rows by the column `key` (`-key`: descending): numbers by value, then NaN, then text;
    empty cells last in either direction."""
    descending = key.startswith("-")
    column = _column(headers, key[1:] if descending else key, flag)
    numbers, nans, texts, empty = [], [], [], []
    for row in rows:
        value = row[column]
        if _number(value):
            (nans if math.isnan(value) else numbers).append(row)
        else:
            (empty if value is None or value == "" else texts).append(row)
    numbers.sort(key=lambda row: row[column], reverse=descending)
    texts.sort(key=lambda row: str(row[column]), reverse=descending)
    return numbers + nans + texts + empty


def best_rows(headers: Sequence[str], rows: List[List[Any]], key: str, count: int,
              mode: Optional[str]) -> Tuple[List[List[Any]], str]:
    """The `count` best rows by `key` and how "best" was read: `-key` the highest first, `+key` or
    `key` the lowest first, unless an unsigned `key` is the early_stop metric, whose `mode` says."""
    name = key.lstrip("+-")
    highest = key.startswith("-") or (key == name and mode == "max")
    column = _column(headers, name, "--best")
    chosen = [row for row in sort_rows(headers, rows, ("-" if highest else "") + name, "--best")
              if _number(row[column]) and not math.isnan(row[column])][:count]
    why = "early_stop's mode" if key == name and mode else "write --best -METRIC for the highest" \
        if not highest else "as asked"
    return chosen, f"best by {name}: the {'highest' if highest else 'lowest'} first ({why})"


def mean_over(headers: Sequence[str], rows: List[List[Any]], param: str, metrics: Sequence[str],
              params: Sequence[str]) -> Table:
    """One row per group of experiments equal in every param but `param`: those params, `n` (the
    experiments in the group) and each metric's mean ± standard deviation (with the count of
    values where some lack one)."""
    _column(headers, param, "--mean-over")
    keys = [headers.index(p) for p in params if p != param]
    measured = [headers.index(m) for m in metrics if m in headers]
    groups: Dict[tuple, List[List[Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row[k]) for k in keys), []).append(row)
    out = []
    for members in groups.values():
        cells: List[Any] = [members[0][k] for k in keys] + [len(members)]
        for m in measured:
            values = [row[m] for row in members if _number(row[m])]
            cells.append(_spread(values, len(members)))
        out.append(cells)
    return [headers[k] for k in keys] + ["n"] + [headers[m] for m in measured], out


class Spread(float):
    """A mean that prints as `mean ± std`: sorted by its mean."""

    def __new__(cls, mean: float, text: str) -> "Spread":
        value = super().__new__(cls, mean)
        value.text = text  # type: ignore[attr-defined]
        return value

    def __str__(self) -> str:
        return self.text  # type: ignore[attr-defined]


def _spread(values: List[float], n: int) -> Optional[Spread]:
    if not values:
        return None
    mean = statistics.fmean(values)
    text = f"{mean:.4g}" + (f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else "")
    return Spread(mean, text + (f" ({len(values)} of {n})" if len(values) < n else ""))


def examine_table(output: str, metrics: Mapping[str, Mapping[str, str]], fmt: str = "tsv", *,
                  regex: str = ".*", workers: int = 0, provenance: bool = False,
                  tree: Optional[Tree] = None) -> str:
    """The `--examine` table of every experiment under `output`, as text. Notes about skipped
    directories go to stderr so that the table on stdout can be redirected as it is."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format '{fmt}' (choose from {', '.join(FORMATS)})")
    compile_metrics(metrics)  # a malformed entry is named before anything is read
    experiments = examined(output, metrics, regex=regex, workers=workers, tree=tree)
    headers, rows, _ = build(experiments, list(metrics), tree, provenance)
    return render(headers, rows, fmt)


def print_examine(args: Options) -> int:
    """`--examine` with `--sort`, `--best`, `--mean-over` and `--format` (T4, T12)."""
    from ..plan.origin import resolve
    if not os.path.isdir(args.output):
        raise UserError(f"no output directory '{args.output}' (name another with -o)")
    sources = resolve(args)
    if args.yaml is not None and not os.path.exists(args.yaml):
        from ..plan.config import load
        load(args.yaml)  # the usual one line: file not found
    tree = Tree(args.output, sources, args.command, args.max_tasks)
    metrics = tree.metrics(steps=True)
    try:
        experiments = examined(args.output, metrics, tree=tree)
    except ValueError as error:  # a malformed `metric:` entry
        raise UserError(str(error)) from None
    headers, rows, params = build(experiments, list(metrics), tree, args.provenance)
    if args.mean_over:
        headers, rows = mean_over(headers, rows, args.mean_over, list(metrics), params)
    if args.sort:
        rows = sort_rows(headers, rows, args.sort)
    if args.best:
        key, count = args.best
        rule = next((config.early_stop for _, config in tree.configs if config.early_stop), None)
        rows, how = best_rows(headers, rows, key, count, rule.mode if rule and rule.metric == key.lstrip("+-") else None)
        print(how, file=sys.stderr)
    fmt = args.format or ("table" if sys.stdout.isatty() else "tsv")
    sys.stdout.write(render(headers, rows, fmt))
    return EXIT_OK
