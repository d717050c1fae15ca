"""The System pane: host, process and GPU readings, this process's memory against its
budget as a bar, and the thread counts of training and generation."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from h2q_tui.app import formatting as fmt
from h2q_tui.config import TrainConfig
from h2q_tui.system.budget import MemoryBudget, Reading
from h2q_tui.system.monitor import SystemMonitor, SystemSnapshot, format_value
from h2q_tui.system.readings_history import SystemHistory
from h2q_tui.system.thread_choice import DECODE_THREADS, usable_cores
from h2q_tui.training.history import RunHistory
from h2q_tui.units import format_size


class SystemPanel(Static):
    """Host, process and GPU readings; this process's memory against its budget as a bar;
    the thread counts of training and generation. Anything unavailable shows n/a."""

    def __init__(self, live: bool, train_config: TrainConfig | None = None) -> None:
        super().__init__()
        self.live = live  # attached: the snapshot is this viewer, not the run
        # a live run's budget and threads, known before step 1
        self.budget = MemoryBudget.from_config(train_config) if train_config else None
        self.train_threads = train_config.threads if train_config else None

    def show(self, snap: SystemSnapshot | None, history: RunHistory | None = None) -> None:
        self.update(system_text(snap, history, self.budget, self.live, self.train_threads))


def system_history(history: RunHistory, monitor: SystemMonitor | None) -> tuple[SystemHistory, str]:
    """What the history charts show, and where it comes from: this dashboard's monitor
    (a live run: every reading), else the run's ``system`` records (its log)."""
    if monitor is not None:
        return monitor.history(), f"this process, every {monitor.interval_s:g} s"
    return history.system, "the run's system records, by training time"


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
