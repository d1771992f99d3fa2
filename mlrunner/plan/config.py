"""Read and check `params.yaml`: every mistake becomes one `file:line: message` (SPEC C1-C10)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import UserError, shown
from ..run.gpus import GPU_ID_HINT, gpu_id
from .template import Template
from .yamldocs import Doc, read_docs

ALLOWED_KEYS = ("template", "default", "resource", "alias", "hosts", "sync", "metric", "slurm", "gpu", "early_stop",
                "code")
SWEEP_RESERVED = ("_title", "_cmd")
NAME_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
SHELL_VAR_RE = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")
SCALARS = (str, int, float, bool)


@dataclass
class Sweep:
    """One sweep document: param -> list of values, in document order."""

    params: Dict[str, list]
    title: Optional[str] = None
    commands: Optional[List[str]] = None
    line: Optional[int] = None
    key_lines: Dict[str, Optional[int]] = field(default_factory=dict)  # where each param key is


@dataclass
class Config:
    path: str
    templates: Dict[str, Template]
    defaults: Dict[str, Any] = field(default_factory=dict)
    resources: Optional[List[str]] = None  # None means `auto`
    aliases: Dict[str, Dict[Any, Dict[str, Any]]] = field(default_factory=dict)
    hosts: Dict[str, Any] = field(default_factory=dict)
    sync: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Dict[str, str]] = field(default_factory=dict)
    slurm: Any = None  # executors.slurm.settings.Settings when document 1 has `slurm:` (S1)
    gpu: Any = None  # allocator.GpuPolicy when document 1 has `gpu:` (G1)
    early_stop: Any = None  # early_stop.settings.Settings when document 1 has `early_stop:` (A1)
    code: Any = None  # snapshot.Settings when document 1 asks for `code: snapshot` (P2)
    sweeps: List[Sweep] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)  # printed by the CLI; nothing stops for them


def _suggest(word: Any, choices: Tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1) if isinstance(word, str) and len(word) < 200 else []
    return f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(choices)})"


class _Checker:
    """Validation helpers that all report `file:line:` of the offending key."""

    def __init__(self, path: str, doc: Doc):
        self.path = path
        self.doc = doc

    def fail(self, message: str, *keys: Any) -> UserError:
        return UserError(message, self.path, self.doc.line(*keys))

    def mapping(self, value: Any, what: str, *keys: Any) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{what} must be a mapping", *keys)
        return value

    def name(self, name: Any, what: str, *keys: Any) -> str:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise self.fail(f"{what} {shown(name)} may only use letters, digits, '_' and '-'", *keys)
        return name

    def scalar(self, value: Any, what: str, *keys: Any) -> Any:
        if value is None:
            raise self.fail(f"{what} has no value", *keys)
        if not isinstance(value, SCALARS):
            kind = "list" if isinstance(value, list) else type(value).__name__
            raise self.fail(f"{what} must be a str, int, float or bool, not a {kind}", *keys)
        return value


def _parse_templates(check: _Checker, data: dict) -> Dict[str, Template]:
    if "template" not in data:
        raise UserError("'template' is required in the first document (command name -> command line)",
                        check.path, check.doc.line())
    raw = check.mapping(data["template"], "'template'", "template")
    if not raw:
        raise check.fail("'template' needs at least one command", "template")
    templates = {}
    for name, text in raw.items():
        check.name(name, "command name", "template", name)
        if not isinstance(text, str) or not text.strip():
            raise check.fail(f"template '{name}' must be a non-empty string", "template", name)
        try:
            templates[name] = Template(name, text, check.doc.line("template", name))
        except ValueError as error:
            raise check.fail(str(error), "template", name) from None
    return templates


def _parse_aliases(check: _Checker, raw: Any) -> Dict[Any, Dict[Any, Dict[str, Any]]]:
    aliases = check.mapping(raw, "'alias'", "alias")
    for alias, cases in aliases.items():
        check.name(alias, "alias name", "alias", alias)
        check.mapping(cases, f"alias '{alias}'", "alias", alias)
        if not cases:
            raise check.fail(f"alias '{alias}' needs at least one case", "alias", alias)
        first_keys = None
        for case, group in cases.items():
            check.mapping(group, f"alias '{alias}' case '{case}'", "alias", alias, case)
            for param, value in group.items():
                check.name(param, "param name", "alias", alias, case, param)
                check.scalar(value, f"alias '{alias}' case '{case}' param '{param}'", "alias", alias, case, param)
            if first_keys is None:
                first_keys = set(group)
            elif set(group) != first_keys:
                raise check.fail(f"all cases of alias '{alias}' must set the same params "
                                 f"({', '.join(sorted(first_keys))})", "alias", alias, case)
    return aliases


def _parse_resources(check: _Checker, raw: Any, hosts: bool = False) -> Optional[List[str]]:
    """`resource: []` is allowed beside `hosts:` only: no local worker, hosts only (H1)."""
    if raw == "auto":
        return None
    if not isinstance(raw, list):
        raise check.fail("'resource' must be a list (one entry per worker) or 'auto'", "resource")
    if not raw and not hosts:
        raise check.fail("'resource' needs at least one entry (an empty list only beside 'hosts:')", "resource")
    entries = [gpu_id(entry) for entry in raw]
    for entry, checked in zip(raw, entries):
        if checked is None:
            raise check.fail(f"resource entry {shown(entry)} is not a GPU id ({GPU_ID_HINT})", "resource")
    return entries


METRIC_KEYS = ("command", "regex", "step")


def _regex(check: _Checker, text: Any, what: str, group: str, *keys: Any) -> "re.Pattern[str]":
    """A regex with a (group) around `group`: a metric's value, or the progress counter of its lines (T13)."""
    try:
        pattern = re.compile(str(text))
    except re.error as error:
        raise check.fail(f"{what}: bad regex: {error}", *keys) from None
    if pattern.groups < 1:
        raise check.fail(f"{what}: the regex needs a (group) around the {group}", *keys)
    return pattern


