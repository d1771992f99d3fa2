"""Pure expansion: config -> the ordered task pool and each experiment's directory name (SPEC X1-X5)."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
import re
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .config import Config, Sweep, check_typos
from ..errors import UserError
from .names import safe_name
from .template import Template, log_name

MAX_TASKS = 10**7  # a plan holds each task in memory (a few hundred bytes): past this, say so first
MAX_VALUE_CHARS = 100


class Task:
    """One experiment: its directory, its params and the commands to run for it.

    Tasks of one sweep document share their `keys` and `commands` tuples, so a pool of 10^6
    tasks costs little more than its value tuples and names (X5).
    """

    __slots__ = ("index", "name", "output", "keys", "values", "commands", "named_by")

    def __init__(self, index: int, name: str, output: str, keys: Tuple[str, ...], values: tuple,
                 commands: Tuple[str, ...], named_by: Tuple[str, ...] = ()):
        self.index = index
        self.name = name
        self.output = output
        self.keys = keys
        self.values = values
        self.commands = commands
        self.named_by = named_by  # the params whose (maybe lossy) values are in the name (I1)

    @property
    def params(self) -> Dict[str, Any]:
        return dict(zip(self.keys, self.values))

    def rename(self, name: str, root: str, no_subdir: bool) -> None:
        self.name = name
        self.output = root if no_subdir else os.path.join(root, name)

    def render(self, templates: Dict[str, Template], run_time: str, resource: str, host: str,
               output: Optional[str] = None) -> Dict[str, str]:
        """Each command of the task with its placeholders filled for one worker (C6); `output`:
        another spelling of the task's directory, as a record holds it."""
        values = dict(self.params, _output=output or self.output, _name=self.name, _time=run_time,
                      _resource=resource, _host=host)
        return {command: templates[command].render(values) for command in self.commands}

    def log(self, command: str, run_time: str, no_subdir: bool) -> str:
        """The command's log path; under --no-subdir it carries the experiment's name (R9)."""
        return os.path.join(self.output, safe_name(log_name(command, run_time, self.name if no_subdir else None)))


class Plan:
    """The expanded pool plus what the console reports about it.

    A plan made with `expand(..., lazy=True)` may still be filling: `fill()` (in a thread) adds
    its tasks while a run already takes the first ones from `stream()`. Only a plan whose size is
    known in advance is made so (`total`); any other is whole when `expand` returns.
    """

    def __init__(self) -> None:
        self.tasks: List[Task] = []
        self.duplicates = 0
        self.orphans: Set[str] = set()
        self.total: Optional[int] = None  # the number of tasks, when known before they are all made
        self._pending: Optional[Iterator[int]] = None
        self._commands: Tuple[str, ...] = ()
        self._grown = threading.Condition()

    @property
    def command_count(self) -> int:
        if self._pending is not None:  # one document: its tasks all have the same commands
            return (self.total or 0) * len(self._commands)
        return sum(len(task.commands) for task in self.tasks)

    @property
    def filling(self) -> bool:
        return self._pending is not None

    def fill(self) -> None:
        """Make the tasks still to come; whoever waits in `stream` is woken as they arrive."""
        if self._pending is None:
            return
        for made in self._pending:
            if made % 256 == 1:  # the first task at once, then in batches: a wake-up costs
                with self._grown:
                    self._grown.notify_all()
        with self._grown:
            self._pending = None
            self._grown.notify_all()

    def stream(self) -> Iterator[Task]:
        """The tasks in order, waiting for those still being made."""
        position = 0
        while True:
            with self._grown:
                while position >= len(self.tasks) and self._pending is not None:
                    self._grown.wait()
                if position >= len(self.tasks):
                    return
            yield self.tasks[position]
            position += 1


def key_name(key: str) -> str:
    """`early-stop` -> `EaStop`, `max_tokens` -> `MaTokens`, as mlrunner 0.5.9 names them.

    Like 0.5.9, a leading part of two letters or fewer is kept as written (`lr_min` -> `lrMin`).
    """
    parts = key.split("-")
    if len(parts) == 1:
        parts = key.split("_")
    head = "".join(part[:2].title() if len(part) > 2 else part for part in parts[:-1])
    return head + parts[-1].title()


_value_names: Dict[Tuple[type, Any], str] = {}


def value_name(value: Any) -> str:
    """The value part of a directory name (X2); cached because paths are checked on disk."""
    if type(value) is int or type(value) is float:  # quicker than the cache
        return "%g" % value if abs(value) < 10**300 or type(value) is float else str(value)
    cache_key = (type(value), value)
    name = _value_names.get(cache_key)
    if name is None:
        if isinstance(value, bool):
            name = "T" if value else "F"
        elif isinstance(value, float) or (isinstance(value, int) and abs(value) < 10**300):
            name = "%g" % value
        elif isinstance(value, int):
            name = str(value)  # too large for %g
        elif os.path.exists(value):
            name = os.path.basename(value)[-MAX_VALUE_CHARS:]
        else:
            name = re.sub(r"^[/.]*", "", value).replace("/", "_")[-MAX_VALUE_CHARS:]
        _value_names[cache_key] = name = name.replace("\0", "_")
    return name


