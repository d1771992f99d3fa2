"""Where the report's timeline puts each run (SPEC V1, T9): pure, so that drawing stays simple.

Rows are worker slots (T11): a run recorded on `gpu:0#1` is drawn on that row. Records written
before slots had names (`0`, `cpu`) or by two runners at once on one tree can hold runs that
overlap on one name; each such run goes to the lowest row of its place free at its start, so that
a row never holds two runs at once and every slot that was busy has its own row.

The time axis leaves out the time between separate runs of mlrunner (a run, and its resume hours
later): the runs started by one mlrunner (the time in their log's name) make one *period*, from
the first start to the last end; overlapping periods are one, and what lies between two is cut.
A slot is available during the periods in which it ran something; the utilisation is busy
slot-time over available slot-time.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

from .history import Run
from ..run.slots import CPU, display, is_local, parse

MIN_CUT = 1.0  # seconds: a shorter pause between two periods is drawn as it is, not cut
_NATURAL = re.compile(r"(\d+)")


@dataclass
class Period:
    """A stretch of time in which some run of mlrunner ran commands; `offset`: where it starts on
    the axis, once the pauses before it are cut out."""

    start: float
    end: float
    offset: float = 0.0

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass
class Lane:
    """One timeline row: a worker slot, its runs in time order, its busy and available time."""

    name: str
    runs: List[Run] = field(default_factory=list)
    busy: float = 0.0
    available: float = 0.0

    @property
    def idle(self) -> float:
        return max(self.available - self.busy, 0.0)


@dataclass
class Layout:
    lanes: List[Lane]
    periods: List[Period]

    @property
    def span(self) -> float:
        """The time the axis shows: every period, without the pauses between them."""
        return sum(p.length for p in self.periods)

    @property
    def utilisation(self) -> float:
        available = sum(lane.available for lane in self.lanes)
        return sum(lane.busy for lane in self.lanes) / available if available > 0 else 0.0

    def cuts(self) -> List[Tuple[float, float]]:
        """(where on the axis, seconds left out) of each pause between two periods."""
        return [(after.offset, after.start - before.end) for before, after in zip(self.periods, self.periods[1:])]

    def at(self, moment: float) -> float:
        """A moment's place on the axis, in seconds from its left end."""
        index = max(bisect.bisect_right([p.start for p in self.periods], moment) - 1, 0)
        period = self.periods[index]
        return period.offset + min(max(moment - period.start, 0.0), period.length)


def _natural(text: str) -> Tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _NATURAL.split(text) if part)


def lanes(runs: Sequence[Run]) -> List[Lane]:
    """One lane per slot, this machine's first, in natural order: gpu:0, gpu:0#1, gpu:2, cpu:0, gpu1:0."""
    ends: Dict[Tuple[str, int], float] = {}
    found: Dict[Tuple[str, int], Lane] = {}
    for run in sorted(runs, key=lambda r: (r.start, r.end)):
        place, index = parse(run.worker)

        def free(number: int) -> bool:
            return ends.get((place, number), -math.inf) <= run.start

        if index is None or not free(index):
            index = next(number for number in itertools.count() if free(number))
        slot = (place, index)
        ends[slot] = max(run.end, run.start)
        found.setdefault(slot, Lane(display(*slot))).runs.append(run)
    order = sorted(found, key=lambda slot: (not is_local(slot[0]), slot[0].endswith(CPU), _natural(slot[0]), slot[1]))
    return [found[slot] for slot in order]


def periods(runs: Sequence[Run]) -> List[Period]:
    """The runs of each mlrunner run (`Run.began`), joined where they overlap or nearly touch."""
    spans: Dict[str, Tuple[float, float]] = {}
    for run in runs:
        low, high = spans.get(run.began, (run.start, run.end))
        spans[run.began] = (min(low, run.start), max(high, run.end, run.start))
    joined: List[Period] = []
    for start, end in sorted(spans.values()):
        if joined and start <= joined[-1].end + MIN_CUT:
            joined[-1].end = max(joined[-1].end, end)
        else:
            joined.append(Period(start, end))
    offset = 0.0
    for period in joined:
        period.offset = offset
        offset += period.length
    return joined


def layout(runs: Sequence[Run]) -> Layout:
    """Rows, periods, and each row's busy and available time."""
    found = periods(runs)
    starts = [p.start for p in found]
    rows = lanes(runs)
    for lane in rows:
        used = {max(bisect.bisect_right(starts, run.start) - 1, 0) for run in lane.runs}
        lane.available = sum(found[i].length for i in used)
        lane.busy = sum(max(run.end - run.start, 0.0) for run in lane.runs)  # a lane's runs never overlap
    return Layout(rows, found)
