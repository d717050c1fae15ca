"""The run browser: ``h2q-tui attach runs/`` lists the runs of a folder (status, steps, best
held-out bits/byte, age), filters them as one types, and opens the picked ones overlaid in the
dashboard. The folder is scanned again every few seconds on a worker thread, so new runs appear.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Static

from h2q_tui.app import keys
from h2q_tui.app.screens import HelpScreen
from h2q_tui.training.run_list import CRASHED, FINISHED, LIVE, MALFORMED, RunRow, RunScan, matches

SCAN_EVERY_S = 2.0  # how often the folder is listed again (a stat and a short read per run)
COLUMNS = ("", "run", "preset", "status", "steps", "best bpb", "age")
STATUS_STYLE = {LIVE: "bold green", FINISHED: "cyan", CRASHED: "bold red", MALFORMED: "yellow"}
SELECTED_MARK = "●"


class Scanned(Message):
    """The rows of a scan, from the worker thread."""

    def __init__(self, rows: list[RunRow]) -> None:
        super().__init__()
        self.rows = rows


def age_text(seconds: float) -> str:
    """A short age: "45 s", "12 min", "5 h", "3 d"."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def row_cells(row: RunRow, selected: bool, now: float) -> tuple[Text, ...]:
    """The table cells of one run (literal text: a run's name is never markup)."""
    steps = "—" if row.steps is None else f"{row.steps:,}"
    bpb = "—" if row.best_bpb is None else f"{row.best_bpb:.3f}"
    return (
        Text(SELECTED_MARK if selected else " ", style="bold magenta"),
        Text(row.name),
        Text(row.preset or "—"),
        Text(row.status, style=STATUS_STYLE.get(row.status, "")),
        Text(steps, justify="right"),
        Text(bpb, justify="right"),
        Text(age_text(now - row.updated), justify="right"),
    )


class RunBrowserScreen(ModalScreen[list[Path]]):
    """The runs under ``root``; dismissed with the run dirs to open (the app quits on Esc/q)."""

    BINDINGS = [
        Binding(row.bind, row.action, row.label, priority=True)
        for row in keys.BROWSER_KEYS
        if row.bind
    ]

    def __init__(
        self, root: Path, clock: Callable[[], float] = time.time, scan_s: float = SCAN_EVERY_S
    ) -> None:
        super().__init__()
        self.root, self.clock, self.scan_s = root, clock, scan_s
        self.scan = RunScan(root)
        self.rows: list[RunRow] = []
        self.selected: list[Path] = []  # in the order picked
        self.filter = ""
        self.scans = 0  # scans shown so far (tests wait on it)
        self._scanning = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="browser-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="browser-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label in COLUMNS:
            table.add_column(label, key=label or "mark")
        table.focus()
        self.draw_title()
        self.start_scan()
        self.set_interval(self.scan_s, self.start_scan)

    # ------------------------------------------------------------------ scanning
    def start_scan(self) -> None:
        if not self._scanning:  # a slow disk: never two scans at once
            self._scanning = True
            self._scan_worker()

    @work(thread=True, group="run-scan")
    def _scan_worker(self) -> None:
        try:
            rows = self.scan.rows()
        finally:
            self._scanning = False
        self.post_message(Scanned(rows))  # thread-safe: the rows are shown on the UI thread

    def on_scanned(self, message: Scanned) -> None:
        self.rows = message.rows
        present = {row.path for row in self.rows}
        self.selected = [path for path in self.selected if path in present]
        self.scans += 1
        self.draw_table()

    # ------------------------------------------------------------------ drawing
    @property
    def shown(self) -> list[RunRow]:
        """The rows the filter lets through, in the listing's order."""
        return [row for row in self.rows if matches(row, self.filter)]

    def draw_table(self) -> None:
        """The shown rows: updated in place when they are the same runs in the same order
        (no flicker, the scroll stays), else listed again with the highlight kept."""
        table = self.query_one(DataTable)
        shown, now = self.shown, self.clock()
        cells = {str(row.path): row_cells(row, row.path in self.selected, now) for row in shown}
        if [key.value for key in table.rows] == list(cells):
            for key, values in cells.items():
                for column, value in zip(table.columns, values, strict=True):
                    table.update_cell(key, column, value)
        else:
            highlighted = self.highlighted
            table.clear()
            for key, values in cells.items():
                table.add_row(*values, key=key)
            if highlighted is not None and str(highlighted.path) in cells:
                table.move_cursor(row=table.get_row_index(str(highlighted.path)), animate=False)
        self.draw_title()
        self.draw_detail()

    def draw_title(self) -> None:
        shown, total = len(self.shown), len(self.rows)
        text = Text(f" runs in {self.root}", style="bold")
        counted = f"{total} run{'s' * (total != 1)}" if self.scans else "listing…"
        text.append(f" · {counted}")
        if self.filter:
            text.append(f" · filter: {self.filter}", style="bold yellow")
            text.append(f" ({shown} shown)")
        if self.selected:
            text.append(f" · {len(self.selected)} selected", style="bold magenta")
        if self.scans and not total:
            text.append(" · no run yet: new ones appear here", style="dim")
        self.query_one("#browser-title", Static).update(text)

    def draw_detail(self) -> None:
        row = self.highlighted
        text = Text(no_wrap=True, overflow="ellipsis")
        if row is not None:
            text.append(f" {row.path}", style="dim")
            if row.problem:
                text.append(f" · {row.status}: {row.problem}", style=STATUS_STYLE[row.status])
        self.query_one("#browser-detail", Static).update(text)

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self.draw_detail()

    @property
    def highlighted(self) -> RunRow | None:
        table = self.query_one(DataTable)
        shown = self.shown
        if not table.row_count or not 0 <= table.cursor_row < len(shown):
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((row for row in shown if str(row.path) == key), None)

    # ------------------------------------------------------------------ keys
    def on_key(self, event: events.Key) -> None:
        """Typed characters build the filter (q with an empty filter quits)."""
        if event.key == "backspace" and self.filter:
            self._set_filter(self.filter[:-1])
        elif event.is_printable and event.character not in (None, " ", "?"):
            if event.character == "q" and not self.filter:
                self.app.exit()
            else:
                self._set_filter(self.filter + event.character)
        else:
            return
        event.stop()
        event.prevent_default()

    def _set_filter(self, text: str) -> None:
        self.filter = text
        self.draw_table()
        table = self.query_one(DataTable)
        if table.row_count:
            table.move_cursor(row=min(table.cursor_row, table.row_count - 1), animate=False)

    def action_toggle_select(self) -> None:
        row = self.highlighted
        if row is None:
            return
        if row.path in self.selected:
            self.selected.remove(row.path)
        else:
            self.selected.append(row.path)
        self.draw_table()

    def action_open(self) -> None:
        picked = list(self.selected)
        if not picked and self.highlighted is not None:
            picked = [self.highlighted.path]
        if not picked:
            self.notify("no run to open: none is listed (or the filter hides them all)")
            return
        self.dismiss(picked)

    def action_back(self) -> None:
        if self.filter:
            self._set_filter("")
        else:
            self.app.exit()

    def action_help(self) -> None:
        rows = [(row.keys, row.description) for row in keys.BROWSER_KEYS]
        self.app.push_screen(HelpScreen(rows))
