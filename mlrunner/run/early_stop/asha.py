"""Asynchronous successive halving (SPEC A1): at each rung only the top 1/eta go on.

Rungs are at steps `after`, `after*eta`, `after*eta^2`, ... An experiment's value at a rung is
its best value up to the first step it reported at or past the rung (its peers' likewise). When an
experiment reaches a rung it is compared with every experiment that has reached that rung so
far: it goes on when it is among the best n // eta of those n (at least one; ties in its favour). With
fewer than `min_peers` others at the rung it goes on: early arrivals are promoted, as in ASHA,
rather than judged against too few values.
"""

from __future__ import annotations

from typing import List, Optional

from .rules import Decision, Series, best_until
from .settings import Settings


def rung_of(step: float, after: int, eta: int) -> Optional[int]:
    """The highest rung at or below `step` (None before the first).

    >>> rung_of(0, 2, 3), rung_of(2, 2, 3), rung_of(5, 2, 3), rung_of(6, 2, 3), rung_of(18, 2, 3)
    (None, 2, 2, 6, 18)
    """
    if step < after:
        return None
    rung = after
    while rung * eta <= step:
        rung *= eta
    return rung


def rung_value(series: Series, rung: int, mode: str) -> Optional[float]:
    """The series' value at `rung`: its best up to the first step it printed at or past it.

    >>> rung_value({1: 5.0, 2: 3.0, 4: 4.0, 9: 1.0}, 3, "min")
    3.0
    >>> rung_value({1: 5.0}, 3, "min") is None
    True
    """
    reached = next((step for step in series if step >= rung), None)
    return None if reached is None else best_until(series, reached, mode)


class Asha:
    """`decide` when `values` first passes a rung; continue elsewhere.

    >>> import re
    >>> rule = Asha(Settings("loss", "t", re.compile("(x)"), re.compile("(y)"), rule="asha", after=1, min_peers=2))
    >>> peers = [{1: 0.5}, {1: 0.6}]
    >>> rule.decide({1: 0.7}, peers).stop, rule.decide({1: 0.4}, peers).stop
    (True, False)
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    def decide(self, values: Series, peers: List[Series]) -> Decision:
        s = self.settings
        steps = list(values)
        step = steps[-1] if steps else 0
        rung = rung_of(step, s.after, s.eta)
        if rung is None or (len(steps) > 1 and rung_of(steps[-2], s.after, s.eta) == rung):
            return Decision(False, step)  # no rung passed at this step
        mine = rung_value(values, rung, s.mode)
        others = [v for v in (rung_value(peer, rung, s.mode) for peer in peers) if v is not None]
        if mine is None or len(others) < s.min_peers:
            return Decision(False, step)
        reached = len(others) + 1
        keep = max(1, reached // s.eta)
        ahead = sum(1 for other in others if s.better(other, mine))
        ranked = sorted(others + [mine], reverse=s.mode == "max")
        return Decision(ahead >= keep, step, {"rule": "asha", "rung": rung, "value": mine, "keep": keep,
                                              "reached": reached, "cutoff": ranked[keep - 1]})
