"""The Metrics pane: a chart for every scalar the runs log, on the ICU pane's x axis, every
attached run overlaid in its ICU colour; ``/`` filters, ``y`` log-Y, Enter full size, ``e``
exports what shows. It draws only while visible and only when the data or the view changed.
"""

from __future__ import annotations

import csv
import fnmatch
import time
from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.events import Key
from textual.widgets import Input, Static

from h2q_tui.app.panes.icu_chart import RUN_COLOURS
from h2q_tui.app.panes.metrics_chart import MetricChart, Series
from h2q_tui.training.history import RunHistory

CHART_WIDTH = 40  # the grid has as many columns as fit charts this wide
GLOB = "*?["  # a pattern with one of these is a glob, else a substring


def matches(name: str, pattern: str) -> bool:
    """Case-insensitive: a glob (``*loss*``) or a substring (``loss``); "" matches all."""
    name, pattern = name.lower(), pattern.lower().strip()
    if any(char in pattern for char in GLOB):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


class MetricsPane(Vertical, can_focus=True):
    """The filter, a line saying what shows, and the grid of charts (or one, full size)."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("y", "log_y", "Log-Y"),
        Binding("e", "export", "Export"),
        Binding("enter", "open", "Full size", show=False),
        Binding("escape", "back", "Back", show=False),
        Binding("left", "move(-1, 0)", show=False),
        Binding("right", "move(1, 0)", show=False),
        Binding("up", "move(0, -1)", show=False),
        Binding("down", "move(0, 1)", show=False),
    ]

    def __init__(self, histories: dict[str, RunHistory], export_dir: Callable[[], Path]) -> None:
        super().__init__(id="metrics-body")
        self.histories, self.export_dir = histories, export_dir
        self.axis, self.log_y, self.pattern = "step", False, ""
        self.names: list[str] = []  # the scalars shown, in the grid's order
        self.current = 0  # the chart arrows move and Enter opens
        self.full: str | None = None  # the scalar shown full size
        self._drawn: tuple | None = None  # what the last draw showed
        self._to_filter = False  # `/` was pressed and its field has not had the focus yet
        self._charts: dict[str, MetricChart] = {}  # one a scalar ever seen; the filter hides

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter: a substring or a glob (*loss*), Esc clears", id="metrics-filter"
        )
        yield Static(id="metrics-note")
        yield Grid(id="metrics-grid")
        yield MetricChart("", id="metrics-full")

    def on_mount(self) -> None:
        self.query_one("#metrics-filter").display = False
        self.query_one("#metrics-full").display = False

    # ------------------------------------------------------------------ data and drawing
    def scalar_names(self) -> list[str]:
        """Every run's scalars, in the order they first appeared (the first run's first)."""
        names: dict[str, None] = {}
        for history in self.histories.values():
            names.update(dict.fromkeys(history.scalars.curves))
        return list(names)

    def series(self, name: str) -> list[Series]:
        """The scalar's points for each run that logs it, on the current x axis."""
        out = []
        for index, (run, history) in enumerate(self.histories.items()):
            curve = history.scalars.curves.get(name)
            if curve is not None:
                colour = RUN_COLOURS[index % len(RUN_COLOURS)]
                out.append(Series(run, colour, list(curve.x(self.axis)), list(curve.value)))
        return out

    def _view(self) -> tuple:
        versions = tuple(h.scalars.version for h in self.histories.values())
        return versions, self.axis, self.log_y, self.pattern, self.full

    def changed(self) -> bool:
        return self._view() != self._drawn

    def draw(self, axis: str, force: bool = False) -> None:
        """Draw again if the data or the view changed since the last draw (or ``force``)."""
        self.axis = axis
        if not (force or self.changed()):
            return
        self._drawn = self._view()
        every = self.scalar_names()
        self.names = [name for name in every if matches(name, self.pattern)]
        new = [
            MetricChart(name, classes="metric-chart") for name in every if name not in self._charts
        ]
        self._charts.update((chart.scalar, chart) for chart in new)
        if new:  # a scalar seen for the first time: its chart goes at the end, as in `every`
            self.query_one("#metrics-grid", Grid).mount_all(new)
        self.current = min(self.current, max(0, len(self.names) - 1))
        shown = set(self.names) if self.full is None else set()
        for name, chart in self._charts.items():
            chart.display = name in shown
            if name in shown:
                chart.show(self.series(name), self.log_y, self.axis)
        full = self.query_one("#metrics-full", MetricChart)
        if self.full is not None:
            full.scalar = self.full
            full.show(self.series(self.full), self.log_y, self.axis)
        self._note(len(every))

    def _note(self, total: int) -> None:
        shown = f"{len(self.names)} of {total} scalars" if self.pattern else f"{total} scalars"
        parts = [shown + (f" matching {self.pattern!r}" if self.pattern else "")]
        parts.append(f"x: {self.axis} (a)")
        parts.append("log-Y (y)" if self.log_y else "linear Y (y)")
        parts.append(
            "Esc: back to the grid" if self.full else "/ filter · Enter full size · e export"
        )
        self.query_one("#metrics-note", Static).update(" · ".join(parts))

    def on_show(self) -> None:
        self.draw(self.axis)

    def on_resize(self) -> None:
        columns = max(1, self.size.width // CHART_WIDTH)
        self.query_one("#metrics-grid", Grid).styles.grid_size_columns = columns

    # ------------------------------------------------------------------ keys
    def action_filter(self) -> None:
        field = self.query_one("#metrics-filter", Input)
        field.display = True
        field.focus()
        self._to_filter = True  # until the field has the focus, keys typed go to it

    def on_key(self, event: Key) -> None:
        """Characters typed right after ``/``, before the field has the focus, go to it: a
        terminal can deliver ``/loss`` at once, and a binding acts only after its key has
        gone through the widgets (so ``/`` is taken here, not left to the binding)."""
        field = self.query_one("#metrics-filter", Input)
        if field.has_focus or not (event.is_printable and event.character):
            return
        if self._to_filter:
            field.insert_text_at_cursor(event.character)
            event.stop()
        elif event.key == "slash":
            self.action_filter()
            event.stop()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.pattern = event.value
        self.draw(self.axis)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._focus_current()

    def action_log_y(self) -> None:
        self.log_y = not self.log_y
        self.draw(self.axis)

    def action_move(self, dx: int, dy: int) -> None:
        if self.full is not None or not self.names:
            return
        columns = self.query_one("#metrics-grid", Grid).styles.grid_size_columns or 1
        self.current = max(0, min(len(self.names) - 1, self.current + dx + dy * columns))
        self._focus_current()

    def _focus_current(self) -> None:
        if self.current < len(self.names) and self.full is None:
            chart = self._charts[self.names[self.current]]
            chart.focus()
            chart.scroll_visible()
        else:
            self.focus()

    def on_descendant_focus(self, event) -> None:
        """A chart focused by a click or Tab becomes the current one."""
        self._to_filter = False  # the focus moved on: keys go where it is now
        if isinstance(event.widget, MetricChart) and event.widget.scalar in self.names:
            self.current = self.names.index(event.widget.scalar)

    def action_open(self) -> None:
        if self.names and self.full is None:
            self.full = self.names[self.current]
            self.query_one("#metrics-grid").display = False
            self.query_one("#metrics-full").display = True
            self.draw(self.axis, force=True)
            self.focus()  # the focused chart is hidden now: the pane keeps the keys (Esc)

    def action_back(self) -> None:
        """Esc: leave the full-size chart, else clear the filter."""
        field = self.query_one("#metrics-filter", Input)
        if self.full is not None:
            self.full = None
            self.query_one("#metrics-full").display = False
            self.query_one("#metrics-grid").display = True
            self.draw(self.axis, force=True)
            self._focus_current()
        elif field.display or self.pattern:
            field.value, field.display, self.pattern = "", False, ""
            self.draw(self.axis)
            self._focus_current()

    def action_export(self) -> None:
        """The series shown (the full-size one, or every chart the filter keeps) as CSV."""
        folder = self.export_dir()
        path = folder / f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        names = [self.full] if self.full is not None else self.names
        rows = write_metrics_csv(path, {name: self.series(name) for name in names}, self.axis)
        scalars = f"{len(names)} scalar{'s' * (len(names) != 1)}"
        self.app.notify(f"wrote {rows:,} points of {scalars} to {path}", markup=False)


def write_metrics_csv(path: Path, charts: dict[str, list[Series]], axis: str) -> int:
    """Rows of run, scalar, the x axis shown, value; how many points were written."""
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["run", "scalar", axis, "value"])
        for name, series in charts.items():
            for s in series:
                for x, y in zip(s.xs, s.ys, strict=True):
                    out.writerow([s.run, name, x, y])
                    rows += 1
    return rows
