"""What an output tree remembers of the config files that ran into it (SPEC T1, R5).

A run copies its config to `<output>/params.yaml` (`params.yaml.<title>` with `-t`) and keeps
`<output>/.mlrunner-config` (YAML): per title, the config's absolute path, the copy's name and
whether the run used `--no-subdir`. The views (`--status`, `--examine`, `--report`) given `-o`
without `-y` read it, so that they answer from the config that made the tree, from any directory:
the file at the remembered path while it is there (an edit since shows as `changed`, as a rerun
would see it), else the copy. The hints mlrunner prints repeat the flags that found the config.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..options import Options
from ..run.detach import _invocation
from ..run.state import locked, read_yaml, write_record

RECORD = ".mlrunner-config"
COPY = "params.yaml"
DEFAULT_YAML = "params.yaml"
DEFAULT_OUTPUT = "output"


@dataclass
class Source:
    """One config that ran into the tree: the file to read and the title it ran with."""

    path: str
    title: Optional[str]
    no_subdir: bool = False


def copy_name(title: Optional[str]) -> str:
    """`params.yaml`, or `params.yaml.<title>` for a run with `-t` (R5)."""
    return COPY + (f".{title}" if title else "")


def remember(config_path: str, output: str, title: Optional[str], no_subdir: bool) -> None:
    """Copy the config beside the experiments and note where it came from, one entry per title."""
    os.makedirs(output, exist_ok=True)
    target = os.path.join(output, copy_name(title))
    temporary = f"{target}.{os.getpid()}.tmp"
    shutil.copyfile(config_path, temporary)
    os.replace(temporary, target)
    record = os.path.join(output, RECORD)
    with locked(output):  # two runs starting on one tree each keep their entry
        data = read_yaml(record)
        configs = [c for c in data.get("configs") or [] if isinstance(c, dict) and c.get("title") != title]
        configs.append({"title": title, "path": os.path.abspath(config_path), "copy": copy_name(title),
                        "no_subdir": no_subdir, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        write_record(record, {"configs": configs}, sort_keys=False)


def remembered(output: str) -> List[Source]:
    """The configs that ran into `output`, newest last; [] for a tree an older mlrunner made."""
    try:
        data = read_yaml(os.path.join(output, RECORD))
    except OSError:
        return []
    sources = []
    for entry in data.get("configs") or []:
        if not isinstance(entry, dict):
            continue
        title = entry.get("title") if isinstance(entry.get("title"), str) else None
        path = entry.get("path")
        copy = os.path.join(output, copy_name(title))
        chosen = path if isinstance(path, str) and os.path.isfile(path) else copy
        if os.path.isfile(chosen):
            sources.append(Source(chosen, title, entry.get("no_subdir") is True))
    return sources


def resolve(args: Options) -> List[Source]:
    """The configs a view answers from: `-y` (or ./params.yaml) when given or when the tree
    remembers none; else those the tree remembers (`-t` picks one title)."""
    if args.yaml is not None:
        return [Source(args.yaml, args.title, args.no_subdir)]
    sources = remembered(args.output)
    if args.title is not None:
        sources = [s for s in sources if s.title == args.title]
    return sources or [Source(DEFAULT_YAML, args.title, args.no_subdir)]


def repeat(args: Options, *flags: str, config: bool = True) -> str:
    """The command line that repeats this one's `-y`/`-t`/`-c`/`-o` with `flags`: what a hint prints.
    `config=False` for a view, which finds the config through the tree (T1)."""
    words = [_invocation()]
    yaml_path = args.yaml
    if config and yaml_path not in (None, DEFAULT_YAML):
        words += ["-y", shlex.quote(yaml_path)]
    if config and args.title:
        words += ["-t", shlex.quote(args.title)]
    if config and args.command:
        words += ["-c", *map(shlex.quote, args.command)]
    words += ["-o", shlex.quote(args.output or DEFAULT_OUTPUT)]
    return " ".join(words + list(flags))


def metrics_of(sources: List[Source], missing_ok: bool = False) -> Dict[str, Dict[str, str]]:
    """The `metric:` entries of the sources; a config with a mistake is the usual one-line error.
    `missing_ok`: a source that is not there adds none (`--report` draws the records alone)."""
    from . import config as config_module
    metrics: Dict[str, Dict[str, str]] = {}
    for source in sources:
        if missing_ok and not os.path.exists(source.path):
            continue
        metrics.update(config_module.load(source.path).metrics)
    return metrics
