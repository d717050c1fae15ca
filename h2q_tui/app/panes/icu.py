"""The ICU pane: the focused run's cards, every run's loss chart, the Thought Stream and the
event log. It draws what the shell's histories hold; the chart's view (units, x axis,
smoothing) is its own."""

from __future__ import annotations

import csv
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container, Horizontal, Vertical
from textual.widgets import RichLog, Static

from h2q_tui.app.panes.icu_cards import CardGrid
from h2q_tui.app.panes.icu_chart import X_AXES, LossChart
from h2q_tui.system.monitor import SystemSnapshot
from h2q_tui.training.history import RunHistory


class IcuPane(Vertical):
    """Cards on top; the chart, then the Thought Stream beside the event log (side by side
    with the chart on small terminals)."""

    def __init__(self, histories: dict[str, RunHistory]) -> None:
        super().__init__(id="icu-body")
        self.histories = histories
        self.units, self.axis, self.smoothing = "nats", "step", 0.6
        self.chart_dirty = True
        self._log_printed: dict[str, int] = dict.fromkeys(histories, 0)

    def compose(self) -> ComposeResult:
        yield CardGrid()
        with Container(id="chart-row"):  # side by side on small terminals
            yield LossChart()
            with Horizontal(id="streams"):
                yield Static(id="thought-stream")
                yield RichLog(id="event-log", wrap=True, markup=False, max_lines=500, min_width=20)

    def on_mount(self) -> None:
        self.query_one("#thought-stream").border_title = "Thought Stream"
        self.query_one("#event-log").border_title = "Events"

    def show(
        self,
        history: RunHistory,
        state: str,
        compact: bool,
        snapshot: SystemSnapshot | None,
        live: bool,
    ) -> None:
        """Cards, Thought Stream and event log; the chart waits for its own, slower clock."""
        self.chart_dirty = True
        self.query_one(CardGrid).show(history, state, compact, snapshot, live)
        stream = thought_stream_text(history.samples[-2:])
        thought_stream = self.query_one("#thought-stream", Static)
        if stream != thought_stream.content:
            thought_stream.update(stream, layout=False)  # a fixed-size box: no layout pass
        self.append_log()

    def show_process(self, snapshot: SystemSnapshot | None) -> None:
        """The process card alone: new system readings arrive on their own clock."""
        self.query_one(CardGrid).show_process(snapshot, None)

    def draw_chart(self) -> None:
        self.chart_dirty = False
        self.query_one(LossChart).draw(self.histories, self.axis, self.units, self.smoothing)

    def append_log(self) -> None:
        """The notes every run gained since the last call, named when several runs show."""
        log = self.query_one("#event-log", RichLog)
        if log.scrollable_content_region.width < 10:  # hidden, or not laid out yet: wrapped
            return  # at min_width the lines would stay that narrow; the next redraw writes them
        for name, history in self.histories.items():
            new = history.notes - self._log_printed[name]  # history.log is trimmed: count notes
            prefix = f"{name}: " if len(self.histories) > 1 else ""
            for line in history.log[-new:] if new > 0 else []:
                log.write(prefix + line)
            self._log_printed[name] = history.notes

    def toggle_units(self) -> None:
        self.units = "bpb" if self.units == "nats" else "nats"

    def cycle_axis(self) -> None:
        self.axis = X_AXES[(X_AXES.index(self.axis) + 1) % len(X_AXES)]

    def change_smoothing(self, delta: float) -> None:
        self.smoothing = round(min(0.99, max(0.0, self.smoothing + delta)), 2)


def thought_stream_text(samples: list[tuple[int, str]]) -> Text:
    """The last samples, each after its step: model text is data, never markup."""
    if not samples:
        return Text("samples appear here during training", style="dim")
    text = Text()
    for index, (step, sample) in enumerate(samples):
        text.append("\n" if index else "")
        text.append(f"[step {step}] ", style="dim")
        text.append(sample)
    return text


def write_chart_csv(path: Path, histories: dict[str, RunHistory]) -> None:
    """Every chart point of every run: run, series, step, tokens, time_s, value_nats."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["run", "series", "step", "tokens", "time_s", "value_nats"])
        for name, history in histories.items():
            for series, curve in (
                ("train", history.train),
                ("heldout", history.heldout),
                ("horizon", history.horizon),
            ):
                for row in zip(curve.step, curve.tokens, curve.time, curve.value, strict=True):
                    out.writerow([name, series, *row])
