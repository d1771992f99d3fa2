"""Run user-written metric parsers over experiment directories, serially or in a forked pool.

The directories written by the runner are the only record of an experiment, so they are re-read
on every call: each experiment's `param` file gives the row, and the user's parsers (functions of
the directory) add metrics and caches to it. Nothing here starts a process per directory;
`workers > 0` forks a small pool once, so parsers defined in a notebook work without being
importable. `examiner.py` builds the public `Examiner` on this; `metrics.py` uses it for `--examine`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import pickle
import re
import sys
import traceback
from collections import namedtuple
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from ..run import records

Experiment = namedtuple("Experiment", ["cache", "metric", "param"])
Parser = Callable[[Path, Experiment, Dict[str, Any]], None]


class ExamineError(RuntimeError):
    """A user parser failed; the message names the experiment directory and the parser."""

    def __init__(self, directory: Path, parser: str, error: BaseException):
        super().__init__(f"parser {parser} failed on {directory}: {type(error).__name__}: {error}")
        self.directory = directory
        self.parser = parser


class _WorkerTraceback(Exception):
    """The traceback text of an error raised in a worker process, where the frames were lost."""

    def __str__(self) -> str:
        return "\n\n" + str(self.args[0])


class _BadParam(ValueError):
    """A `param` file that exists but is not a YAML mapping."""


def read_param(directory: Path) -> Dict[str, Any]:
    """The params of one experiment; FileNotFoundError when it has none, _BadParam when corrupt."""
    path = os.path.join(directory, "param")
    with open(path, "rb") as stream:  # bytes, decoded once: cheaper than a text stream (E5)
        text = stream.read().decode("utf-8", "replace")
    try:
        data = records.loads(text)
    except yaml.MarkedYAMLError as error:
        line = f" at line {error.problem_mark.line + 1}" if error.problem_mark else ""
        raise _BadParam(f"{path}: unreadable param ({error.problem or error.context}{line})") from None
    except yaml.YAMLError as error:
        raise _BadParam(f"{path}: unreadable param ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise _BadParam(f"{path}: unreadable param (not a YAML mapping)")
    return data


def experiment_names(output: Union[str, Path], regex: str = ".*") -> List[str]:
    """The names of the subdirectories of `output` that `re.search` `regex`, sorted."""
    pattern = re.compile(regex)
    with os.scandir(output) as entries:
        return sorted(entry.name for entry in entries  # `.mlrunner`: the code snapshots (P2)
                      if entry.is_dir() and not entry.name.startswith(".") and pattern.search(entry.name))


def experiment_dirs(output: Union[str, Path], regex: str = ".*") -> List[Path]:
    """The subdirectories of `output` whose names `re.search` `regex`, sorted by name."""
    return [Path(output, name) for name in experiment_names(output, regex)]


def _name_of(parser: Parser) -> str:
    return getattr(parser, "__qualname__", None) or repr(parser)


def _apply(parsers: Iterable[Parser], directory: Path, experiment: Experiment, caches: dict) -> None:
    """Run the parsers in order; the first failure becomes an ExamineError naming `directory`."""
    for parser in parsers:
        try:
            parser(directory, experiment, caches)
        except Exception as error:
            raise ExamineError(directory, _name_of(parser), error) from error


# State of a forked worker: set once by the pool initializer, inherited without pickling.
_worker_state: Optional[Tuple[List[Parser], Dict[str, Experiment], dict]] = None


def _init_worker(parsers: List[Parser], experiments: Dict[str, Experiment], caches: dict) -> None:
    global _worker_state
    _worker_state = (parsers, experiments, caches)


def _work(directory: str) -> Tuple[str, str, Any]:
    """Examine one directory in a worker; returns (name, outcome, payload) for the parent to merge.

    The worker's caches persist across its directories, so a cache built once (a reference file,
    a vocabulary) is reused; only the entries added or rebound here are sent back.
    """
    assert _worker_state is not None
    parsers, experiments, caches = _worker_state
    path = Path(directory)
    try:
        params = read_param(path)
    except FileNotFoundError:
        return path.name, "missing", None
    except _BadParam as error:
        return path.name, "corrupt", str(error)
    experiment = experiments.get(path.name) or Experiment(cache={}, metric={}, param={})
    experiment.param.update(params)
    before = dict(caches)
    unset = object()
    try:
        _apply(parsers, path, experiment, caches)
    except ExamineError as error:
        cause = error.__cause__
        text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
        try:
            pickle.loads(pickle.dumps(cause))
        except Exception:
            cause = RuntimeError(repr(cause))
        return path.name, "failed", (error.parser, cause, text)
    changed = {key: value for key, value in caches.items() if before.get(key, unset) is not value}
    return path.name, "ok", (experiment, changed)


def _fork_context() -> Optional[Any]:
    """The fork start method, or None where the platform lacks it (Windows)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return multiprocessing.get_context("fork")


def _distinct_key(value: Any) -> Any:
    """A hashable stand-in for a param value, so lists and mappings can be counted too."""
    try:
        hash(value)
        return value
    except TypeError:
        return ("<unhashable>", repr(value))


