"""The Crystal pane's results: one table row per method (the cursor picks the row ``g`` and
``h`` act on) above the plot of Δ bits/byte against the compression ratio."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable
from textual_plot import HiResMode, LegendLocation, PlotWidget

from h2q_tui.app.widgets import safe_axes
from h2q_tui.crystal.sweep import Row

COLUMNS = ("", "method", "bytes", "ratio", "Δ bits/byte ± s.e.", "mean KLD", "top-1 %", "s")
# a narrow pane (an 80-column terminal) keeps what the choice needs: no bytes, s.e. or time
NARROW_COLUMNS = ("", "method", "ratio", "Δ bits/byte", "KLD", "top-1 %")
WIDE_MIN = 92  # cells the full table needs without scrolling sideways


def row_cells(row: Row, narrow: bool = False) -> list[str | Text]:
    """The row's cells under :data:`COLUMNS` (``narrow``: :data:`NARROW_COLUMNS`)."""
    star = Text("*", style="bold green") if row.pareto else ""
    c = row.comparison
    if c is None:
        delta, kld, top1 = "—", "—", "—"
    else:
        delta = f"{c['delta_bits_per_byte']:+.4f}"
        if not narrow:
            delta += f" ± {c['delta_std_error']:.4f}"
        kld, top1 = f"{c['mean_kld']:.5f}", f"{100 * c['same_top1']:.1f}"
    ratio = f"{row.ratio:.2f}×"
    if narrow:
        return [star, row.method, ratio, delta, kld, top1]
    return [star, row.method, f"{row.bytes:,}", ratio, delta, kld, top1, f"{row.seconds:.1f}"]


class ParetoPlot(PlotWidget):
    """Δ bits/byte against the compression ratio; the Pareto front joined and marked."""

    def on_mount(self) -> None:
        safe_axes(self)

    def draw(self, rows: list[Row]) -> None:
        self.clear()
        measured = [r for r in rows if r.comparison is not None]
        others = [r for r in measured if not r.pareto]
        front = sorted((r for r in measured if r.pareto), key=lambda r: r.ratio)
        if others:
            xs, ys = [r.ratio for r in others], [r.delta for r in others]
            self.scatter(xs, ys, "○", "grey62", None, "other methods")
        if front:
            xs, ys = [r.ratio for r in front], [r.delta for r in front]
            self.plot(xs, ys, "green", HiResMode.BRAILLE)
            self.scatter(xs, ys, "●", "bold green", None, "Pareto front")
        self.set_xlabel("ratio (× smaller)")
        self.set_ylabel("Δ bits/byte")
        points = [(r.ratio, r.delta) for r in measured]
        # no legend over an empty chart, nor over the points: it goes in the emptiest corner
        self.show_legend(quiet_corner(points), is_visible=bool(points) and self.size.height >= 12)


def quiet_corner(points: list[tuple[float, float]]) -> LegendLocation:
    """The corner of the data's range (x right or left, y top or bottom) with the fewest
    points, the top right on a tie."""
    if not points:
        return LegendLocation.TOPRIGHT
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_mid, y_mid = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    corners = {
        LegendLocation.TOPRIGHT: lambda x, y: x >= x_mid and y >= y_mid,
        LegendLocation.TOPLEFT: lambda x, y: x <= x_mid and y >= y_mid,
        LegendLocation.BOTTOMRIGHT: lambda x, y: x >= x_mid and y <= y_mid,
        LegendLocation.BOTTOMLEFT: lambda x, y: x <= x_mid and y <= y_mid,
    }
    return min(corners, key=lambda c: sum(corners[c](x, y) for x, y in points))


class CrystalResults(Vertical):
    """The rows shown as a table above their Pareto plot."""

    def __init__(self, id: str = "cry-results") -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.rows: list[Row] = []
        self.narrow: bool | None = None  # which column set the table has (None: none yet)

    def compose(self) -> ComposeResult:
        yield DataTable(id="cry-table", cursor_type="row", zebra_stripes=True)
        yield ParetoPlot(id="cry-plot")

    def on_mount(self) -> None:
        self._fit_columns()

    def on_resize(self) -> None:
        if self._fit_columns():
            self.show(self.rows)

    def _fit_columns(self) -> bool:
        """The column set for the pane's width; True when it changed."""
        narrow = 0 < self.size.width < WIDE_MIN
        if narrow == self.narrow:
            return False
        self.narrow = narrow
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns(*(NARROW_COLUMNS if narrow else COLUMNS))
        return True

    def show(self, rows: list[Row]) -> None:
        """Show these rows (the cursor stays on its line where it can)."""
        self.rows = rows
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        for row in rows:
            table.add_row(*row_cells(row, bool(self.narrow)), key=row.method)
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))
        self.query_one(ParetoPlot).draw(rows)

    def selected(self) -> Row | None:
        """The row under the table's cursor (None before any row)."""
        cursor = self.query_one(DataTable).cursor_row
        return self.rows[cursor] if 0 <= cursor < len(self.rows) else None

    def move(self, step: int) -> None:
        """Move the table's cursor ``step`` rows, within the rows."""
        table = self.query_one(DataTable)
        if self.rows:
            table.move_cursor(row=max(0, min(len(self.rows) - 1, table.cursor_row + step)))
