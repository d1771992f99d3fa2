"""`--keep-changed` written down (SPEC T5, T10): each kept experiment's `param` is given the values
it is now taken to have, and a `_kept` entry says when, what they were before and which command
lines the results now stand for. The next review finds nothing changed, so the question is not
asked again until the config changes once more; a table grouped by a param added since keeps
every row. The params stay top-level keys, as mlrunner 0.5.9 and the Examiner read them.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence

from .resume import Review, line_now
from ..run.state import KEPT, PARAM, STAT, Corrupt, locked, read_record, record_path, write_record
from .sweep import Plan
from .template import Template

MAX_KEPT = 20  # entries kept in `_kept`, the newest


def keep_changes(plan: Plan, reviews: Sequence[Review], templates: Dict[str, Template], no_subdir: bool) -> int:
    """Write down the kept change of every experiment whose finished commands' config changed;
    returns how many. An experiment whose records changed since the review is left as it is."""
    kept = 0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for task, verdict in zip(plan.tasks, reviews):
        if not verdict.changed or verdict.problems:
            continue
        param_path = record_path(task.output, PARAM, task.name, no_subdir)
        with locked(task.output):
            try:
                param = read_record(param_path)
                stat = read_record(record_path(task.output, STAT, task.name, no_subdir))
            except (Corrupt, OSError):
                continue
            if param:
                write_record(param_path, _kept(task, param, stat, templates, verdict.changed, stamp))
                kept += 1
    return kept


def _kept(task: Any, param: Dict[str, Any], stat: Dict[str, Any], templates: Dict[str, Template],
          commands: List[str], stamp: str) -> Dict[str, Any]:
    """`param` with the task's values now and one more `_kept` entry (`was`: the values before,
    null for a param it did not have)."""
    params = task.params
    own = {k: v for k, v in param.items() if not str(k).startswith("_")}
    was = {k: own.get(k) for k in list(own) + [k for k in params if k not in own]
           if k not in params or k not in own or type(own[k]) is not type(params[k]) or own[k] != params[k]}
    lines = {}
    for command in commands:
        found = line_now(task, templates, param, stat, command)
        if found is not None:
            lines[command] = found[1]
    entries = param.get(KEPT) if isinstance(param.get(KEPT), list) else []
    entry = {"time": stamp, "was": was, "lines": lines}
    bookkeeping = {k: v for k, v in param.items() if str(k).startswith("_")}
    return {**params, **bookkeeping, KEPT: (entries + [entry])[-MAX_KEPT:]}
