"""The h2q-tui dashboard's shell: the bindings, the tabs of the six panes, the link to the
engine (TrainingApp, which it builds on) and the timers that redraw; it routes the messages
panes send each other, so no pane queries another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual.app import ComposeResult, SystemCommand
from textual.events import Resize
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Header, Static, TabbedContent, TabPane

from h2q_tui.app import formatting as fmt
from h2q_tui.app import keys
from h2q_tui.app.engine_link import AttachedRuns, Engine, LiveEngine
from h2q_tui.app.fields import FittingFooter
from h2q_tui.app.messages import GenerationSourceChanged, OpenInGenerate
from h2q_tui.app.panes.crystal import CrystalPane
from h2q_tui.app.panes.generate import GeneratePane
from h2q_tui.app.panes.icu import IcuPane, write_chart_csv
from h2q_tui.app.panes.metrics import MetricsPane
from h2q_tui.app.panes.ollama import OllamaPane
from h2q_tui.app.panes.system import SystemPanel, system_history
from h2q_tui.app.panes.system_charts import SystemCharts
from h2q_tui.app.run_browser import RunBrowserScreen
from h2q_tui.app.runs import Runs, attached_state
from h2q_tui.app.screens import ConfigDiffScreen, HelpScreen
from h2q_tui.app.signals import EXIT_UI_FAILED, Lifeline, quiet_driver
from h2q_tui.app.training_app import TrainingApp
from h2q_tui.system.monitor import SystemMonitor, SystemSnapshot

CATCH_UP_S = 0.001  # the pause between two slices of an attached log: keys and redraws first
# below either size the cards go compact (4 x 3 on narrow screens, two lines each): 80x24 works
COMPACT_WIDTH, COMPACT_HEIGHT = 120, 40
PANES_WITH_KEYS = {"generate": GeneratePane, "crystal": CrystalPane, "ollama": OllamaPane}
PANES_WITH_KEYS["metrics"] = MetricsPane


class SnapshotTaken(Message):
    def __init__(self, snapshot: SystemSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class H2QApp(TrainingApp):
    """Live training dashboard, or a viewer of runs other processes write (attach)."""

    CSS_PATH = "app.tcss"
    TITLE = "h2q-tui"
    # the screen gets -narrow/-wide and -short/-tall classes: app.tcss goes compact with them
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (COMPACT_WIDTH, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (COMPACT_HEIGHT, "-tall")]
    BINDINGS = keys.BINDINGS

    def __init__(
        self,
        engine: Engine | None = None,
        attached: AttachedRuns | None = None,
        autostart: bool = False,
        monitor: bool = True,
        refresh_s: float = 1.0,
        browser: RunBrowserScreen | None = None,
    ) -> None:
        super().__init__(engine, attached)
        self.browser = browser  # a folder of runs: the dashboard waits for the runs picked
        self.autostart, self.use_monitor, self.refresh_s = autostart, monitor, refresh_s
        self.monitor: SystemMonitor | None = None
        self.snapshot: SystemSnapshot | None = None
        self.generation_source = ""  # what the Generate pane uses ("" when it has no model)
        self._show_compare_keys()
        self.lifeline: Lifeline | None = None  # a real terminal or web tab: see signals.py
        self._catching_up = False  # a poll of a log that is behind is scheduled
        self._swapping = False  # the panes are being built again (open_runs): no redraw

    def _show_compare_keys(self) -> None:
        """Several runs attached: f and d show in the footer."""
        if self.attached and len(self.attached.names) > 1:
            for key in keys.COMPARE_KEYS:  # this instance's bindings: the class keeps its own
                bindings = self._bindings.key_to_bindings.get(key, [])
                self._bindings.key_to_bindings[key] = [
                    dataclasses.replace(b, show=True) for b in bindings
                ]

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        engine = self.engine
        snapshot = self.request_snapshot if engine else None
        hint = str(self.attached.run_dirs[0]) if self.attached else ""
        live_run = engine.name if engine else None
        tokenizer = engine.tokenizer if engine else None
        yield Header()
        with TabbedContent(initial="icu"):
            with TabPane("ICU", id="icu"):
                yield IcuPane(self.runs.histories)
            with TabPane("System", id="system"):
                yield SystemPanel(engine is not None, engine.train_config if engine else None)
                yield SystemCharts()
            with TabPane("Generate", id="generate"):
                yield GeneratePane(
                    live_run=live_run,
                    request_snapshot=snapshot,
                    live_tokenizer=tokenizer,
                    checkpoint_hint=hint,
                    follow_hint=str(self._follow_dir() or ""),
                )
            with TabPane("Crystal", id="crystal"):
                yield CrystalPane(engine=engine, request_snapshot=snapshot, checkpoint_hint=hint)
            with TabPane("Ollama", id="ollama"):
                yield OllamaPane(
                    live_run=live_run,
                    request_snapshot=snapshot,
                    live_tokenizer=tokenizer,
                    checkpoint_hint=hint,
                )
            with TabPane("Metrics", id="metrics"):
                yield MetricsPane(self.runs.histories, self.export_dir)
        yield Static(id="status-line")  # under every pane: notices show wherever one looks
        yield FittingFooter()

    def on_mount(self) -> None:
        if not self.is_headless:  # first: not under Pilot, this process is the app's own
            self.lifeline = Lifeline(self, self.engine)
            self.lifeline.install(asyncio.get_running_loop())
        self.sub_title = " + ".join(self.runs.histories) + (" (attached)" if self.attached else "")
        self.set_interval(self.refresh_s, self.redraw)
        # the chart (textual-plot, pure Python) is the costly widget: it redraws 4x less often
        self.set_interval(4 * self.refresh_s, self.redraw_chart)
        if self.attached:
            self._follow_attached()
        elif self.browser is not None:
            self.sub_title = "run browser"
            self.push_screen(self.browser, callback=self.open_runs)
        elif self.engine is not None:
            records, skipped = self.engine.previous_records()
            self.runs.replay(records, skipped, self.engine.resume_step)
            self._dirty = True
        if self.use_monitor:
            self.monitor = SystemMonitor(
                on_snapshot=lambda snap: self.post_message(SnapshotTaken(snap))
            ).start()
            if isinstance(self.engine, LiveEngine):  # its log gets `system` events from these
                self.engine.latest_readings = lambda: self.monitor.latest if self.monitor else None
        self.redraw(force=True)
        self.call_after_refresh(self.redraw_chart)  # a replayed or attached history: now
        if self.autostart:
            self.action_start()

    def on_unmount(self) -> None:
        """The app is ending, by a quit, a signal or a failure: training stops and saves, and
        the process ends once it has (Textual's shutdown would otherwise wait on the run)."""
        if self.monitor:
            self.monitor.stop()
        if self.engine is not None:  # Textual has cancelled its worker: ask the trainer itself
            self.engine.request_stop("stopped")
        if self.lifeline is not None:
            result = self.return_value
            self.lifeline.arm(EXIT_UI_FAILED if self.return_code else result or 0)

    def _follow_dir(self) -> Path | None:
        """The run dir the Generate pane's follow mode watches: the live run's, else the
        first attached one."""
        if self.engine is not None:
            return self.engine.run_dir
        return self.attached.run_dirs[0] if self.attached else None

    def get_driver_class(self):
        """Textual's own driver, but writes to a terminal that has gone never block the app."""
        return quiet_driver(super().get_driver_class())

    def _follow_attached(self) -> None:
        self.poll_attached()
        self.set_interval(0.5, self.poll_attached)

    async def open_runs(self, run_dirs: list[Path] | None) -> None:
        """The browser's pick: the dashboard on those runs, overlaid as ``attach RUN...``."""
        if not run_dirs:
            return
        self.attached = AttachedRuns(run_dirs)
        self.runs = Runs(self.attached.names, "attached", self.notify)
        self._show_compare_keys()
        self.set_focus(None)  # the focused widget is about to go
        self._swapping = True  # the redraw timers run on their own tasks: they wait
        try:
            await self.recompose()  # the panes, built again on these runs' histories
        finally:
            self._swapping = False
        self.screen.focus_next()  # the first focusable widget, as at start
        self.sub_title = " + ".join(self.runs.histories) + " (attached)"
        self._follow_attached()
        self._dirty = True
        self.redraw(force=True)
        self.call_after_refresh(self.redraw_chart)

    # ------------------------------------------------------------------ records in
    def poll_attached(self) -> None:
        """Fold a slice of what the attached logs gained; a log that is behind gets the next
        slice soon, with keys and redraws answered in between."""
        attached = self.attached
        assert attached is not None
        self._dirty = self.runs.poll(attached) or self._dirty
        if attached.behind and not self._catching_up:
            self._catching_up = True
            self.set_timer(CATCH_UP_S, self._catch_up)
        self.draw_status()

    def _catch_up(self) -> None:
        self._catching_up = False
        self.poll_attached()

    def on_snapshot_taken(self, message: SnapshotTaken) -> None:
        self.snapshot = message.snapshot
        if self.attached is None:  # attached: the card shows the run's RSS, not this viewer's
            self.query_one(IcuPane).show_process(self.snapshot)
        if self.query_one(TabbedContent).active == "system":
            self.show_system()

    # ------------------------------------------------------------------ messages between panes
    def on_open_in_generate(self, message: OpenInGenerate) -> None:
        """A pane asks to load a checkpoint or crystallized folder in the Generate pane."""
        self.query_one(TabbedContent).active = "generate"
        self.query_one(GeneratePane).load_path(message.path)

    def on_generation_source_changed(self, message: GenerationSourceChanged) -> None:
        self.generation_source = message.source

    # ------------------------------------------------------------------ drawing
    @property
    def compact(self) -> bool:
        """A small terminal (80x24 and up to COMPACT_*): cards of two short lines."""
        width, height = self.size
        return width < COMPACT_WIDTH or height < COMPACT_HEIGHT

    def on_resize(self, event: Resize) -> None:
        self._dirty = True  # card texts depend on the size
        self.query_one(FittingFooter).compact = event.size.width < COMPACT_WIDTH  # more keys

    def redraw(self, force: bool = False) -> None:
        """Cards, Thought Stream and event log, when new records arrived."""
        if not self.is_running or self._swapping:
            return
        self._fold_pending()
        self._notified = False
        if not (self._dirty or force):
            return
        self._dirty = False
        history = self.runs.history
        state = attached_state(history) if self.attached else self.runs.state
        live = self.attached is None
        self.query_one(IcuPane).show(history, state, self.compact, self.snapshot, live)
        self.draw_status()
        if self.query_one(TabbedContent).active == "system":
            self.show_system()

    def redraw_chart(self, force: bool = False) -> None:
        if not self.is_running or self._swapping:
            return
        icu, active = self.query_one(IcuPane), self.query_one(TabbedContent).active
        if active == "metrics":  # hidden, it costs nothing; shown, only new data redraws it
            self.query_one(MetricsPane).draw(icu.axis, force)
        if not (icu.chart_dirty or force):
            return
        if active == "icu":
            icu.draw_chart()

    @property
    def settled(self) -> bool:
        """Nothing waits to be folded in or drawn (tests and benchmarks wait on this)."""
        icu = self.query_one(IcuPane)
        active = self.query_one(TabbedContent).active
        waiting = {"icu": icu.chart_dirty, "metrics": self.query_one(MetricsPane).changed()}
        return not (self._records or self._dirty or waiting.get(active, False))

    def _view_changed(self) -> None:
        """A key changed what the chart shows: redraw it now, not at the next tick."""
        self._dirty = True
        self.redraw()
        self.redraw_chart(force=True)

    def show_system(self) -> None:
        """The System pane's readings and their history (a live run: this dashboard's
        monitor; attached: the run's ``system`` records)."""
        history = self.runs.history
        self.query_one(SystemPanel).show(self.snapshot, history)
        charts = self.query_one(SystemCharts)
        charts.show(*system_history(history, self.monitor if self.attached is None else None))
        self.query_one(SystemPanel).set_class(charts.display, "-with-history")

    # ------------------------------------------------------------------ view control
    def action_pane(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane
        self._view_changed()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "system":  # it is only drawn while visible
            self.show_system()
        if event.pane.id == "icu":  # what came while another pane showed
            self.call_after_refresh(self.query_one(IcuPane).append_log)
        panes: dict[str, Widget] = {
            name: self.query_one(kind) for name, kind in PANES_WITH_KEYS.items()
        }
        if event.pane.id in panes:
            panes[event.pane.id].focus()  # its keys (g, s, r…) work at once
        elif self.focused is not None and any(
            pane in self.focused.ancestors_with_self for pane in panes.values()
        ):
            self.set_focus(None)  # a hidden pane keeps no keys

    async def run_pane_action(self, pane: str, action: str) -> None:
        """A pane's key from the command palette: show the pane, then run it there."""
        self.action_pane(pane)
        widget = self.query_one(PANES_WITH_KEYS[pane])
        widget.focus()
        await widget.run_action(action)

    def action_toggle_units(self) -> None:
        self.query_one(IcuPane).toggle_units()
        self._view_changed()

    def action_cycle_axis(self) -> None:
        self.query_one(IcuPane).cycle_axis()
        self._view_changed()

    def action_smoothing(self, delta: float) -> None:
        self.query_one(IcuPane).change_smoothing(delta)
        self._view_changed()

    def action_focus_next_run(self) -> None:
        focused = self.runs.focus_next()
        self.notify(f"cards show {focused}", timeout=2, markup=False)
        self._dirty = True

    def action_config_diff(self) -> None:
        configs = {name: h.config for name, h in self.runs.histories.items()}
        self.push_screen(ConfigDiffScreen(list(configs), fmt.config_diff(configs)))

    def available_actions(self) -> tuple[keys.KeyRow, ...]:
        """The key rows that can act here (help screen, command palette)."""
        return keys.available(attached=self.attached is not None)

    def action_help(self) -> None:
        rows = [(row.keys, row.description) for row in self.available_actions()]
        self.push_screen(HelpScreen([*rows, keys.PALETTE_ONLY]))

    def export_dir(self) -> Path:
        if self.engine is not None:
            return Path(self.engine.run_dir)
        assert self.attached is not None
        return self.attached.run_dirs[list(self.runs.histories).index(self.runs.focused)]

    def action_export(self) -> None:
        folder = self.export_dir()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        csv_path = folder / f"charts-{stamp}.csv"
        write_chart_csv(csv_path, self.runs.histories)
        svg_path = self.save_screenshot(filename=f"screen-{stamp}.svg", path=str(folder))
        self.notify(f"wrote {csv_path.name} and {Path(svg_path).name} in {folder}", markup=False)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, RunBrowserScreen):
            return  # no run is open yet: the dashboard's actions have nothing to act on
        for row in self.available_actions():
            yield SystemCommand(row.description, f"key: {row.keys}", self._palette_callback(row))

    def _palette_callback(self, row: keys.KeyRow):
        if row.pane:
            return lambda: self.run_pane_action(row.pane, row.action)
        return lambda: self.run_action(row.action)


def make_app(
    engine: Engine | None = None,
    attach: list[Path] | None = None,
    autostart: bool = False,
    monitor: bool = True,
    refresh_s: float = 1.0,
    browse: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> H2QApp:
    """The one factory used by the CLI, Pilot tests and snapshot tests; ``browse``: a folder of
    runs to pick from first (``clock``: the browser's ages)."""
    attached = AttachedRuns([Path(p) for p in attach]) if attach else None
    browser = RunBrowserScreen(Path(browse), clock=clock) if browse is not None else None
    return H2QApp(
        engine=engine,
        attached=attached,
        autostart=autostart,
        monitor=monitor,
        refresh_s=refresh_s,
        browser=browser,
    )