def varying_params(experiments: Iterable[Experiment], concise: bool = True, order: Sequence[str] = ()) -> List[str]:
    """Names of the params worth a column: those with 2+ distinct values (all if not concise), in
    `order` (the sweep's, T4), then the others sorted.

    `_`-params (name, output, time, scripts) are bookkeeping and never shown. As in 0.5.9, an
    experiment that lacks a param does not count as a distinct value.
    """
    values: Dict[str, set] = {}
    for experiment in experiments:
        for key, value in experiment.param.items():
            if not str(key).startswith("_"):
                values.setdefault(key, set()).add(_distinct_key(value))
    position = {key: place for place, key in enumerate(order)}
    return sorted((key for key, seen in values.items() if not concise or len(seen) > 1),
                  key=lambda key: (position.get(key, len(position)), str(key)))


class ParserRunner:
    """Parsers registered with `add`, run with `exam` over directories into `experiments`."""

    def __init__(self) -> None:
        self.exams: List[Parser] = []
        self.caches: Dict[str, Any] = {}
        self.experiments: Dict[str, Experiment] = {}

    def add(self, func: Parser) -> Parser:
        """Register a parser; parsers run in the order added, each at most once per directory."""
        if func not in self.exams:
            self.exams.append(func)
        return func

    def exam(self, output: Union[str, Path] = "output", regex: str = ".*", verbose: bool = False,
             workers: int = 0) -> None:
        """Run every parser on every experiment of `output` whose directory name matches `regex`."""
        if not os.path.isdir(output):
            raise FileNotFoundError(f"no output directory '{output}'")
        self.exam_dirs(experiment_dirs(output, regex), verbose, workers)

    def exam_dirs(self, paths: List[Path], verbose: bool = False, workers: int = 0) -> None:
        """Run every parser on each of these experiment directories."""
        context = _fork_context() if workers > 0 else None
        if workers > 0 and context is None:
            print("note: parallel exam needs the 'fork' start method; examining serially")
        if context is not None and len(paths) > 1:
            self._exam_parallel(paths, verbose, min(workers, len(paths)), context)
        else:
            self._exam_serial(paths, verbose)

    def _exam_serial(self, paths: List[Path], verbose: bool) -> None:
        for path in paths:
            try:
                params = read_param(path)
            except FileNotFoundError:
                self._note_missing(path)
                continue
            except _BadParam as error:
                print(f"skip {error}", file=sys.stderr)
                continue
            if verbose:
                print(path.name)
            experiment = self.experiments.setdefault(path.name, Experiment(cache={}, metric={}, param={}))
            experiment.param.update(params)
            _apply(self.exams, path, experiment, self.caches)

    def _exam_parallel(self, paths: List[Path], verbose: bool, workers: int, context: Any) -> None:
        """Fork `workers` processes once; merge their results in directory order (deterministic)."""
        chunksize = max(1, len(paths) // (workers * 8))
        initargs = (self.exams, self.experiments, self.caches)
        failure: Optional[Exception] = None  # raised once every task is back (see below)
        with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
            results = pool.imap(_work, [str(path) for path in paths], chunksize)
            while True:
                try:
                    name, outcome, payload = next(results)
                except StopIteration:
                    break
                except multiprocessing.pool.MaybeEncodingError as error:
                    failure = failure or RuntimeError(
                        "a parser stored a value that cannot be sent back from a worker process; store "
                        f"plain data or use workers=0 ({error})")
                    continue
                path = paths[0].parent / name
                if failure is not None:
                    continue
                if outcome == "missing":
                    self._note_missing(path)
                elif outcome == "corrupt":
                    print(f"skip {payload}", file=sys.stderr)
                elif outcome == "failed":
                    parser, cause, text = payload
                    cause.__cause__ = _WorkerTraceback(text)
                    failure = ExamineError(path, parser, cause)
                    failure.__cause__ = cause
                else:
                    if verbose:
                        print(name)
                    self._merge(name, *payload)
        # Raised only now: leaving the pool with tasks in flight terminates it, and a terminate
        # that races its task handler can hang (seen once in the test suite).
        if failure is not None:
            raise failure

    def _merge(self, name: str, experiment: Experiment, caches: dict) -> None:
        known = self.experiments.setdefault(name, Experiment(cache={}, metric={}, param={}))
        known.param.update(experiment.param)
        known.metric.update(experiment.metric)
        known.cache.update(experiment.cache)
        self.caches.update(caches)

    @staticmethod
    def _note_missing(path: Path) -> None:
        print(f"skip {path}: no 'param' file")

def _natural_key(name: str) -> List[Union[int, str]]:
    """Sort key that orders `retry2` before `retry10`; timestamps sort as they do as text."""
    parts = re.split(r"(\d+)", name)  # text at even positions, digit runs at odd ones
    return [int(part) if position % 2 else part for position, part in enumerate(parts)]


def latest_log(command: str, output_dir: Union[str, Path], index: int = -1) -> Optional[Path]:
    """The `index`-th of the sorted `log.<command>.*` files of an experiment; -1 is the newest.

    Log names carry a `YYYYmmdd.HHMMSS` stamp (and maybe a retry suffix), so sorting them is
    sorting by time. None when the directory has fewer logs than `index` asks for.
    """
    if not isinstance(index, int):
        raise TypeError(f"index must be an int, not {type(index).__name__}")
    prefix = f"log.{command}."
    try:
        with os.scandir(output_dir) as entries:
            names = [entry.name for entry in entries if entry.name.startswith(prefix) and entry.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not -len(names) <= index < len(names):
        return None
    if len(names) > 1:
        names.sort(key=_natural_key)
    return Path(output_dir, names[index])
