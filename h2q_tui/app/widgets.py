"""Dashboard widgets: metric cards, the loss chart, the system readout."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static
from textual_plot import HiResMode, LegendLocation, PlotWidget
from textual_plot.axis_formatter import NumericAxisFormatter

from h2q_tui.app import formatting as fmt
from h2q_tui.system.budget import MemoryBudget, Reading
from h2q_tui.system.monitor import SystemSnapshot, format_value
from h2q_tui.training.events import LN2
from h2q_tui.training.history import Curve, RunHistory, debiased_ema
from h2q_tui.units import format_size

RUN_COLOURS = ["cyan", "orange1", "green", "magenta", "yellow", "blue", "red", "white"]
X_AXES = ("step", "tokens", "time")
SMALL_CHART = (70, 14)  # columns, rows: below either the chart has no legend
CARDS = [
    ("state", "State"),
    ("step", "Step"),
    ("train", "Train CE"),
    ("horizon", "Horizon val / diff"),
    ("heldout", "Held-out val"),
    ("energy", "Energy ‖h‖"),
    ("grad", "Grad norm"),
    ("speed", "Speed"),
    ("eta", "ETA"),
    ("lr", "Learning rate"),
    ("penalty", "Penalty · rank"),
    ("process", "This process"),
]
# what else would be cut at 80 columns
COMPACT_TITLES = {"horizon": "Horizon val/diff", "process": "Process"}


class MetricCard(Static):
    """A titled box holding one reading."""

    def __init__(self, key: str, title: str) -> None:
        super().__init__(id=f"card-{key}", classes="card")
        self.border_title = title

    def show(self, text: str | Text) -> None:
        """New text, redrawn in place: a card's size is fixed, so no layout pass (which
        would recompose the whole screen) and nothing at all when the text is unchanged.
        A str is shown as it is (never parsed as markup)."""
        text = Text(text) if isinstance(text, str) else text
        if text != self.content:
            self.update(text, layout=False)


class CardGrid(Grid):
    """The ICU cards for the focused run."""

    def compose(self) -> ComposeResult:
        for key, title in CARDS:
            yield MetricCard(key, title)

    _compact: bool | None = None

    def show(
        self,
        history: RunHistory,
        state: str,
        compact: bool = False,
        snap: SystemSnapshot | None = None,
        live: bool = True,
    ) -> None:
        if compact != self._compact:
            self._compact = compact
            for key, title in CARDS:
                card = self.query_one(f"#card-{key}", MetricCard)
                card.border_title = COMPACT_TITLES.get(key, title) if compact else title
        for key, text in card_texts(history, state, compact).items():
            self.query_one(f"#card-{key}", MetricCard).show(text)
        self.show_process(snap, history, live)

    def show_process(
        self, snap: SystemSnapshot | None, history: RunHistory | None, live: bool = True
    ) -> None:
        """The process card alone: new system readings arrive on their own clock."""
        text = process_text(snap, history, bool(self._compact), live)
        self.query_one("#card-process", MetricCard).show(text)


def process_text(
    snap: SystemSnapshot | None,
    history: RunHistory | None = None,
    compact: bool = False,
    live: bool = True,
) -> Text:
    """This process's RSS, CPU share and CUDA memory (when it has some), from the monitor
    thread's last snapshot. Attached (``live`` false) the run's RSS from its step records:
    this viewer's own readings say nothing of the run."""
    size = short_bytes if compact else format_size
    if not live:
        step = (history.last_step if history else None) or {}
        rss = step.get("rss_bytes")
        at = f"@ step {step['step']:,}" if rss is not None else "no reading yet"
        return Text(f"run RSS {size(rss)}\n{at}")
    if snap is None:
        return Text(f"RSS {fmt.NA}\nCPU {fmt.NA}", style="dim")
    rss = f"RSS {size(snap.process_rss_bytes)}"
    cpu = f"CPU {format_value(snap.process_cpu_percent, '.0f')}%"
    cuda = snap.cuda_reserved_bytes
    cuda = snap.cuda_allocated_bytes if cuda is None else cuda
    if cuda is None:
        return Text(f"{rss}\n{cpu}")
    if compact:  # two lines of at most 17 characters
        return Text(f"{rss} {cpu}\nGPU {size(cuda)} reserved")
    return Text(f"{rss}\n{cpu}\nGPU {size(cuda)} reserved")


def short_bytes(n: int | None) -> str:
    """``312M``, ``2.0G``: sizes for the compact cards."""
    if n is None:
        return fmt.NA
    if n < 1024**3:
        return f"{n / 1024**2:.0f}M"
    gib = n / 1024**3
    return f"{gib:.1f}G" if gib < 100 else f"{gib:.0f}G"


