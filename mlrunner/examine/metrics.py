"""The no-code metrics of SPEC E6: a regex per metric instead of a Python parser.

Document 1 of params.yaml may hold `metric: {bleu: {command: test, regex: 'BLEU4 = ([\\d.]+)'}}`;
`--examine` then prints, for every experiment, the params that differ, each metric (the first
group of the last match in the newest log of its command) and the experiment's status. The
directory walk is the Examiner's: this module supplies the parser, the rows kept in the index and
`examined`, what both `--examine` (table.py) and `Examiner.from_output` read.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Pattern, Tuple, Union

import yaml

from ..run import records, state
from ..run.index import Index, signature
from ..run.provenance import recorded
from .parsers import Experiment, ParserRunner, experiment_names, latest_log
from .logs import last_match
from .tree import Tree

GPU_MIB = "gpu_mib"  # the column of each experiment's peak GPU memory (G12), when one was seen
_INT = re.compile(r"[+-]?\d+")


def to_number(text: str) -> Union[int, float, str]:
    """`text` as an int or a float when it reads as one, so that tables sort numerically."""
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def read_metric(output_dir: Union[str, Path], command: str, regex: Union[str, Pattern[str]],
                log: Optional[Union[str, Path]] = None) -> Any:
    """The first group of the last match of `regex` in the newest log of `command` (or in `log`,
    when the caller already knows it from the records: no directory listing then).

    The last match, because a log usually reports a metric once per epoch and the final one
    counts. The whole match is used when the regex has no group. None when there is no log or
    no match. The log is read a chunk at a time, a value within one line (`logs.blocks`): one
    line of hundreds of megabytes costs no more memory than a short one.
    """
    log = log or latest_log(command, output_dir)
    if log is None:
        return None
    value = last_match(str(log), re.compile(regex) if isinstance(regex, str) else regex)
    return None if value is None else to_number(value)


def status_of(output_dir: Union[str, Path]) -> str:
    return status_and_code(output_dir)[0]


def status_and_code(output_dir: Union[str, Path]) -> Tuple[str, Dict[str, Any]]:
    """One word or a short list for an experiment's `stat`, so the table stays one line per row
    (see `status_from`); `pending` when there is no `stat` yet, `unreadable` when it is corrupt."""
    try:
        with open(Path(output_dir, "stat"), encoding="utf-8", errors="replace") as stream:
            data = records.loads(stream.read())
    except FileNotFoundError:
        return "pending", {}
    except yaml.YAMLError:
        return "unreadable", {}
    if data is None:
        return "pending", {}
    if not isinstance(data, dict):
        return "unreadable", {}
    return status_from(data)


def status_from(data: Dict[str, Any], changed: Iterable[str] = ()) -> Tuple[str, Dict[str, Any]]:
    """`finished` (or `failed`, `running`, ...) when every command of a `stat` has that status;
    otherwise each command with its own, in the file's order: `avg:failed test:skipped
    train:finished`; `pending` when no command has started. `_`-keys (such as `_runs`) are
    details, not commands. Beside it, the code that made the experiment's newest run (P1). A
    finished command in `changed` is `changed`, as `--status` shows it (I2).
    """
    # The runner's own reading: a `running` whose owner is gone shows as `interrupted`, as in --status.
    statuses = {str(command): str(status) for command, status in state.statuses(data).items()
                if not str(command).startswith("_")}
    if not statuses:
        return "pending", {}
    statuses.update((command, state.CHANGED) for command in changed if statuses.get(command) == state.FINISHED)
    code = recorded(data)
    if len(set(statuses.values())) == 1:
        return next(iter(statuses.values())), code
    return " ".join(f"{command}:{status}" for command, status in statuses.items()), code


def compile_metrics(metrics: Mapping[str, Mapping[str, str]]) -> Dict[str, Tuple[str, Pattern[str]]]:
    """name -> (command, compiled regex); a ValueError names the metric that is malformed."""
    compiled = {}
    for name, spec in metrics.items():
        if not isinstance(spec, Mapping) or "command" not in spec or "regex" not in spec:
            raise ValueError(f"metric '{name}' needs the keys 'command' and 'regex'")
        try:
            compiled[str(name)] = (str(spec["command"]), re.compile(str(spec["regex"])))
        except re.error as error:
            raise ValueError(f"metric '{name}': bad regex: {error}") from None
    return compiled


class _IndexedRows:
    """--examine's rows kept in the index (index.py): one is used while its experiment's directory
    (a new log changes it), `param`, `stat` and the logs it read keep their signatures. Nothing in
    an entry depends on how -o is spelt or where it is asked from."""

    def __init__(self, output: str, compiled: Dict[str, Tuple[str, Pattern[str]]], tree: Optional[Tree] = None):
        self.output = output
        self.compiled = compiled
        self.tree = tree
        self.index = Index(output, "examine")
        self.spec = Index.inputs(sorted((name, command, pattern.pattern) for name, (command, pattern) in compiled.items()),
                                 tree.digest() if tree else "")  # a row's `changed` depends on the config
        self.files: Dict[str, list] = {}  # name -> signatures taken before its files were read
        self.logs: Dict[str, list] = {}  # name -> [log, signature] of each metric's log, or None

    def _signatures(self, name: str) -> list:
        path = os.path.join(self.output, name)
        return [signature(path), signature(path + "/param"), signature(path + "/stat")]

    def lookup(self, name: str) -> Optional[Experiment]:
        files = self._signatures(name)
        entry = self.index.get(name, Index.digest(files, self.spec))
        row = entry[1] if entry else None  # a row is all its experiment's own: nothing shared
        directory = os.path.join(self.output, name)
        if _row(row) and all(log is None or list(signature(os.path.join(directory, log[0]))) == log[1]
                             for log in row[3]):
            return Experiment(cache={"status": row[2], "code": row[4]}, metric=row[1], param=row[0])
        self.files[name] = files
        return None

    def parse(self, directory: Path, experiment: Any, caches: dict) -> None:
        """The metrics and status of one experiment, each log signed before it is read."""
        logs = self.logs.setdefault(directory.name, [])
        for name, (command, pattern) in self.compiled.items():
            log = latest_log(command, directory)
            # by its name in the experiment's directory: the same entry whatever the spelling of -o or the cwd
            logs.append([log.name, list(signature(str(log)))] if log else None)
            experiment.metric[name] = read_metric(directory, command, pattern, log) if log else None
        try:
            stat = state.read_record(str(Path(directory, "stat")))  # read once: status, changed, GPU memory
        except state.Corrupt:
            stat = {}
            experiment.cache["status"], experiment.cache["code"] = status_and_code(directory)
        else:
            changed = self.tree.changed(directory.name, experiment.param, stat) if self.tree and stat else ()
            experiment.cache["status"], experiment.cache["code"] = status_from(stat, changed)
        seen = state.gpu_mib(stat)
        if seen is not None:
            experiment.metric[GPU_MIB] = seen

    def keep(self, name: str, experiment: Optional[Experiment]) -> None:
        status = experiment.cache.get("status") if experiment else None
        if experiment is None or name not in self.logs or "running" in str(status):  # running: its owner is asked each time
            return
        logs = [tuple(log[1]) for log in self.logs[name] if log is not None]
        self.index.put(name, Index.digest(self.files[name], self.spec), self.files[name] + logs, None,
                       [{k: v for k, v in experiment.param.items() if not str(k).startswith("_")},  # all a table shows
                        experiment.metric, status, self.logs[name], experiment.cache.get("code") or {}])


def _row(row: Any) -> bool:
    """Whether an index entry is what `_IndexedRows.keep` makes: [params, metrics, status, logs, code]."""
    return (type(row) is list and len(row) == 5 and type(row[0]) is dict and type(row[1]) is dict
            and type(row[4]) is dict
            and type(row[3]) is list and all(log is None or (type(log) is list and len(log) == 2
                                                             and type(log[0]) is str) for log in row[3]))


def examined(output: str, metrics: Mapping[str, Mapping[str, str]], *, regex: str = ".*", workers: int = 0,
             tree: Optional[Tree] = None) -> Dict[str, Experiment]:
    """name -> Experiment of every experiment under `output` whose name `re.search`es `regex`:
    its params, its metrics (the `metric:` regexes), and in `cache` its `status` (`changed` as
    `--status` says, when the tree's config is known) and `code`. Rows whose files did not change
    since are the index's; notes about skipped directories go to stderr, so that a table on stdout
    can be redirected as it is."""
    compiled = compile_metrics(metrics)
    rows = _IndexedRows(output, compiled, tree)
    examiner = ParserRunner()
    examiner.add(rows.parse)
    todo = []
    names = experiment_names(output, regex)
    for name in names:
        known = rows.lookup(name)
        if known is not None:
            examiner.experiments[name] = known
        else:
            todo.append(Path(output, name))
    with contextlib.redirect_stdout(sys.stderr):
        examiner.exam_dirs(todo, workers=workers)
    for path in todo:
        rows.keep(path.name, examiner.experiments.get(path.name))
    present = set(names)
    rows.index.save(gone=lambda name: name not in present and re.search(regex, name) is not None)
    return {name: examiner.experiments[name] for name in sorted(examiner.experiments)}


def _provenance_cell(value: Any) -> Any:
    """A cell of the P1 columns: submodules as `path@commit`, a clean tree's `dirty` as `no`."""
    if isinstance(value, dict):
        return " ".join(f"{path}@{str(commit)[:12]}" for path, commit in sorted(value.items()))
    return "no" if value is False else value
