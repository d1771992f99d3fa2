"""The report's charts as inline SVG, with no I/O (SPEC V1, T13): a metric against a param (a
scatter plot) and a series metric over its steps (a curve per experiment).

Both share `Axis`: an axis whose values span a decade or more (all positive) is logarithmic, its
ticks are round numbers, and each chart's margins are computed from its own tick labels, so that
no label is clipped whatever its length. Everything from the records is escaped.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..examine.logs import points_per_curve
from .history import Row, number

CHAR_PX = 7.0  # the widest a character of the 11px labels is drawn, digits and letters alike


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def label_px(text: str) -> float:
    """How wide a tick label may be drawn: margins are made from it."""
    return CHAR_PX * len(text)


@dataclass
class Axis:
    """A numeric axis: `low`..`high` in its own scale (log10 of the values when `log`)."""

    low: float
    high: float
    log: bool

    def scale(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def fraction(self, value: float) -> float:
        """Where `value` (in the axis' scale) lies, 0 at `low`, 1 at `high`."""
        return (value - self.low) / (self.high - self.low) if self.high > self.low else 0.5

    def ticks(self) -> List[Tuple[float, str]]:
        """Round values inside the axis, in its scale, with their labels."""
        if self.high <= self.low:
            return [(self.low, fmt(10 ** self.low if self.log else self.low))]
        if self.log:
            found: List[float] = []
            for multiples in ((1,), (1, 3), (1, 2, 5)):
                found = [math.log10(m) + k for k in range(math.floor(self.low), math.ceil(self.high) + 1)
                         for m in multiples if self.low - 1e-9 <= math.log10(m) + k <= self.high + 1e-9]
                if len(found) >= 3:
                    break
            marks = found if len(found) >= 2 else [self.low, self.high]
            return [(v, fmt(float(f"{10 ** v:.3g}"))) for v in marks]
        raw = (self.high - self.low) / 4
        step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
        first = math.ceil(self.low / step - 1e-9)
        marks = [i * step for i in range(first, math.floor(self.high / step + 1e-9) + 1)]
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))  # as many as the step needs: 1234568, 0.25
        return [(v, f"{v:.{decimals}f}") for v in marks]


def axis(values: Sequence[float], pad: float = 0.05) -> Axis:
    """Logarithmic when every value is positive and the largest is 10x the smallest or more."""
    log = min(values) > 0 and max(values) >= 10 * min(values)
    scaled = [math.log10(v) for v in values] if log else list(values)
    low, high = min(scaled), max(scaled)
    margin = (high - low) * pad
    return Axis(low - margin, high + margin, log)


def _frame(width: float, height: float, left: float, right: float, top: float, bottom: float,
           ys: List[Tuple[float, str]], py: Any, attributes: str) -> List[str]:
    parts = [f'<svg viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" {attributes}>',
             f'<rect x="{left:.0f}" y="{top}" width="{width - left - right:.0f}" height="{height - top - bottom}" '
             'class="frame"/>']
    for value, text in ys:
        parts.append(f'<text x="{left - 4:.0f}" y="{py(value) + 4:.1f}" class="ytick">{_e(text)}</text>')
    return parts


def _scale_note(x_log: bool, y_log: bool) -> str:
    axes = [name for name, log in (("x", x_log), ("y", y_log)) if log]
    return f" (log {', log '.join(axes)})" if axes else ""


def scatter(rows: Sequence[Row], param: str, metric: str) -> str:
    """`metric` against `param`: a numeric axis (log when the values span a decade) or categories."""
    points = [(row.params.get(param), number(row.metrics.get(metric)), row.name) for row in rows]
    points = [(x, y, name) for x, y, name in points if x is not None and y is not None]
    unplotted = sum(1 for _, y, _ in points if not math.isfinite(y))  # inf or nan on the y axis: counted
    points = [(x, y, name) for x, y, name in points if math.isfinite(y)]
    if not points:
        return ""
    numeric = all(number(x) is not None for x, _, _ in points)
    x_axis: Optional[Axis] = None
    if numeric and not all(math.isfinite(float(x)) for x, _, _ in points):
        # inf, -inf or nan among the values: one column each, in numeric order, nan last
        values = sorted({float(x) for x, _, _ in points}, key=lambda v: (math.isnan(v), v))
        values = [v for i, v in enumerate(values) if not (math.isnan(v) and i and math.isnan(values[i - 1]))]
        column = {fmt(v): i for i, v in enumerate(values)}
        xs = [float(column[fmt(float(x))]) for x, _, _ in points]
        x_axis, xticks = Axis(-0.5, len(values) - 0.5, False), [(float(i), fmt(v)) for i, v in enumerate(values)][:12]
    elif numeric:
        x_axis = axis([float(x) for x, _, _ in points])
        xs = [x_axis.scale(float(x)) for x, _, _ in points]
        distinct = sorted(set(xs))
        # a grid sweep: label every value; else round ticks
        xticks = [(v, fmt(10 ** v if x_axis.log else v)) for v in distinct] if len(distinct) <= 8 else x_axis.ticks()
    else:
        categories = sorted({str(x) for x, _, _ in points})
        xs = [float(categories.index(str(x))) for x, _, _ in points]
        x_axis, xticks = Axis(-0.5, len(categories) - 0.5, False), [(float(i), c) for i, c in enumerate(categories)][:12]
    y_axis = axis([y for _, y, _ in points])
    yticks = y_axis.ticks()
    plot_w, plot_h, top, bottom = 240, 140, 12, 28
    left = 8 + max(label_px(text) for _, text in yticks)
    right = max(12, max(label_px(text) for _, text in xticks) / 2)
    width, height = left + plot_w + right, top + plot_h + bottom

    def px(x: float) -> float:
        return left + plot_w * x_axis.fraction(x)

    def py(y: float) -> float:
        return top + plot_h * (1 - y_axis.fraction(y))

    parts = _frame(width, height, left, right, top, bottom, yticks, py,
                   f'data-metric="{_e(metric)}" data-param="{_e(param)}"')
    for value, text in xticks:
        parts.append(f'<text x="{px(value):.1f}" y="{top + plot_h + 14}" class="tick">{_e(text)}</text>')
    shown: Dict[Tuple[int, int], List[Tuple[str, float]]] = {}  # one dot per pixel: 10^4 points stay small
    for x, (_, y, name) in zip(xs, points):
        shown.setdefault((round(px(x)), round(py(y_axis.scale(y)))), []).append((name, y))
    for (cx, cy), here in shown.items():
        more = f" (and {len(here) - 1} more here)" if len(here) > 1 else ""
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="3.5"><title>{_e(here[0][0])}: {_e(metric)} '
                     f'{_e(fmt(here[0][1]))}{more}</title></circle>')
    scale = _scale_note(x_axis.log, y_axis.log) + (f"; {unplotted} not finite, not drawn" if unplotted else "")
    parts.append(f'</svg><figcaption>{_e(metric)} against {_e(param)}{scale}</figcaption>')
    return '<figure class="plot">' + "".join(parts) + "</figure>"