def card_texts(h: RunHistory, state: str, compact: bool = False) -> dict[str, str | Text]:
    """The text of every card, from the history alone (deterministic for snapshots).

    ``compact`` (small terminals): at most two lines of at most 17 characters per card.
    Any reading may be missing or null (old or foreign logs): it shows n/a.
    """
    step = h.last_step or {}
    train_cfg = h.config.get("train", {})
    model_cfg = h.config.get("model", {})
    max_steps = train_cfg.get("max_steps") or 0
    at_step = step.get("step", (h.started or {}).get("start_step", 0))
    total = f" / {max_steps:,}" if max_steps > 0 else ""  # -1 (older logs: 0): no limit
    progress = ""
    if step:
        share = fmt.number(_times(step.get("data_progress"), 100), ".1f")
        epoch = fmt.number(step.get("epoch"), "d")
        progress = f"epoch {epoch} · {share}%"  # of the epoch's data ("of data" wrapped at 160)
    horizon = h.last_horizon or {}
    colour = fmt.horizon_colour(horizon.get("val_loss_nats"), horizon.get("train_loss_nats"))
    horizon_text = Text(
        f"Val  {fmt.number(horizon.get('val_loss_nats'), '.4f')}\nDiff {fmt.number(horizon.get('diff_nats'), '+.4f')}",
        style=colour,
    )
    if not compact:
        horizon_text.append("\nnext chunk; noisy", style="dim")
    heldout = h.last_heldout or {}
    heldout_nats = heldout.get("val_loss_nats")
    if compact:
        heldout_text = fmt.loss_text(heldout_nats, short=True) + (
            f" @{heldout['step']:,}" if heldout else ""
        )
    else:
        heldout_text = fmt.loss_text(heldout_nats) + (
            f"\n@ step {heldout['step']:,}" if heldout else ""
        )
    state_text = Text(state, style="bold red" if "ALARM" in state else "bold")
    rank = model_cfg.get("rank") if model_cfg.get("family") != "gpt" else None
    speed = fmt.NA
    if step.get("step_ms") is not None or step.get("tokens_per_s") is not None:
        speed = (
            f"{fmt.number(step.get('step_ms'), ',.0f')} ms/step\n"
            f"{fmt.number(step.get('tokens_per_s'), ',.0f')} tok/s"
        )
    return {
        "state": state_text,
        "step": f"{at_step:,}{total}\n{progress}",
        "train": fmt.loss_text(step.get("train_loss_nats"), short=compact),
        "horizon": horizon_text,
        "heldout": heldout_text,
        "energy": fmt.number(step.get("energy"), ".2f"),
        "grad": fmt.number(step.get("grad_norm"), ".3f") + ("\nbefore clipping" if step else ""),
        "speed": speed,
        "eta": fmt.duration(h.eta_seconds()),
        "lr": fmt.number(step.get("lr"), ".3e"),
        "penalty": fmt.number(step.get("aux_loss"), ".4f")
        + f" · rank {h.rank if h.rank is not None else (rank if rank is not None else fmt.NA)}"
        + (f"\nraw {fmt.number(step.get('penalty'), '.2f')}" if step else ""),
    }