def experiment_name(keys: Sequence[str], values: Sequence[Any]) -> str:
    """`Key_value-Key_value`, or `default` for a document without params."""
    if not keys:
        return "default"
    return safe_name("-".join(f"{key_name(k)}_{value_name(v)}" for k, v in zip(keys, values)))


def same_value(a: Any, b: Any) -> bool:
    """Equal and of one type: `1`, `1.0` and `True` are different params."""
    return type(a) is type(b) and a == b


def hashed_name(name: str, pairs: Sequence[Tuple[str, Any]]) -> str:
    """The name an experiment gets when its plain name is taken by other params (X2, I1).

    The hash covers the params that name it, so that a changed default keeps the directory (and
    is seen as a change, I2) rather than starting a new one.
    """
    digest = hashlib.sha1(repr(tuple((k, _canonical((v,))) for k, v in pairs)).encode()).hexdigest()[:8]
    return safe_name(f"{name}-{digest}")


def _sample(lists: List[list], sample: int, rng: random.Random) -> Iterator[tuple]:
    """`sample` combinations of the product of `lists`, in the product's order (the last list
    varying fastest)."""
    sizes = [len(values) for values in lists]
    for index in sorted(rng.sample(range(math.prod(sizes)), min(sample, math.prod(sizes)))):
        combo = []
        for size, values in zip(reversed(sizes), reversed(lists)):
            index, digit = divmod(index, size)
            combo.append(values[digit])
        yield tuple(reversed(combo))


def _canonical(values: tuple) -> tuple:
    """Values as a dedup key; `True`, `1` and `1.0` render differently, so they must differ here."""
    return tuple(v if type(v) in (str, int) else (type(v).__name__, v) for v in values)


