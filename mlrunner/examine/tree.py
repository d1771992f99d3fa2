"""What the configs that made an output tree say about its table (SPEC T1, T4, T12).

The tree remembers its configs (origin.py). From them a table takes its `metric:` regexes, its
param columns in sweep order (an alias's case first, then the params it sets), the case of each
alias an experiment ran with, and which finished commands are `changed` (the config's params or
template differ from what ran), as `--status` and a rerun see it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..plan.config import Config, load, select_sweeps
from ..errors import UserError
from ..plan.origin import Source
from ..plan.sweep import same_value


class Tree:
    """An output tree and the configs that ran into it (none: a tree of records alone)."""

    def __init__(self, output: str, sources: Sequence[Source] = (), commands: Optional[Sequence[str]] = None,
                 max_tasks: Optional[int] = None):
        self.output = output
        self.commands = list(commands) if commands else None
        self.max_tasks = max_tasks
        self._tasks: Optional[Dict[str, Tuple[Any, Dict[str, Any]]]] = None
        self.configs: List[Tuple[Source, Config]] = [(s, load(s.path)) for s in sources if os.path.exists(s.path)]
        self.order: List[str] = []  # columns in sweep order: aliases and params
        self.aliases: Dict[str, Dict[Any, Dict[str, Any]]] = {}  # the aliases the sweeps use: name -> cases
        for source, config in self.configs:
            for sweep in select_sweeps(config, source.title):
                for key in sweep.params:
                    cases = config.aliases.get(key)
                    if cases:
                        self.aliases.setdefault(key, cases)
                    self._add([key] + (list(next(iter(cases.values()))) if cases else []))
            self._add(config.defaults)

    def _add(self, keys: Iterable[str]) -> None:
        self.order.extend(key for key in keys if key not in self.order)

    def metrics(self, steps: bool = False) -> Dict[str, Dict[str, str]]:
        """The `metric:` entries; with `steps` and `early_stop:`, a `step` column (A2)."""
        metrics: Dict[str, Dict[str, str]] = {}
        for _, config in self.configs:
            metrics.update(config.metrics)
            rule = config.early_stop
            if steps and rule is not None and "step" not in metrics:
                metrics["step"] = {"command": rule.command, "regex": rule.step_re.pattern}
        return metrics

    def digest(self) -> str:
        """What a row's `changed` depends on besides the experiment's own files: the configs'
        bytes, the titles that chose their sweeps and `-c`."""
        blake = hashlib.blake2b(digest_size=8)
        for source, _ in self.configs:
            with open(source.path, "rb") as stream:
                blake.update(stream.read())
            blake.update(repr((source.title, source.no_subdir, self.commands)).encode())
        return blake.hexdigest()

    def cases(self, params: Dict[str, Any]) -> Dict[str, Any]:
        """alias -> the case whose params these are (None when no case sets exactly them)."""
        found = {}
        for alias, cases in self.aliases.items():
            found[alias] = next((case for case, values in cases.items()
                                 if all(key in params and same_value(params[key], value)
                                        for key, value in values.items())), None)
        return found

    def changed(self, name: str, param: Dict[str, Any], stat: Dict[str, Any]) -> List[str]:
        """The finished commands of experiment `name` whose config changed (I2), from its records
        as the caller read them; the plan is made at the first call, only when one is needed."""
        from ..plan.resume import changes
        if self._tasks is None:
            self._tasks = self._plan()
        found = self._tasks.get(name)
        return changes(found[0], found[1], param, stat)[0] if found else []

    def _plan(self) -> Dict[str, Tuple[Any, Dict[str, Any]]]:
        """name -> (task, templates) of every experiment the configs make."""
        from ..plan.sweep import expand
        tasks: Dict[str, Tuple[Any, Dict[str, Any]]] = {}
        for source, config in self.configs:
            try:
                plan = expand(config, select_sweeps(config, source.title), self.output, commands=self.commands,
                              no_subdir=source.no_subdir, max_tasks=self.max_tasks)
            except UserError:
                continue  # the table is still worth showing; --status says what is wrong
            tasks.update((task.name, (task, config.templates)) for task in plan.tasks)
        return tasks