def _times(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _thin(xs: list[float], ys: list[float], limit: int) -> tuple[list[float], list[float]]:
    """At most ``limit`` points (the last always kept), finite values only."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=False) if math.isfinite(y)]
    stride = max(1, math.ceil(len(pairs) / max(1, limit)))
    pairs = pairs[::stride] + ([pairs[-1]] if pairs and (len(pairs) - 1) % stride else [])
    return [p[0] for p in pairs], [p[1] for p in pairs]


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


class SystemPanel(Static):
    """Host, process and GPU readings; this process's memory against its budget as a bar;
    the thread counts of training and generation. Anything unavailable shows n/a."""

    def __init__(self, engine: Any = None) -> None:
        super().__init__()
        prepared = getattr(engine, "prepared", None)  # LiveEngine: the budget before step 1
        config = getattr(prepared, "config", None)
        self.live = engine is not None  # attached: the snapshot is this viewer, not the run
        self.budget = MemoryBudget.from_config(config.train) if config else None
        self.train_threads = config.train.threads if config else None

    def show(self, snap: SystemSnapshot | None, history: RunHistory | None = None) -> None:
        self.update(system_text(snap, history, self.budget, self.live, self.train_threads))


BAR_WIDTH = 16
BUDGET_STYLES = {"ok": "green", "alarm": "bold yellow", "over": "bold red", "none": ""}


def run_rows(h: RunHistory | None) -> list[tuple[str, str]]:
    """What the run trains on, from its run_started record (old logs lack some of it)."""
    started = (h.started if h else None) or {}
    if not started:
        return []
    rows = []
    if started.get("precision"):
        rows.append(("Precision", h.precision_text.removeprefix("precision ")))  # type: ignore[union-attr]
    if started.get("machine"):
        rows.append(("Machine", started["machine"]))
    if "device" in started:
        rows.append(("Device", started["device"]))
    return rows


def budget_bar(reading: Reading, flag: str = "--memory-budget") -> Text:
    """``████████░░░░ 312.5 MB of 400MB · 78 %`` coloured by state (ok, >= 90 %, > 100 %);
    without a budget the reading and "no budget set"."""
    text = Text()
    if reading.limit is None:
        text.append(format_size(reading.used))
        text.append(f" · no budget set ({flag} SIZE)", style="dim")
        return text
    style = BUDGET_STYLES[reading.state]
    if reading.used is None:
        text.append(f"n/a of {reading.limit.text} budget")
        return text
    fraction = reading.fraction or 0.0
    filled = min(BAR_WIDTH, round(fraction * BAR_WIDTH))
    text.append("█" * filled, style=style or None)
    text.append("░" * (BAR_WIDTH - filled), style="dim")
    text.append(f" {reading.size(reading.used)} of {reading.limit.text} · ")
    text.append(f"{100 * fraction:.0f} %", style=style or None)
    if reading.state == "over":
        text.append(" OVER", style=style)
    return text


def thread_counts(history: RunHistory | None, configured: int | None) -> tuple[str, str]:
    """Training's torch intra-op threads (the run's, else what it will take) and decoding's,
    and why training has its count ("" when the run's log does not say)."""
    from h2q_tui.generation.generate import DECODE_THREADS
    from h2q_tui.system.thread_choice import usable_cores

    chosen = history.threads if history else None
    training, reason = (str(chosen[0]), chosen[1]) if chosen else (None, "")
    if training is None and configured is not None:
        training = str(configured) if configured else f"auto (1 or {usable_cores()})"
    counts = f"training {training or fmt.NA} · generation {DECODE_THREADS} (batch-1 decoding)"
    return counts, reason


def system_text(
    snap: SystemSnapshot | None,
    history: RunHistory | None = None,
    budget: MemoryBudget | None = None,
    live: bool = True,
    train_threads: int | None = None,
) -> Text:
    """The System pane. ``budget``: the live run's (else the run's config says it); ``live``:
    the snapshot's process is the one that trains (attached: the run's RSS comes from its
    step records)."""
    text = Text()
    for label, value in run_rows(history):
        text.append(f"{label:<18}", style="bold")
        text.append(f"{value}\n")
    if text:
        text.append("\n")
    if snap is None:
        text.append("collecting system readings…", style="dim")
        return text
    if budget is None or not budget.is_set:
        budget = MemoryBudget.from_config(history.config.get("train", {}) if history else {})
    ram = f"{format_size(snap.host_ram_used_bytes)} / {format_size(snap.host_ram_total_bytes)}"
    rss, vram = budget.readings(snap.process_rss_bytes, snap.cuda_reserved_bytes)[0], None
    if snap.cuda_reserved_bytes is not None or budget.vram is not None:
        vram = budget.readings(None, snap.cuda_reserved_bytes)[1]
    threads, why = thread_counts(history, train_threads)
    rows: list[tuple[str, str | Text]] = [
        ("Host CPU", f"{format_value(snap.host_cpu_percent)} %"),
        ("Host RAM", f"{ram} used (the whole machine; no budget)"),
        ("This process CPU", f"{format_value(snap.process_cpu_percent)} %"),
    ]
    if live:
        rows.append(("This process RSS", budget_bar(rss)))
    else:
        step = (history.last_step if history else None) or {}
        rows.append(("This process RSS", f"{format_size(snap.process_rss_bytes)} (this viewer)"))
        run_rss = budget.readings(step.get("rss_bytes"))[0]
        at = f" @{step['step']:,}" if step else ""
        rows.append((f"Run RSS{at}", budget_bar(run_rss)))
    rows += [
        ("CUDA allocated", format_size(snap.cuda_allocated_bytes)),
        (
            "CUDA reserved",
            budget_bar(vram, "--vram-budget") if vram is not None else fmt.NA,
        ),
        ("Threads", threads),
        *([("Threads chosen", why)] if why else []),
        ("GPUs", snap.gpu_status),
    ]
    for label, value in rows:
        text.append(f"{label:<18}", style="bold")
        text.append(value)
        text.append("\n")
    for gpu in snap.gpus:
        text.append(f"\nGPU {gpu.index} {gpu.name or fmt.NA}\n", style="bold cyan")
        mem = f"{format_size(gpu.memory_used_bytes)} / {format_size(gpu.memory_total_bytes)}"
        text.append(
            f"  util {format_value(gpu.utilization_percent)} %   memory {mem}   "
            f"power {format_value(gpu.power_watts)} W   temp {format_value(gpu.temperature_c, '.0f')} °C\n"
        )
    return text
