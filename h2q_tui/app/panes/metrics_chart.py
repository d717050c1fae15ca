"""One chart of the Metrics pane: a scalar of one or several runs, drawn in character cells.

When a run has more points than the chart has columns, each column is a bucket (the points
whose x falls in it) drawn as its min..max envelope (░) with the bucket's mean (•) on top;
with fewer points each point is a dot. Log-Y clips values ≤ 0 to the smallest positive one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

ENVELOPE, MEAN = "░", "•"
GUTTER = 8  # the y labels' columns


@dataclass(frozen=True)
class Series:
    """One run's points of one scalar, in that run's colour."""

    run: str
    colour: str
    xs: list[float]
    ys: list[float]

    @property
    def last(self) -> float | None:
        return next((y for y in reversed(self.ys) if math.isfinite(y)), None)


def label(value: float) -> str:
    """A number in at most 7 characters."""
    text = f"{value:.4g}"
    return text if len(text) <= 7 else f"{value:.1e}"


def log_y_problem(series: list[Series]) -> tuple[float | None, str]:
    """Log-Y's floor (the smallest positive value: lower ones are clipped to it) and what the
    title says: "" when every value is positive, or why the chart stays linear."""
    values = [y for s in series for y in s.ys if math.isfinite(y)]
    positive = [y for y in values if y > 0]
    if not positive:
        return None, "log-Y: n/a (values ≤ 0)" if values else ""
    return min(positive), "" if len(positive) == len(values) else "log-Y (≤ 0 clipped)"


def chart_title(name: str, series: list[Series], log_y: bool) -> str:
    """The scalar's name and the first run's last value (and log-Y's state when on)."""
    last = next((s.last for s in series if s.last is not None), None)
    title = f"{name} {label(last)}" if last is not None else f"{name} —"
    if log_y:
        title += f" · {log_y_problem(series)[1] or 'log-Y'}"
    return title


def render(series: list[Series], width: int, height: int, log_y: bool, axis: str) -> Text:
    """The chart as ``height`` lines of ``width`` cells: y labels, the plot, then the x range."""
    columns, rows = width - GUTTER, height - 1
    if columns < 4 or rows < 2:
        return Text("")
    floor, _ = log_y_problem(series) if log_y else (None, "")

    def scale(y: float) -> float:
        return math.log10(max(y, floor)) if floor is not None else y

    points = [
        (s, [(x, scale(y)) for x, y in zip(s.xs, s.ys, strict=False) if math.isfinite(y)])
        for s in series
    ]
    xs = [x for _, pts in points for x, _ in pts]
    ys = [y for _, pts in points for _, y in pts]
    if not xs:
        return Text("no points yet".center(width), style="dim")
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    cells: list[list[tuple[str, str] | None]] = [[None] * columns for _ in range(rows)]

    def column(x: float) -> int:
        return round((x - x0) / (x1 - x0) * (columns - 1)) if x1 > x0 else columns // 2

    def row(y: float) -> int:  # 0 is the top row
        return rows - 1 - (round((y - y0) / (y1 - y0) * (rows - 1)) if y1 > y0 else rows // 2)

    for s, pts in points:
        if len(pts) > columns:
            for col, (low, high, mean) in buckets(pts, column).items():
                for r in range(row(high), row(low) + 1):
                    cells[r][col] = (ENVELOPE, s.colour)
                cells[row(mean)][col] = (MEAN, f"bold {s.colour}")
        else:
            for x, y in pts:
                cells[row(y)][column(x)] = (MEAN, f"bold {s.colour}")
    unscale = (lambda v: 10**v) if floor is not None else (lambda v: v)
    text = Text(no_wrap=True, overflow="crop")
    for r, line in enumerate(cells):
        tick = label(unscale(y1)) if r == 0 else label(unscale(y0)) if r == rows - 1 else ""
        text.append(f"{tick:>{GUTTER - 1}} ", style="dim")
        for cell in line:
            text.append(*(cell or (" ", "")))
        text.append("\n")
    left, right = label(x0), f"{label(x1)} {axis}"
    text.append(" " * GUTTER + left.ljust(columns - len(right)) + right, style="dim")
    return text


def buckets(points: list[tuple[float, float]], column) -> dict[int, tuple[float, float, float]]:
    """The min, max and mean of the points in each column (``column(x)``) that has any."""
    found: dict[int, list[float]] = {}
    for x, y in points:
        found.setdefault(column(x), []).append(y)
    return {col: (min(ys), max(ys), sum(ys) / len(ys)) for col, ys in found.items()}


class MetricChart(Widget, can_focus=True):
    """A titled chart of one scalar. It renders only when Textual paints it, so the charts
    scrolled out of view cost nothing until they show; the text is kept until the data,
    the view or the size change."""

    DEFAULT_CSS = "MetricChart { height: auto; }"

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scalar = name
        self._view: tuple[list[Series], bool, str] = ([], False, "step")
        self._text: tuple[tuple[int, int], Text] | None = None  # the size it was drawn at

    def show(self, series: list[Series], log_y: bool, axis: str) -> None:
        self._view, self._text = (series, log_y, axis), None
        self.border_title = chart_title(self.scalar, series, log_y)
        self.refresh()

    def text(self) -> Text:
        """The chart at its present size (drawn again only when something changed)."""
        size = (self.content_size.width, self.content_size.height)
        if self._text is None or self._text[0] != size:
            series, log_y, axis = self._view
            self._text = (size, render(series, *size, log_y, axis) if size[0] else Text(""))
        return self._text[1]

    def render(self) -> Text:
        return self.text()
