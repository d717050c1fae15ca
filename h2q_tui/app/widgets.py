"""Widget pieces several panes share: plot axes that survive a degenerate range."""

from __future__ import annotations

import math

from textual_plot import PlotWidget
from textual_plot.axis_formatter import NumericAxisFormatter


class SafeAxisFormatter(NumericAxisFormatter):
    """textual-plot's numeric ticks, without its ValueError on a degenerate axis: a range
    too narrow for the float spacing (or not finite) once killed the dashboard with "math
    domain error" from ``log10`` of a zero tick spacing. Such an axis gets one tick."""

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        if not (math.isfinite(min_) and math.isfinite(max_)) or max_ <= min_:
            return [min_] if math.isfinite(min_) else []
        ticks = super().get_ticks(min_, max_, max_ticks)
        if len(ticks) >= 2 and not ticks[1] - ticks[0] > 0:
            return ticks[:1]
        return ticks

    def get_labels_for_ticks(self, ticks) -> list[str]:
        if len(ticks) >= 2 and not ticks[1] - ticks[0] > 0:
            return [f"{tick:g}" for tick in ticks]
        if len(ticks) == 1:
            return [f"{ticks[0]:g}"]
        return super().get_labels_for_ticks(ticks)


def safe_axes(plot: PlotWidget) -> None:
    plot.set_x_formatter(SafeAxisFormatter())
    plot.set_y_formatter(SafeAxisFormatter())
