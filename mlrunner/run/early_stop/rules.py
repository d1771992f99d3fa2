"""What every stopping rule shares: the decision it returns and the pure helpers on a series.

A series is one experiment's {step: value}, in the order its log printed them. A rule is a small
class with `decide(values, peers) -> Decision`, asked at each new step of `values`; `peers` are the
other experiments' series as far as they have got. The decision's `why` is written into the
stopped command's record, so that it can be checked after the fact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

Series = Dict[float, float]


@dataclass
class Decision:
    """`stop` or continue, at `step`, with the values that decided it."""

    stop: bool
    step: float
    why: Dict[str, Any] = field(default_factory=dict)

    def record(self) -> Dict[str, Any]:
        """What the stopped command's run keeps in `stat` (A2)."""
        return {"early_stop": dict(self.why, step=self.step)}

    def reason(self) -> str:
        """One line for the console and the record's `reason`."""
        why = self.why
        if why.get("rule") == "median":
            return (f"early_stop median: best {why['value']:g} at step {self.step:g} worse than the median "
                    f"{why['median']:g} of {why['peers']} peers")
        return (f"early_stop asha: {why['value']:g} at rung {why['rung']:g} not in the top {why['keep']} "
                f"of {why['reached']} (cutoff {why['cutoff']:g})")


def best(values: Iterable[float], mode: str) -> Optional[float]:
    """The best of `values` (None when empty).

    >>> best([3.0, 1.0, 2.0], "min"), best([3.0, 1.0, 2.0], "max"), best([], "min")
    (1.0, 3.0, None)
    """
    values = list(values)
    if not values:
        return None
    return min(values) if mode == "min" else max(values)


def best_until(series: Series, step: float, mode: str) -> Optional[float]:
    """The best value of `series` at steps up to `step`.

    >>> best_until({1: 5.0, 2: 3.0, 3: 4.0}, 2, "min")
    3.0
    """
    return best((value for at, value in series.items() if at <= step), mode)


def median(values: List[float]) -> float:
    """The median (the mean of the middle two for an even count).

    >>> median([3.0, 1.0, 2.0]), median([4.0, 1.0, 2.0, 3.0])
    (2.0, 2.5)
    """
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

