"""`early_stop:` of document 1, checked into one frozen value (SPEC A1).

`early_stop: {metric: val_loss, mode: min, step: 'epoch (\\d+)', rule: median, after: 3}`
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Pattern

KEYS = ("metric", "mode", "step", "rule", "after", "min_peers", "eta", "every")
RULES = ("median", "asha")
MODES = ("min", "max")


@dataclass(frozen=True)
class Settings:
    """What the runner needs to watch a command's log and ask a rule."""

    metric: str
    command: str  # the `metric:` entry's command: the one whose log is watched
    value_re: Pattern[str]
    step_re: Pattern[str]
    mode: str = "min"
    rule: str = "median"
    after: int = 1
    min_peers: int = 4
    eta: int = 3
    every: int = 1

    def better(self, a: float, b: float) -> bool:
        """Is `a` strictly better than `b`?"""
        return a < b if self.mode == "min" else a > b

    def describe(self) -> str:
        """One line for --dry-run and the run's start: the rule as it will be applied."""
        how = (f"median of >= {self.min_peers} peers at each step from {self.after}"
               + (f", every {self.every}" if self.every > 1 else "") if self.rule == "median"
               else f"asha, eta {self.eta}, rungs at {self.after}*{self.eta}^k, >= {self.min_peers} peers at a rung")
        return (f"early_stop: {self.metric} ({self.mode}, command {self.command}, step '{self.step_re.pattern}'): "
                f"{how}")


def _did_you_mean(word: str, choices: tuple) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(choices)})"


def _integer(raw: Dict[str, Any], key: str, default: int, least: int, fail: Callable[..., Exception]) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise fail(f"early_stop: '{key}' must be an integer >= {least}, not {value!r}", key)
    return value


def parse(raw: Any, metrics: Dict[str, Dict[str, str]], fail: Callable[..., Exception]) -> Settings:
    """Check `early_stop:`; `fail(message, *keys)` makes the one-line error at the key's line (C10)."""
    if not isinstance(raw, dict):
        raise fail("'early_stop' must be a mapping (metric, mode, step, rule, after, ...)")
    for key in raw:
        if key not in KEYS:
            raise fail(f"early_stop: unknown key '{key}'" + _did_you_mean(str(key), KEYS), key)
    if "metric" not in raw:
        raise fail("early_stop: 'metric' is required")
    metric = raw["metric"]
    if not isinstance(metric, str) or metric not in metrics:
        known = tuple(metrics)
        hint = _did_you_mean(str(metric), known) if known else " (define it under 'metric:' first)"
        raise fail(f"early_stop: unknown metric {metric!r}" + hint, "metric")
    if "step" not in raw and "step" not in metrics[metric]:
        raise fail(f"early_stop: 'step' is required (here, or on metric '{metric}')")
    step = raw.get("step", metrics[metric].get("step"))  # the series' own step serves (T13)
    try:
        step_re = re.compile(str(step))
    except re.error as error:
        raise fail(f"early_stop: bad 'step' regex: {error}", "step") from None
    if not isinstance(step, str) or step_re.groups < 1:
        raise fail("early_stop: the 'step' regex needs a (group) around the progress counter, e.g. 'epoch (\\d+)'",
                   "step")
    mode, rule = raw.get("mode", "min"), raw.get("rule", "median")
    if mode not in MODES:
        raise fail(f"early_stop: 'mode' must be min or max, not {mode!r}", "mode")
    if rule not in RULES:
        raise fail(f"early_stop: unknown rule {rule!r}" + _did_you_mean(str(rule), RULES), "rule")
    if rule == "asha" and "every" in raw:
        raise fail("early_stop: 'every' is for rule median; asha decides at its rungs (after * eta^k)", "every")
    if rule == "median" and "eta" in raw:
        raise fail("early_stop: 'eta' is for rule asha", "eta")
    return Settings(metric=metric, command=str(metrics[metric]["command"]),
                    value_re=re.compile(str(metrics[metric]["regex"])), step_re=step_re, mode=mode, rule=rule,
                    after=_integer(raw, "after", 1, 1, fail), min_peers=_integer(raw, "min_peers", 4, 1, fail),
                    eta=_integer(raw, "eta", 3, 2, fail), every=_integer(raw, "every", 1, 1, fail))


def refuse_backend(settings: Optional[Settings], slurm: bool) -> Optional[str]:
    """Why a run cannot apply `early_stop:` (None when it can): Slurm's array elements cannot see
    each other's values."""
    if settings is not None and slurm:
        return ("early_stop: not available with Slurm (array elements cannot see each other's values); "
                "remove 'early_stop:' or run without --slurm")
    return None