def _parse_metrics(check: _Checker, raw: Any, templates: Dict[str, Template]) -> Dict[str, Dict[str, str]]:
    """name -> {command, regex} and, for a series (T13), `step`: the regex of the progress counter."""
    metrics = check.mapping(raw, "'metric'", "metric")
    for name, spec in metrics.items():
        check.mapping(spec, f"metric '{name}'", "metric", name)
        for key in spec:
            if key not in METRIC_KEYS:
                raise check.fail(f"metric '{name}': unknown key {shown(key)}" + _suggest(key, METRIC_KEYS),
                                 "metric", name, key)
        if not {"command", "regex"} <= set(spec):
            raise check.fail(f"metric '{name}' needs the keys 'command' and 'regex' (and 'step' for a series)",
                             "metric", name)
        if not isinstance(spec["command"], str) or spec["command"] not in templates:
            raise check.fail(f"metric '{name}': unknown command {shown(spec['command'])}"
                             + _suggest(spec["command"], tuple(templates)), "metric", name)
        _regex(check, spec["regex"], f"metric '{name}'", "value", "metric", name)
        if "step" in spec:
            if not isinstance(spec["step"], str):
                raise check.fail(f"metric '{name}': 'step' must be a regex, e.g. 'epoch (\\d+)'", "metric", name, "step")
            _regex(check, spec["step"], f"metric '{name}': 'step'", "progress counter, e.g. 'epoch (\\d+)'",
                   "metric", name, "step")
    return metrics


def _parse_sweep(path: str, doc: Doc, templates: Dict[str, Template], aliases: dict) -> Sweep:
    check = _Checker(path, doc)
    data = check.mapping(doc.data, "a sweep document")
    sweep = Sweep(params={}, line=doc.line())
    for key, value in data.items():
        if key == "_title":
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise check.fail("'_title' must be a string", key)
            sweep.title = str(value)
        elif key == "_cmd":
            commands = [value] if isinstance(value, str) else value
            if not isinstance(commands, list) or not commands:
                raise check.fail("'_cmd' must be a command name or a list of them", key)
            for command in commands:
                if not isinstance(command, str) or command not in templates:
                    raise check.fail(f"'_cmd': unknown command {shown(command)}" + _suggest(command, tuple(templates)),
                                     key)
            sweep.commands = commands
        else:
            if isinstance(key, str) and key.startswith("_"):
                raise check.fail(f"unknown reserved key '{key}'" + _suggest(key, SWEEP_RESERVED), key)
            check.name(key, "param name", key)
            values = value if isinstance(value, list) else [value]
            if not values:
                raise check.fail(f"'{key}' has an empty list of values", key)
            for item in values:
                if type(item) not in SCALARS:  # the check below, without its message per value
                    check.scalar(item, f"'{key}'", key)
                if key in aliases and item not in aliases[key]:
                    raise check.fail(f"'{key}': {shown(item)} is not a case of alias '{key}' "
                                     f"(cases: {', '.join(map(str, aliases[key]))})", key)
            sweep.params[key] = values
            sweep.key_lines[key] = doc.line(key)
    setter: Dict[str, str] = {}  # param -> the sweep key that sets it (itself, or an alias)
    for key in sweep.params:
        for param in next(iter(aliases[key].values())) if key in aliases else [key]:
            if param in setter:
                first, second = sorted((setter[param], key), key=lambda k: k in aliases)
                how = "directly" if first not in aliases else f"by alias '{first}'"
                raise check.fail(f"'{param}' is set both {how} and by alias '{second}'; keep one", key)
            setter[param] = key
    return sweep


