"""The public `Examiner`: parsed experiments as a table (SPEC E1-E6).

Parsers run as `parsers.py` runs them; `Examiner.from_output` reads an output tree alone, with the
`metric:` regexes of the config that made it (`metrics.py`, `tree.py`), and its table's columns
are `--examine`'s (`table.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, List, Optional, Tuple, Union

from .parsers import ExamineError, Experiment, ParserRunner, latest_log, varying_params

__all__ = ["ExamineError", "Examiner", "Experiment", "latest_log"]


class Examiner(ParserRunner):
    """A container of parsed experiments: register parsers with `add`, run them with `exam`.

    A parser is `func(output_dir: Path, experiment: Experiment, caches: dict)`; it fills
    `experiment.metric` (a table column each), `experiment.cache` (per-experiment scratch) and
    `caches` (shared by all experiments). Calling `exam` again merges into the same experiments.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tree: Any = None  # tree.Tree, for an Examiner made by `from_output`
        self.output: Optional[Path] = None

    @classmethod
    def from_output(cls, output: Union[str, Path] = "output", yaml: Optional[str] = None,
                    title: Optional[str] = None, regex: str = ".*", workers: int = 0) -> "Examiner":
        """An Examiner of an output tree alone (T12), examined: the `metric:` regexes of the config
        that made it (or of `yaml`; `title` picks one of several), its params in sweep order with
        each alias's case, and per experiment its directory and status (`changed` as `--status`
        says). Its table's columns: `experiment`, `directory`, alias cases and params, metrics,
        `status`. Parsers `add`ed later run on `exam(output)` and add their metrics to the same rows.
        """
        from ..plan.origin import Source, remembered
        from .metrics import examined
        from .tree import Tree
        if not os.path.isdir(output):
            raise FileNotFoundError(f"no output directory '{output}'")
        sources = [Source(yaml, title)] if yaml else [s for s in remembered(str(output))
                                                     if title is None or s.title == title]
        examiner = cls()
        examiner.tree = Tree(str(output), sources)
        examiner.output = Path(output)
        examiner.experiments.update(examined(str(output), examiner.tree.metrics(), regex=regex, workers=workers,
                                             tree=examiner.tree))
        return examiner

    def rows(self, concise: bool = True) -> Tuple[List[str], List[List[Any]]]:
        """The table as plain data: headers (varying params, then metrics) and one row per
        experiment, in directory-name order; from `from_output`, the columns its docstring lists."""
        names = sorted(self.experiments)
        experiments = [self.experiments[name] for name in names]
        metrics = sorted({key for experiment in experiments for key in experiment.metric}, key=str)
        if self.tree is not None:
            from .table import build
            known = list(self.tree.metrics())
            ordered = [m for m in known if m in metrics] + [m for m in metrics if m not in known]
            headers, rows, _ = build(dict(zip(names, experiments)), ordered, self.tree, concise=concise)
            directories = [str(Path(self.output or ".", name)) for name in names]
            return headers[:1] + ["directory"] + headers[1:], [row[:1] + [d] + row[1:] for row, d in zip(rows, directories)]
        params = varying_params(experiments, concise)
        rows = [[experiment.param.get(key) for key in params] + [experiment.metric.get(key) for key in metrics]
                for experiment in experiments]
        return params + metrics, rows

    def table(self, concise: bool = True, print_tsv: bool = False) -> Any:
        """One row per experiment, in directory-name order, each carrying the experiment's name.

        Returns a pandas DataFrame indexed by the experiment names when pandas is installed, else
        a list of {column: value} dicts whose `.name` is the experiment's (as a DataFrame row's
        is). None where an experiment lacks the column. `print_tsv` also prints the table as TSV,
        with missing values shown as `None` like 0.5.9 did.
        """
        headers, rows = self.rows(concise)
        names = sorted(self.experiments)
        if print_tsv:
            print("\t".join(str(header) for header in headers))
            for row in rows:
                print("\t".join(str(value) for value in row))
        try:
            import pandas
        except ImportError:
            return [Row(zip(headers, row), name=name) for name, row in zip(names, rows)]
        frame = pandas.DataFrame(rows, columns=headers, index=names)
        frame.index.name = None if "experiment" in headers else "experiment"
        return frame


class Row(dict):
    """One experiment's row of `Examiner.table()` without pandas: its columns, and its name."""

    def __init__(self, items: Iterable[Tuple[str, Any]], name: str):
        super().__init__(items)
        self.name = name
