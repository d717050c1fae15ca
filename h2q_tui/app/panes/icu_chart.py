"""The ICU pane's loss chart: train CE and both validation curves, for one or several runs."""

from __future__ import annotations

import math

from textual_plot import HiResMode, LegendLocation, PlotWidget

from h2q_tui.app.widgets import safe_axes
from h2q_tui.training.events import LN2
from h2q_tui.training.history import Curve, RunHistory, debiased_ema

RUN_COLOURS = ["cyan", "orange1", "green", "magenta", "yellow", "blue", "red", "white"]
X_AXES = ("step", "tokens", "time")
SMALL_CHART = (70, 14)  # columns, rows: below either the chart has no legend


def _thin(xs: list[float], ys: list[float], limit: int) -> tuple[list[float], list[float]]:
    """At most ``limit`` points (the last always kept), finite values only."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=False) if math.isfinite(y)]
    stride = max(1, math.ceil(len(pairs) / max(1, limit)))
    pairs = pairs[::stride] + ([pairs[-1]] if pairs and (len(pairs) - 1) % stride else [])
    return [p[0] for p in pairs], [p[1] for p in pairs]


class LossChart(PlotWidget):
    """Train CE (raw + debiased EMA) and both validation curves, for one or several runs.

    On textual-plot's PlotWidget: braille lines (2×4 dots a cell), nice ticks, and zoom/pan
    with the mouse (wheel, drag) or, with the chart focused, ``+``/``-``, the arrows and
    ``r`` to reset. A zoom survives the redraws that new records bring (the widget keeps
    the user's limits; only unzoomed axes follow the data).
    """

    _last_draw: tuple | None = None

    def on_mount(self) -> None:
        safe_axes(self)

    def on_resize(self) -> None:
        """Point thinning depends on the width: draw again at the new size."""
        if self._last_draw is not None:
            self.draw(*self._last_draw)

    def draw(
        self, histories: dict[str, RunHistory], axis: str, units: str, smoothing: float
    ) -> None:
        self._last_draw = (histories, axis, units, smoothing)
        self.clear()
        self._drawn: tuple[list[float], list[float]] = ([], [])
        scale = 1 / LN2 if units == "bpb" else 1.0
        limit = max(20, 4 * self.size.width)  # braille: 2 dots a column
        several = len(histories) > 1
        for index, (name, h) in enumerate(histories.items()):
            colour = RUN_COLOURS[index % len(RUN_COLOURS)]
            prefix = f"{name} " if several else ""
            if not several:
                self._line(h.train, axis, scale, limit, "grey50", "train raw")
            smooth = Curve(h.train.max_points)
            smooth.step, smooth.tokens, smooth.time = h.train.step, h.train.tokens, h.train.time
            smooth.value = debiased_ema(h.train.value, smoothing)
            self._line(smooth, axis, scale, limit, colour, f"{prefix}train (EMA {smoothing:.2f})")
            held, horizon = ("green", "orange1") if not several else (colour, colour)
            self._points(h.heldout, axis, scale, limit, held, "•", f"{prefix}held-out")
            self._points(h.horizon, axis, scale, limit, horizon, "x", f"{prefix}horizon")
        self.set_xlabel({"step": "step", "tokens": "tokens", "time": "seconds"}[axis])
        self.set_ylabel("bits/byte" if units == "bpb" else "nats/byte")
        small = self.size.width < SMALL_CHART[0] or self.size.height < SMALL_CHART[1]
        self.margin_top = 1 if small else 2  # a small chart keeps its rows for the curves
        # the legend would hide a small chart (the curves keep their colours: README, ?);
        # an empty chart has nothing to name
        empty = not any(
            h.train.value or h.heldout.value or h.horizon.value for h in histories.values()
        )
        self.show_legend(LegendLocation.TOPRIGHT, is_visible=not (small or empty))
        self._fit_flat_axes(*self._drawn)

    _flat = (False, False)  # the x, y limits are ours, set for data of one value

    def _fit_flat_axes(self, xs: list[float], ys: list[float]) -> None:
        """Give an axis whose data is a single value a span of its own: textual-plot widens
        it by ±1e-6, which vanishes beside a large value (1e12 + 1e-6 is 1e12 as a float)
        and leaves a zero span to divide by."""
        flat = []
        for values, setter, ours in zip(
            (xs, ys), (self.set_xlimits, self.set_ylimits), self._flat, strict=True
        ):
            one = len(values) > 0 and min(values) == max(values)
            if one:
                pad = max(1e-6, abs(values[0]) * 1e-6)
                setter(values[0] - pad, values[0] + pad)
            elif ours:
                setter(None, None)  # data of several values again: follow it
            flat.append(one)
        self._flat = (flat[0], flat[1])

    def _line(self, curve: Curve, axis: str, scale: float, limit: int, colour, label) -> None:
        xs, ys = _thin(curve.x(axis), curve.value, limit)
        self._remember(xs, ys, scale)
        if xs:
            self.plot(xs, [y * scale for y in ys], colour, HiResMode.BRAILLE, label)

    def _points(self, curve: Curve, axis, scale, limit, colour, marker: str, label) -> None:
        xs, ys = _thin(curve.x(axis), curve.value, limit)
        self._remember(xs, ys, scale)
        if xs:
            self.scatter(xs, [y * scale for y in ys], marker, f"bold {colour}", None, label)

    def _remember(self, xs: list[float], ys: list[float], scale: float) -> None:
        drawn_x, drawn_y = self._drawn
        drawn_x.extend(x for x in xs if math.isfinite(x))
        drawn_y.extend(y * scale for y in ys if math.isfinite(y * scale))