def load(path: str) -> Config:
    """Read `path` and check everything that can be checked without expanding the sweeps."""
    docs = read_docs(path)
    if not docs:
        raise UserError("the file is empty; it needs at least a first document with 'template'", path)
    check = _Checker(path, docs[0])
    data = check.mapping(docs[0].data, "the first document")
    for key in data:
        if key not in ALLOWED_KEYS:
            raise check.fail(f"unknown key {shown(key)}" + _suggest(key, ALLOWED_KEYS), key)
    templates = _parse_templates(check, data)
    config = Config(path=path, templates=templates)

    config.aliases = _parse_aliases(check, data.get("alias") or {})
    for name, template in templates.items():
        for alias in template.params & set(config.aliases):
            raise check.fail(f"alias '{alias}' cannot be a placeholder in template '{name}'; "
                             "use the params it sets", "template", name)
    defaults = check.mapping(data.get("default") or {}, "'default'", "default")
    for param, value in defaults.items():
        check.name(param, "param name", "default", param)
        check.scalar(value, f"default '{param}'", "default", param)
    config.defaults = defaults
    if "resource" in data:
        config.resources = _parse_resources(check, data["resource"], bool(data.get("hosts")))
    config.hosts = check.mapping(data.get("hosts") or {}, "'hosts'", "hosts")
    config.sync = check.mapping(data.get("sync") or {}, "'sync'", "sync")
    config.metrics = _parse_metrics(check, data.get("metric") or {}, templates)
    if "early_stop" in data:
        from ..run.early_stop.settings import parse as parse_early_stop
        config.early_stop = parse_early_stop(data["early_stop"], config.metrics,
                                             lambda message, *keys: check.fail(message, "early_stop", *keys))
        watched = config.metrics[config.early_stop.metric]
        if "step" not in watched:  # the metric early_stop watches is a series with its step (T13)
            config.metrics[config.early_stop.metric] = dict(watched, step=config.early_stop.step_re.pattern)
    if "gpu" in data:
        from ..run.gpu_policy import parse_policy
        config.gpu = parse_policy(data["gpu"], tuple(templates), check.fail)
    if "code" in data:
        from ..run.snapshot import parse as parse_code
        config.code = parse_code(data["code"], check.fail)
    if "slurm" in data:
        from ..backends.slurm.settings import parse as parse_slurm
        config.slurm = parse_slurm(data["slurm"], path, lambda *keys: check.doc.line("slurm", *keys))
    config.sweeps = [_parse_sweep(path, doc, templates, config.aliases) for doc in docs[1:] if doc.data is not None]
    config.warnings = _shell_var_warnings(config)
    return config


def _shell_var_warnings(config: Config) -> List[str]:
    """`${lr}` is the shell's (C6), so a Hydra habit would silently pass an empty string."""
    params = set(config.defaults)
    for sweep in config.sweeps:
        for key in sweep.params:
            params.update(next(iter(config.aliases[key].values())) if key in config.aliases else [key])
    warnings = []
    for name, template in config.templates.items():
        for variable in dict.fromkeys(SHELL_VAR_RE.findall(template.text)):
            if variable in params:
                where = f"{config.path}:{template.line}" if template.line else config.path
                warnings.append(f"{where}: warning: template '{name}': '${{{variable}}}' is a shell variable, "
                                f"not the param '{variable}' (write '{{{variable}}}' for its value)")
    return warnings


def close_placeholder(orphan: str, config: Config) -> Optional[str]:
    """The defaulted placeholder a sweep key was probably meant to set (`lrr` -> `lr`), if any.

    Only placeholders with a default qualify: a typo in their name runs every experiment with
    the default instead of the swept values, and nothing else would say so.
    """
    placeholders = sorted({p for t in config.templates.values() for p in t.params if p in config.defaults})
    close = difflib.get_close_matches(orphan, placeholders, n=1, cutoff=0.6)
    return close[0] if close else None


def one_edit(a: str, b: str) -> bool:
    """`a` becomes `b` by one insertion, deletion, substitution or swap of neighbours."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    if len(a) < len(b):
        return a[start:] == b[start + 1:]
    swapped = a[start:start + 2] == b[start:start + 2][::-1] and a[start + 2:] == b[start + 2:]
    return a[start + 1:] == b[start + 1:] or swapped


def check_typos(config: Config, sweeps: List[Sweep]) -> None:
    """A sweep key no template uses, one edit from a param one does (`lerning_rate`), is a typo
    whose sweep would run without it: refused (T7). Names under 3 letters are too close to all."""
    used = sorted({p for t in config.templates.values() for p in t.params})
    for sweep in sweeps:
        for key in sweep.params:
            if key in used or key in config.aliases or len(key) < 3:
                continue
            near = [param for param in used if len(param) >= 3 and one_edit(key, param)]
            if near:
                raise UserError(f"sweep key '{key}' is used by no template (did you mean '{near[0]}'?); "
                                "correct it, or rename it if it only names the directories",
                                config.path, sweep.key_lines.get(key) or sweep.line)


def select_sweeps(config: Config, title: Optional[str]) -> List[Sweep]:
    """The sweeps to run: all of them, those with `_title: title`, or the defaults alone (C5)."""
    if title is not None:
        chosen = [sweep for sweep in config.sweeps if sweep.title == title]
        if not chosen:
            titles = sorted({s.title for s in config.sweeps if s.title is not None})
            known = f"titles in the file: {', '.join(titles)}" if titles else "no document has a '_title'"
            raise UserError(f"no sweep document has _title '{title}' ({known})", config.path)
        return chosen
    return config.sweeps or [Sweep(params={})]