def _thin(points: List[Tuple[float, float]], size: int) -> List[Tuple[float, float]]:
    """At most `size` evenly spaced points, the first and the last kept."""
    if len(points) <= size:
        return points
    stride = (len(points) - 1) / (size - 1)
    return [points[round(i * stride)] for i in range(size)]


def curves(rows: Sequence[Row], metric: str, command: str) -> str:
    """Each experiment's `metric` over its steps, one polyline each (its name on hover); an
    experiment early_stop stopped is dashed and marked x where the decision was taken."""
    series = [(row, [(s, v) for s, v in row.series.get(metric, []) if math.isfinite(s) and math.isfinite(v)])
              for row in rows]
    series = [(row, points) for row, points in series if points]
    if not series:
        return ""
    x_axis = axis([s for _, points in series for s, _ in points], pad=0.0)
    y_axis = axis([v for _, points in series for _, v in points])
    xticks, yticks = x_axis.ticks(), y_axis.ticks()
    plot_w, plot_h, top, bottom = 560, 260, 12, 28
    left = 8 + max(label_px(text) for _, text in yticks)
    right = max(16, max(label_px(text) for _, text in xticks) / 2)
    width, height = left + plot_w + right, top + plot_h + bottom
    size = points_per_curve(len(series))

    def at(step: float, value: float) -> Tuple[int, int]:
        return (round(left + plot_w * x_axis.fraction(x_axis.scale(step))),
                round(top + plot_h * (1 - y_axis.fraction(y_axis.scale(value)))))

    parts = _frame(width, height, left, right, top, bottom, yticks, lambda y: top + plot_h * (1 - y_axis.fraction(y)),
                   f'class="curves" data-metric="{_e(metric)}"')
    for value, text in xticks:
        parts.append(f'<text x="{left + plot_w * x_axis.fraction(value):.1f}" y="{top + plot_h + 14}" '
                     f'class="tick">{_e(text)}</text>')
    stopped = 0
    for index, (row, points) in enumerate(series):
        pixels: List[Tuple[int, int]] = []
        for point in _thin(points, size):
            pixel = at(*point)
            if not pixels or pixels[-1] != pixel:
                pixels.append(pixel)
        kind = " stopped" if command in row.stops else ""
        line = " ".join(f"{x},{y}" for x, y in (pixels if len(pixels) > 1 else pixels * 2))
        parts.append(f'<polyline class="curve c{index % 8}{kind}" points="{line}"><title>{_e(row.name)}'
                     f'</title></polyline>')
        if command in row.stops:
            stopped += 1
            step = row.stops[command]  # the step the decision was taken at, when recorded
            where = [p for p in points if step is None or p[0] <= step] or points
            x, y = at(*where[-1])
            parts.append(f'<path class="stop" d="M{x - 4},{y - 4}l8,8m0,-8l-8,8"><title>{_e(row.name)}: stopped by '
                         f'early_stop at step {_e(fmt(where[-1][0]))}</title></path>')
    note = _scale_note(x_axis.log, y_axis.log)
    marks = f"; {stopped} stopped by early_stop, dashed and marked ✕ where they stopped" if stopped else ""
    parts.append(f'</svg><figcaption>{_e(metric)} over the steps of {_e(command)}{note}: {len(series)} '
                 f'experiment{"s" if len(series) > 1 else ""}{marks}</figcaption>')
    return '<figure class="plot curves">' + "".join(parts) + "</figure>"
