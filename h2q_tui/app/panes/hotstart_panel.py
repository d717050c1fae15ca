"""The Crystal pane's hot-start half: what generation is using, how its last load went
(phases, cold or warm), the hot swaps with their timings, and ``hotstart`` on demand.

Everything shown comes from h2q_tui/checkpoints/timing.py (every load, swap and snapshot a
generator in this process made) and from :func:`h2q_tui.hotstart.measure.measure`, which
the ``h`` key runs on a worker thread of its own (it starts fresh processes: seconds).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from h2q_tui.checkpoints import timing as timeline
from h2q_tui.errors import UserError
from h2q_tui.hotstart.measure import Request, measure
from h2q_tui.system.threads import on_own_thread

SWAPS_SHOWN = 3
HOTSTART_REPEATS = 2  # fresh processes per column when h is pressed (each ~1–2 s)
REFRESH_S = 1.0
# loads made to measure a checkpoint, not to generate from it: never "generation's last load"
MEASURING = ("hotstart", "crystal pane")


def describe_last_load(event: timeline.LoadEvent | None) -> Text:
    if event is None:
        return Text("last load: none yet in this process", style="dim")
    text = Text("last load: ", style="bold")
    text.append(event.line())
    if event.consumer:
        text.append(f" · by {event.consumer}", style="dim")
    return text


def describe_swaps(events: list[timeline.LoadEvent]) -> Text:
    swaps = [e for e in events if e.kind == "swap"][-SWAPS_SHOWN:]
    if not swaps:
        return Text("swaps: none yet (Generate pane: f follows a run)", style="dim")
    text = Text("swaps: ", style="bold")
    text.append(
        " · ".join(f"step {e.step:,} in {1000 * e.total_s:.1f} ms" for e in reversed(swaps))
    )
    return text


def compact_report(report: dict[str, Any]) -> Text:
    """Three lines that fit 80 columns: totals to the first token per way of loading, the
    in-process phases, and the cache state (the full table is ``h2q-tui hotstart``)."""
    columns = report["columns"]

    def ms(key: str, phase: str | None = None) -> str:
        column = columns.get(key)
        if column is None:
            return "—"
        summary = column["total_s"] if phase is None else column["phases"].get(phase)
        return "—" if summary is None else f"{1000 * summary['median']:,.1f} ms"

    text = Text(f"hotstart {report['what']} · {report['cache']}\n", style="bold")
    text.append(
        f"to first token: in-process {ms('in_process')} (naive {ms('naive_in_process')}) · "
        f"fresh process {ms('fresh')} (import torch {ms('fresh', 'import_torch')}; naive "
        f"{ms('naive_fresh')})\n"
    )
    inner = columns.get("in_process", {}).get("phases", {})
    text.append(
        "in-process: "
        + ", ".join(f"{name} {1000 * v['median']:.1f}" for name, v in inner.items())
        + f" ms · median of {report['repeats']}",
        style="dim",
    )
    return text


class HotStartPanel(Vertical):
    """A few lines under the Crystal pane's table; refreshed once a second from the timeline."""

    class Measured(Message, bubble=False):
        def __init__(self, report: dict[str, Any] | None, error: str | None) -> None:
            super().__init__()
            self.report, self.error = report, error

    def __init__(self, id: str = "hot-panel") -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self.running: str | None = None  # the checkpoint being measured
        self.report: dict[str, Any] = {}  # the last hotstart report (measure()'s JSON)

    def compose(self) -> ComposeResult:
        yield Static("", id="hot-using")
        yield Static("", id="hot-last")
        yield Static("", id="hot-swaps")
        yield Static(
            Text("h: time load → first token of the selected checkpoint (hotstart)", "dim"),
            id="hot-report",
        )

    def on_mount(self) -> None:
        self.border_title = "hot start"
        self.refresh_lines()
        self.set_interval(REFRESH_S, self.refresh_lines)

    def refresh_lines(self) -> None:
        # the shell keeps what the Generate pane uses; an app without one (a test's) has none
        source = getattr(self.app, "generation_source", "")
        source = source or "no model loaded (Generate pane: s, a path, or f)"
        self.query_one("#hot-using", Static).update(
            Text.assemble(("generation uses: ", "bold"), source)
        )
        events = timeline.events()
        loads = [
            e for e in events if e.kind in ("load", "snapshot") and e.consumer not in MEASURING
        ]
        self.query_one("#hot-last", Static).update(describe_last_load(loads[-1] if loads else None))
        self.query_one("#hot-swaps", Static).update(describe_swaps(events))

    def measure(self, checkpoint: str) -> str | None:
        """Start ``hotstart`` on ``checkpoint``; returns why not (one line) or None."""
        if self.running is not None:
            return f"hotstart is already measuring {self.running}"
        self.running = checkpoint
        self.query_one("#hot-report", Static).update(
            Text(f"measuring {checkpoint}: in-process, then fresh processes…", "yellow")
        )
        self._measure_worker(checkpoint)
        return None

    @work(thread=True, exclusive=True, group="hotstart", exit_on_error=False)
    @on_own_thread
    def _measure_worker(self, checkpoint: str) -> None:
        try:
            report = measure(Request(checkpoint=checkpoint, repeats=HOTSTART_REPEATS))
        except UserError as exc:
            self.post_message(self.Measured(None, str(exc)))
        except Exception as exc:  # noqa: BLE001 - one line in the pane, not a crash
            self.post_message(self.Measured(None, f"hotstart failed: {type(exc).__name__}: {exc}"))
        else:
            self.post_message(self.Measured(report, None))

    def on_hot_start_panel_measured(self, message: Measured) -> None:
        self.running = None
        widget = self.query_one("#hot-report", Static)
        if message.error:
            widget.update(Text(message.error.splitlines()[0], style="bold red"))
            return
        self.report = message.report or {}
        widget.update(compact_report(self.report))
        self.refresh_lines()