def _identity(keys: Tuple[str, ...], values: tuple) -> tuple:
    """The full param set, whatever the key order of the document it came from (X3). The types
    are part of it: `True`, `1` and `1.0` are equal in Python but name different experiments."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    ordered = tuple(values[i] for i in order)
    return tuple(keys[i] for i in order), ordered, tuple(map(type, ordered))


class _DocLayout:
    """How one sweep document's own params become a task's full, ordered param set."""

    def __init__(self, config: Config, sweep: Sweep, commands: Tuple[str, ...]):
        self.own = tuple(sweep.params)
        keys: List[str] = []
        for key in self.own:
            keys.extend(next(iter(config.aliases[key].values())) if key in config.aliases else [key])
        self.from_sweep = tuple(keys)
        self.defaults = tuple((k, v) for k, v in config.defaults.items() if k not in keys)
        self.default_values = tuple(v for _, v in self.defaults)
        self.keys = self.from_sweep + tuple(k for k, _ in self.defaults)
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
        self.sorted_keys = tuple(self.keys[i] for i in order)
        self.order: Optional[List[int]] = None if order == list(range(len(order))) else order
        self.aliases = [config.aliases.get(key) for key in self.own]
        self.plain = not any(self.aliases)
        # Cases of one alias may list their params in any order; read each in the first case's order.
        self.alias_keys = [tuple(next(iter(cases.values()))) if cases else () for cases in self.aliases]
        self.commands = commands
        self.named_by = tuple(key for key in self.own if key not in config.aliases)
        self._check(config, sweep)

    def _check(self, config: Config, sweep: Sweep) -> None:
        available = set(self.keys)
        for command in self.commands:
            template = config.templates[command]
            for param in sorted(template.params - available):
                raise UserError(f"template '{command}' needs '{param}', which neither this sweep "
                                "nor 'default' sets", config.path, sweep.line or template.line)
            for param in sorted(template.braced & available):
                if any(isinstance(v, bool) for v in self._possible_values(config, sweep, param)):
                    raise UserError(f"'{param}' is a bool: write [{param}] instead of {{{param}}} "
                                    f"in template '{command}'", config.path, template.line)

    def _possible_values(self, config: Config, sweep: Sweep, param: str) -> List[Any]:
        values = list(sweep.params.get(param, []))
        for key, cases in zip(self.own, self.aliases):
            if cases:
                values.extend(case[param] for case in cases.values() if param in case)
        if param in config.defaults and param not in self.from_sweep:
            values.append(config.defaults[param])
        return values

    def values(self, combo: tuple) -> tuple:
        if self.plain:
            return combo + self.default_values
        out: List[Any] = []
        for value, cases, keys in zip(combo, self.aliases, self.alias_keys):
            if cases is None:
                out.append(value)
            else:
                out.extend(cases[value][key] for key in keys)
        out.extend(self.default_values)
        return tuple(out)

    def identity(self, values: tuple) -> tuple:
        """`_identity(self.keys, values)`, with the sorting done once per document."""
        ordered = values if self.order is None else tuple(values[i] for i in self.order)
        return self.sorted_keys, ordered, tuple(map(type, ordered))


def check_size(config: Config, sweeps: Sequence[Sweep], sample: Optional[int], max_tasks: int) -> None:
    """Count the tasks before making any: a sweep of 10^9 would fill the memory and then fail."""
    sizes = [math.prod(len(values) for values in sweep.params.values()) for sweep in sweeps]
    total = sum(size if sample is None else min(sample, size) for size in sizes)
    if total > max_tasks:
        each = f" ({' + '.join(f'{size:,}' for size in sizes)})" if len(sizes) > 1 else ""
        raise UserError(f"the sweep has {total:,} combinations{each}, more than --max-tasks {max_tasks:,}: "
                        "each is kept in memory (a few hundred bytes); raise --max-tasks, or draw some with "
                        "--sample N", config.path)


def selected_commands(config: Config, sweep: Sweep, override: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """Commands of one sweep, in template order: `-c` wins over `_cmd`, which wins over all (C3)."""
    chosen = override or sweep.commands
    return tuple(c for c in config.templates if chosen is None or c in chosen)


def expand(config: Config, sweeps: Sequence[Sweep], output: str, *, commands: Optional[Sequence[str]] = None,
           sample: Optional[int] = None, sample_seed: Optional[int] = None, dedup: bool = True,
           no_subdir: bool = False, lazy: bool = False, max_tasks: Optional[int] = None) -> Plan:
    """Expand the sweeps, in file order, into the ordered task pool (X1-X4).

    Every document is checked first, so a mistake stops everything before a task exists. With
    `lazy`, a plan whose size is known in advance (one document, no alias, no value twice in a
    list: no task can be dropped or merged) is returned empty, for `Plan.fill` to make.
    """
    check_typos(config, list(sweeps))
    check_size(config, sweeps, sample, MAX_TASKS if max_tasks is None else max_tasks)
    plan = Plan()
    layouts = [_DocLayout(config, sweep, selected_commands(config, sweep, commands)) for sweep in sweeps]
    for sweep, layout in zip(sweeps, layouts):
        used = set().union(*(config.templates[c].params for c in layout.commands))
        plan.orphans.update(k for k in layout.from_sweep if k not in used)
    making = _make(plan, config, sweeps, layouts, output, sample, random.Random(sample_seed), dedup, no_subdir)
    if lazy and len(sweeps) == 1 and layouts[0].plain and all(
            len({(type(v), v) for v in values}) == len(values) for values in sweeps[0].params.values()):
        total = math.prod(len(values) for values in sweeps[0].params.values())
        plan.total = total if sample is None else min(sample, total)
        plan._pending, plan._commands = making, layouts[0].commands
    else:
        for _ in making:
            pass
        plan.total = len(plan.tasks)
    return plan


def _make(plan: Plan, config: Config, sweeps: Sequence[Sweep], layouts: List[_DocLayout], output: str,
          sample: Optional[int], rng: random.Random, dedup: bool, no_subdir: bool) -> Iterator[int]:
    """Add the tasks to `plan`, yielding the count so far after each."""
    by_name: Dict[str, Task] = {}
    seen: Set[tuple] = set()
    prefix = os.path.join(output, "")
    for sweep, layout in zip(sweeps, layouts):
        # Each value with its part of the directory name, worked out once per value, not per task.
        lists = list(sweep.params.values())
        parts = [[head + value_name(value) for value in values]
                 for head, values in ((f"{key_name(key)}_", values) for key, values in sweep.params.items())]
        if sample is None:  # two products in step: no Python work per task to pair them
            rows: Iterator[Tuple[tuple, tuple]] = zip(itertools.product(*lists), itertools.product(*parts))
        else:
            pairs = [list(zip(values, names)) for values, names in zip(lists, parts)]
            rows = ((tuple(v for v, _ in items), tuple(p for _, p in items))
                    for items in _sample(pairs, sample, rng))
        for combo, named in rows:
            values = layout.values(combo)
            key = layout.identity(values)
            name = safe_name("-".join(named)) if named else "default"
            earlier = by_name.get(name)
            if earlier is not None and _identity(earlier.keys, earlier.values) != key:
                # Other params, same name (a path basename, a cut value): keep them apart.
                pairs = [(k, v) for k, v in zip(layout.keys, values) if k in layout.named_by]
                name = hashed_name(name, pairs)
                earlier = by_name.get(name)
                if earlier is not None and _identity(earlier.keys, earlier.values) != key:  # alias cases cut alike
                    name = safe_name(f"{name}-{hashlib.sha1(repr(key).encode()).hexdigest()[:8]}")
                    earlier = by_name.get(name)
            if earlier is not None:
                # The same experiment again, perhaps with other commands: one task runs them all.
                merged = set(earlier.commands) | set(layout.commands)
                earlier.commands = tuple(c for c in config.templates if c in merged)
                continue
            if dedup and key in seen:
                plan.duplicates += 1
                continue
            seen.add(key)
            task = Task(len(plan.tasks), name, output if no_subdir else prefix + name, layout.keys, values,
                        layout.commands, layout.named_by)
            by_name[name] = task
            plan.tasks.append(task)
            yield len(plan.tasks)
