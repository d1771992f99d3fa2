"""The median rule (SPEC A1): stop an experiment whose best so far is worse than its peers' median.

As Optuna's MedianPruner compares a trial with completed trials at the same step, but here the
peers are every other experiment that has reported that step, running ones included: in a sweep
on a few workers most peers are still running when the question is asked.
"""

from __future__ import annotations

from typing import List

from .rules import Decision, Series, best_until, median
from .settings import Settings


class Median:
    """`decide` at each new step; stop when best-so-far is worse than the median of the peers'
    values at that step, given at least `min_peers` of them.

    >>> from .settings import Settings
    >>> import re
    >>> rule = Median(Settings("loss", "train", re.compile("(x)"), re.compile("(y)"), after=2, min_peers=2))
    >>> peers = [{1: 1.0, 2: 0.5}, {1: 1.0, 2: 0.7}]
    >>> rule.decide({1: 1.0, 2: 0.9}, peers).stop, rule.decide({1: 1.0, 2: 0.6}, peers).stop
    (True, False)
    >>> rule.decide({1: 9.0}, peers).stop  # before `after`: never
    False
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    def decide(self, values: Series, peers: List[Series]) -> Decision:
        s = self.settings
        step = next(reversed(values.keys())) if values else 0
        if step < s.after or (step - s.after) % s.every:
            return Decision(False, step)
        at_step = [peer[step] for peer in peers if step in peer]
        if len(at_step) < s.min_peers:
            return Decision(False, step)
        mine = best_until(values, step, s.mode)
        middle = median(at_step)
        stop = mine is not None and s.better(middle, mine)
        return Decision(stop, step, {"rule": "median", "value": mine, "median": middle, "peers": len(at_step)})
