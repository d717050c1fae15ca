"""The System pane's history: one small braille area chart per reading (CPU, memory, GPU),
in two columns; on a short screen each shrinks to a one-row sparkline beside its value."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

from h2q_tui.app import formatting as fmt
from h2q_tui.system.readings_history import GPU_SERIES, SERIES, Sample, SystemHistory
from h2q_tui.units import format_size

COLOURS = {
    "host_cpu_percent": "cyan",
    "process_cpu_percent": "green",
    "process_rss_bytes": "magenta",
    "host_ram_used_bytes": "blue",
    "gpu_util_percent": "yellow",
    "gpu_memory_used_bytes": "orange1",
}
CEILINGS = {"host_ram_used_bytes": "host_ram_total_bytes"}  # a chart's top: the machine's size
CEILINGS["gpu_memory_used_bytes"] = "gpu_memory_total_bytes"
GUTTER = 2  # blank columns between the two columns of charts
# braille dots of a cell, bottom row first: (left column, right column)
DOTS = ((0x40, 0x80), (0x04, 0x20), (0x02, 0x10), (0x01, 0x08))
MIN_CHART_ROWS = 3  # a title row and two of dots; fewer: sparklines


def columns_of(samples: list[Sample], index: int, width: int) -> list[float | None]:
    """One value per dot column (``width`` of them) over the samples' x range: the mean of
    the samples falling in it, held from the last one across columns no sample falls in."""
    points = [(s.x, s.values[index]) for s in samples if s.values[index] is not None]
    sums, counts = [0.0] * width, [0] * width
    if not points or width <= 0:
        return [None] * max(0, width)
    x0, x1 = samples[0].x, samples[-1].x
    span = x1 - x0
    for x, value in points:
        column = width - 1 if span <= 0 else min(width - 1, max(0, int((x - x0) / span * width)))
        sums[column] += value  # type: ignore[operator]
        counts[column] += 1
    out: list[float | None] = []
    held: float | None = None
    for total, count in zip(sums, counts, strict=True):
        held = total / count if count else held
        out.append(held)
    return out


def braille_rows(values: list[float | None], top: float, rows: int) -> list[str]:
    """An area chart of ``values`` (two a cell) from 0 to ``top`` in ``rows`` rows of
    braille; a value above zero shows at least one dot, None shows nothing."""
    levels = []
    for value in values:
        if value is None or not math.isfinite(value) or top <= 0:
            levels.append(0)
            continue
        level = round(min(1.0, max(0.0, value / top)) * rows * 4)
        levels.append(max(1, level) if value > 0 else 0)
    if len(levels) % 2:
        levels.append(0)
    lines = []
    for row in range(rows):
        floor = (rows - 1 - row) * 4  # dot levels below this row
        cells = []
        for left, right in zip(levels[::2], levels[1::2], strict=True):
            code = 0
            for side, level in enumerate((left, right)):
                for dot in range(min(4, max(0, level - floor))):
                    code |= DOTS[dot][side]
            cells.append(chr(0x2800 + code))
        lines.append("".join(cells))
    return lines


def reading_text(kind: str, value: float | None) -> str:
    if value is None:
        return fmt.NA
    return f"{value:.1f} %" if kind == "percent" else format_size(value)


def _top(name: str, kind: str, values: list[float], history: SystemHistory) -> float:
    """The chart's ceiling: 100 % (more for a process on several cores), the machine's RAM
    or GPU memory when known, else the largest value."""
    highest = max(values, default=0.0)
    if kind == "percent":
        return max(100.0, highest)
    total = history.totals.get(CEILINGS.get(name, ""))
    return max(total or 0.0, highest) or 1.0


def panel(history: SystemHistory, index: int, width: int, height: int) -> list[Text]:
    """One reading's chart, ``width`` x ``height`` cells (one row: a sparkline after its value)."""
    name, label, kind = SERIES[index]
    samples = history.samples()
    latest = samples[-1].values[index] if samples else None
    values = [s.values[index] for s in samples if s.values[index] is not None]
    top = _top(name, kind, values, history)  # type: ignore[arg-type]
    style = COLOURS[name]
    if height < MIN_CHART_ROWS:
        head = Text(f"{label:<14}", style="bold").append(f"{reading_text(kind, latest):>10} ")
        room = max(0, width - len(head))
        spark = braille_rows(columns_of(samples, index, 2 * room), top, 1)[0]
        return [head.append(spark, style=style)]
    title = Text(label, style="bold").append(f" {reading_text(kind, latest)}")
    title.append(f"  (0 – {reading_text(kind, top)})", style="dim")
    rows = braille_rows(columns_of(samples, index, 2 * width), top, height - 1)
    return [title] + [Text(row, style=style) for row in rows]


def span_text(history: SystemHistory) -> str:
    samples = history.samples()
    return fmt.duration(samples[-1].x - samples[0].x) if samples else fmt.NA


def charts_text(history: SystemHistory, width: int, height: int, source: str) -> Text:
    """Every reading's chart in two columns (one when narrow), under a line saying what the
    history covers; they share the height left."""
    shown = [
        i for i, (name, _, _) in enumerate(SERIES) if name not in GPU_SERIES or history.has_gpu()
    ]
    across = 2 if width >= 60 else 1
    cell = max(10, (width - GUTTER * (across - 1)) // across)
    grid_rows = math.ceil(len(shown) / across)
    header = height > grid_rows  # else every row goes to a sparkline
    tall = max(1, (height - header) // grid_rows)
    text = Text(no_wrap=True, overflow="crop", end="")
    if header:
        text.append(
            f"History · {span_text(history)} · {len(history)} samples · {source}", style="dim"
        )
    for start in range(0, len(shown), across):
        panels = [panel(history, i, cell, tall) for i in shown[start : start + across]]
        for line in range(max(len(p) for p in panels)):
            text.append("\n" if text else "")
            for n, lines in enumerate(panels):
                part = lines[line] if line < len(lines) else Text()
                part.truncate(cell, pad=n < len(panels) - 1)
                text.append_text(part)
                if n < len(panels) - 1:
                    text.append(" " * GUTTER)
    return text


class SystemCharts(Widget):
    """The history charts under the System pane's readings; hidden until two samples exist."""

    def __init__(self) -> None:
        super().__init__()
        self.history: SystemHistory | None = None
        self.source = ""
        self.display = False
        self._stamp: tuple[int, int, str] | None = None  # what was drawn last

    def show(self, history: SystemHistory | None, source: str) -> None:
        """Chart ``history`` (said to come from ``source``); fewer than two samples: hidden.
        Drawn again only when it changed (a resize redraws by itself)."""
        stamp = (history.added, len(history), source) if history is not None else None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self.history, self.source = history, source
        self.display = history is not None and len(history) >= 2
        self.refresh()

    def render(self) -> Text:
        if self.history is None or len(self.history) < 2:
            return Text()
        return charts_text(self.history, self.size.width, self.size.height, self.source)
