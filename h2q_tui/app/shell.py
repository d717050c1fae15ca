"""The h2q-tui dashboard: ICU pane (cards, chart, Thought Stream, event log), System pane,
Generate pane (generate_pane.py), Crystal pane (crystal_pane.py).

Training runs in a thread worker and never waits on the UI: records go into a deque and one
coalescing message tells the UI to fold them in; widgets redraw on a timer when dirty.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import signal
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.events import Key, Resize
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Header, RichLog, Static, TabbedContent, TabPane
from textual.worker import Worker

from h2q_tui.app import formatting as fmt
from h2q_tui.app.engine_link import AttachedRuns, LiveEngine
from h2q_tui.app.fields import FittingFooter
from h2q_tui.app.panes.crystal import CrystalPane
from h2q_tui.app.panes.generate import GeneratePane
from h2q_tui.app.panes.ollama import OllamaPane
from h2q_tui.app.screens import ConfigDiffScreen, ConfirmScreen, ErrorScreen, HelpScreen
from h2q_tui.app.signals import EXIT_UI_FAILED, Lifeline, quiet_driver
from h2q_tui.app.widgets import X_AXES, CardGrid, LossChart, SystemPanel
from h2q_tui.system.monitor import SystemMonitor, SystemSnapshot
from h2q_tui.system.stop_signals import BY_SIGNUM, exit_code
from h2q_tui.system.threads import run_on_own_thread
from h2q_tui.training import commands
from h2q_tui.training.history import RunHistory
from h2q_tui.training.tail import FULL_TAIL_BYTES, MAX_LINE_BYTES

LR_STEP = 1.25  # raise/lower keys multiply the LR by this (or its inverse)
# an attached log is folded in slices of at most this much reading and work, so a huge one
# loads while keys and redraws go on in between
POLL_SLICE_BYTES = 256 << 10
POLL_SLICE_S = 0.05
CATCH_UP_S = 0.001  # the pause between two slices: what waits (keys, redraws) goes first
# below either size the cards go compact (4 x 3 on narrow screens, two lines each): 80x24 works
COMPACT_WIDTH, COMPACT_HEIGHT = 120, 40
# actions that act on a run this process trains: off (hidden, refused) when attached
ENGINE_ACTIONS = frozenset({"start", "toggle_pause", "stop", "save", "sample", "lr_up", "lr_down"})
ENGINE_PALETTE_ACTIONS = frozenset(
    {"generate_pane('snapshot')", "crystal_pane('snapshot')", "ollama_pane('snapshot')"}
)
ENGINE_KEYS = frozenset({"t", "p", "space", "x", "c", "n", "plus", "equals_sign", "minus"})
COMPARE_KEYS = ("f", "d")  # shown in the footer when several runs are attached
PAUSING = "pausing after this step"
# records folded in (and the status line drawn) as soon as they arrive, not at the next tick
AT_ONCE = frozenset({"notice", "progress", "paused", "resumed", "alarm", "run_finished"})
STOPPING = "stopping: saving checkpoint…"
SAVING = "saving a checkpoint after this step…"
SAMPLING = "Thought Stream sample asked: it shows after this step…"
PAUSING_ALARMS = ("ALARM nan", "ALARM memory_over")  # states of alarms the trainer pauses on


class RecordsArrived(Message):
    """New engine records wait in the app's deque (coalesced: at most one pending)."""


class SnapshotTaken(Message):
    def __init__(self, snapshot: SystemSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class EngineFailed(Message):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class H2QApp(App[int]):
    """Live training dashboard, or a viewer of runs other processes write (attach)."""

    CSS_PATH = "app.tcss"
    TITLE = "h2q-tui"
    # the screen gets -narrow/-wide and -short/-tall classes: app.tcss goes compact with them
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (COMPACT_WIDTH, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (COMPACT_HEIGHT, "-tall")]
    # the footer shows them in this order as far as the width allows: help and quit come early
    BINDINGS = [
        Binding("t", "start", "Train"),
        Binding("p,space", "toggle_pause", "Pause"),
        Binding("x", "stop", "Stop+save"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("c", "save", "Save"),
        Binding("n", "sample", "Sample"),
        Binding("plus,equals_sign", "lr_up", "LR ×1.25"),
        Binding("minus", "lr_down", "LR ÷1.25"),
        Binding("1", "pane('icu')", "ICU", show=False),
        Binding("2", "pane('system')", "System", show=False),
        Binding("3", "pane('generate')", "Generate", show=False),
        Binding("4", "pane('crystal')", "Crystal", show=False),
        Binding("5", "pane('ollama')", "Ollama", show=False),
        Binding("u", "toggle_units", "nats/bpb"),
        Binding("a", "cycle_axis", "x axis"),
        Binding("left_square_bracket", "smoothing(-0.05)", "Smooth −", show=False),
        Binding("right_square_bracket", "smoothing(0.05)", "Smooth +", show=False),
        Binding("f", "focus_next_run", "Next run", show=False),
        Binding("d", "config_diff", "Config diff", show=False),
        Binding("e", "export", "Export"),
    ]
    # (keys shown in help, action, description): the help screen and the command palette
    ACTIONS = [
        ("t", "start", "Start training (or --autostart)"),
        ("p / space", "toggle_pause", "Pause / resume"),
        ("x", "stop", "Stop training (saves a checkpoint first)"),
        ("c", "save", "Save a checkpoint now"),
        ("n", "sample", "Sample the Thought Stream now"),
        ("+", "lr_up", "Raise the learning rate ×1.25"),
        ("-", "lr_down", "Lower the learning rate ÷1.25"),
        ("1", "pane('icu')", "Show the ICU pane"),
        ("2", "pane('system')", "Show the System pane"),
        ("3", "pane('generate')", "Show the Generate pane"),
        ("4", "pane('crystal')", "Show the Crystal pane (crystallize + measure)"),
        ("5", "pane('ollama')", "Show the Ollama pane (an Ollama model vs a local one)"),
        ("u", "toggle_units", "Chart units: nats ↔ bits/byte"),
        ("a", "cycle_axis", "Chart x axis: step → tokens → wall time"),
        ("[", "smoothing(-0.05)", "Less EMA smoothing"),
        ("]", "smoothing(0.05)", "More EMA smoothing"),
        ("f", "focus_next_run", "Cards: focus the next attached run"),
        ("d", "config_diff", "Config diff between attached runs"),
        ("e", "export", "Export charts (CSV) and screen (SVG) into the run dir"),
        ("g / Enter", "generate_pane('generate')", "Generate: stream a continuation of the prompt"),
        ("Esc", "generate_pane('cancel')", "Generate: cancel (or leave a text field)"),
        ("←", "generate_pane('strength(-1)')", "Generate: steering strength −0.1 (down to −2)"),
        ("→", "generate_pane('strength(1)')", "Generate: steering strength +0.1 (up to +2)"),
        ("0", "generate_pane('strength_reset')", "Generate: steering strength back to 0"),
        ("s", "generate_pane('snapshot')", "Generate: snapshot the live model (run goes on)"),
        ("o", "generate_pane('open_checkpoint')", "Generate: load a checkpoint (path, Enter)"),
        ("r", "generate_pane('readout')", "Generate: steering readout vs strength 0"),
        ("f", "generate_pane('follow')", "Generate: follow the run (swap in each new checkpoint)"),
        ("s", "crystal_pane('snapshot')", "Crystal: snapshot the live model as the source"),
        ("o", "crystal_pane('open_checkpoint')", "Crystal: a checkpoint as source (path, Enter)"),
        ("r", "crystal_pane('run')", "Crystal: crystallize + measure the ticked methods"),
        ("Esc", "crystal_pane('cancel')", "Crystal: cancel the sweep (rows so far stay)"),
        ("g / Enter", "crystal_pane('open_in_generate')", "Crystal: open the row in Generate"),
        ("h", "crystal_pane('hotstart')", "Crystal: hot start of the row (load → first token)"),
        ("r", "ollama_pane('run')", "Ollama: the prompt on the Ollama and the local model"),
        ("l", "ollama_pane('refresh')", "Ollama: probe the server again, list its models"),
        ("s", "ollama_pane('snapshot')", "Ollama: snapshot the live model as the local one"),
        ("Esc", "ollama_pane('cancel')", "Ollama: cancel both sides"),
        ("?", "help", "Help: every key"),
        ("q", "quit", "Quit (asks while training; saves first)"),
    ]

    def __init__(
        self,
        engine: LiveEngine | Any | None = None,
        attached: AttachedRuns | None = None,
        autostart: bool = False,
        monitor: bool = True,
        refresh_s: float = 1.0,
    ) -> None:
        super().__init__()
        self.engine, self.attached, self.autostart = engine, attached, autostart
        self.use_monitor, self.refresh_s = monitor, refresh_s
        names = attached.names if attached else [engine.name if engine else "no run"]
        self.histories: dict[str, RunHistory] = {name: RunHistory() for name in names}
        self.focused_run = names[0]
        self.units, self.axis, self.smoothing = "nats", "step", 0.6
        self.state = "idle — press t to train" if engine else "attached"
        self.training_worker: Worker | None = None
        self.monitor: SystemMonitor | None = None
        self.snapshot: SystemSnapshot | None = None
        self._pending: deque[dict[str, Any]] = deque()
        self._notified = False
        self._dirty = True
        self._chart_dirty = True
        self._log_printed: dict[str, int] = dict.fromkeys(names, 0)
        self.commands_sent: list[commands.Command] = []
        self.pending: str | None = None  # what a key asked for, until the engine confirms it
        self._save_asked = False  # c was pressed: toast the checkpoint when it is saved
        self._lr_asked, self._lr_asks = 1.0, 0  # +/- asked for: the factor, and how many
        if attached and len(attached.names) > 1:
            for (
                key
            ) in COMPARE_KEYS:  # this instance's copy of the bindings: the class keeps its own
                bindings = self._bindings.key_to_bindings.get(key, [])
                self._bindings.key_to_bindings[key] = [
                    dataclasses.replace(b, show=True) for b in bindings
                ]
        self.replay_skipped_lines = 0  # unparsable lines in the replayed metrics.jsonl
        self.lifeline: Lifeline | None = None  # a real terminal or web tab: see signals.py
        self._bad_noted: dict[str, tuple[int, int, int]] = dict.fromkeys(names, (0, 0, 0))
        self._catching_up = False  # a poll of a log that is behind is scheduled
        self._thinning_noted: set[str] = set()  # runs whose thinned backlog the log mentions

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="icu"):
            with TabPane("ICU", id="icu"):
                with Vertical(id="icu-body"):
                    yield CardGrid()
                    with Container(id="chart-row"):  # side by side on small terminals
                        yield LossChart()
                        with Horizontal(id="streams"):
                            yield Static(id="thought-stream")
                            yield RichLog(
                                id="event-log", wrap=True, markup=False, max_lines=500, min_width=20
                            )
            with TabPane("System", id="system"):
                yield SystemPanel(engine=self.engine)  # its budget and thread counts
            with TabPane("Generate", id="generate"):
                prepared = getattr(self.engine, "prepared", None)  # LiveEngine: tokenizer
                yield GeneratePane(
                    live_run=self.engine.name if self.engine else None,
                    request_snapshot=self.request_snapshot if self.engine else None,
                    live_tokenizer=getattr(prepared, "tokenizer", None),
                    checkpoint_hint=str(self.attached.run_dirs[0]) if self.attached else "",
                    follow_hint=str(self._follow_dir() or ""),
                )
            with TabPane("Crystal", id="crystal"):
                yield CrystalPane(
                    engine=self.engine,
                    request_snapshot=self.request_snapshot if self.engine else None,
                    checkpoint_hint=str(self.attached.run_dirs[0]) if self.attached else "",
                )
            with TabPane("Ollama", id="ollama"):
                yield OllamaPane(
                    live_run=self.engine.name if self.engine else None,
                    request_snapshot=self.request_snapshot if self.engine else None,
                    live_tokenizer=getattr(prepared, "tokenizer", None),
                    checkpoint_hint=str(self.attached.run_dirs[0]) if self.attached else "",
                )
        yield Static(id="status-line")  # under every pane: notices show wherever one looks
        yield FittingFooter()

    def on_mount(self) -> None:
        if not self.is_headless:  # first: not under Pilot, this process is the app's own
            self.lifeline = Lifeline(self, self.engine)
            self.lifeline.install(asyncio.get_running_loop())
        self.sub_title = " + ".join(self.histories) + (" (attached)" if self.attached else "")
        self.query_one("#thought-stream").border_title = "Thought Stream"
        self.query_one("#event-log").border_title = "Events"
        self.set_interval(self.refresh_s, self.redraw)
        # the chart (textual-plot, pure Python) is the costly widget: it redraws 4x less often
        self.set_interval(4 * self.refresh_s, self.redraw_chart)
        if self.attached:
            self.poll_attached()
            self.set_interval(0.5, self.poll_attached)
        else:
            self.replay_history()
        if self.use_monitor:
            self.monitor = SystemMonitor(
                on_snapshot=lambda snap: self.post_message(SnapshotTaken(snap))
            ).start()
        self.redraw(force=True)
        self.call_after_refresh(
            self.redraw_chart
        )  # a replayed or attached history: now, not in 4 s
        if self.autostart:
            self.action_start()

    def on_unmount(self) -> None:
        """The app is ending, by a quit, a signal or a failure: training stops and saves, and
        the process ends once it has (Textual's shutdown would otherwise wait on the run)."""
        if self.monitor:
            self.monitor.stop()
        request_stop = getattr(self.engine, "request_stop", None)
        if request_stop is not None:  # Textual has cancelled its worker: ask the trainer itself
            request_stop("stopped")
        if self.lifeline is not None:
            result = self.return_value
            self.lifeline.arm(EXIT_UI_FAILED if self.return_code else result or 0)

    def get_driver_class(self):
        """Textual's own driver, but writes to a terminal that has gone never block the app."""
        return quiet_driver(super().get_driver_class())

    # ------------------------------------------------------------------ data in
    def on_record(self, record: dict[str, Any]) -> None:
        """Called on the training thread: never blocks, posts at most one pending message
        per tick, except for the rare records a person must see at once (notices...)."""
        self._pending.append(record)
        if not self._notified or record.get("event") in AT_ONCE:
            self._notified = True
            self.post_message(RecordsArrived())

    def on_records_arrived(self, _: RecordsArrived) -> None:
        # _notified stays set until the next redraw tick: at most one message per tick, so a
        # fast training loop cannot keep the UI thread (and the GIL) busy
        self._fold_pending()

    def _fold_pending(self) -> None:
        if not self._pending:
            return
        history = self.histories[self.focused_run] if not self.attached else None
        while self._pending:
            record = self._pending.popleft()
            if history is not None and history.add(record):  # bad records: counted, not read
                self._track_state(record)
        self._dirty = True
        self.draw_status()  # notices and progress show at once, not at the next tick

    def replay_history(self) -> None:
        """A resumed run's metrics.jsonl, before training starts: the chart shows the steps
        before the resume (the resume's run_started drops the steps it trains again)."""
        previous = getattr(self.engine, "previous_records", None)
        if previous is None:
            return
        records, skipped = previous()
        if not records and not skipped:
            return
        history = self.histories[self.focused_run]
        for record in records:
            history.add(record)
        self.replay_skipped_lines = skipped
        last = history.last_step["step"] if history.last_step else 0
        history.note(f"history from metrics.jsonl: {len(history.train):,} steps (to step {last:,})")
        self._note_bad(self.focused_run, history, skipped)
        if history.finished is not None or history.started is not None:
            resume_step = getattr(self.engine, "resume_step", None)
            at = f" at step {resume_step:,}" if resume_step is not None else ""
            self.state = f"idle — t resumes{at}"
        self._dirty = True

    def _note_bad(
        self, name: str, history: RunHistory, skipped_lines: int, long_lines: int = 0
    ) -> None:
        """One event-log line each time more bad records or unparsable lines were skipped."""
        bad_before, lines_before, long_before = self._bad_noted[name]
        if history.bad_records > bad_before:
            count = history.bad_records - bad_before
            history.note(
                f"skipped {count} bad record{'s' * (count != 1)} (last: {history.last_problem})"
            )
        if skipped_lines > lines_before:
            count = skipped_lines - lines_before
            what = (
                "line that is not a JSON object"
                if count == 1
                else "lines that are not JSON objects"
            )
            longer = long_lines - long_before
            over = f" ({longer} over {MAX_LINE_BYTES >> 20} MiB)" if longer else ""
            history.note(f"skipped {count} {what}{over}")
        self._bad_noted[name] = (history.bad_records, skipped_lines, long_lines)

    def _track_state(self, record: dict[str, Any]) -> None:
        kind = record.get("event")
        if kind in ("paused", "resumed", "run_finished", "run_failed"):
            self.pending = None  # what the key asked for has happened
        elif kind == "sample" and self.pending == SAMPLING:
            self.pending = None
        elif kind == "lr_changed" and self._lr_asks:
            self._lr_asks -= 1
            if not self._lr_asks:  # every change asked for has happened
                self._lr_asked = 1.0
                self.pending = None
                self.notify(f"learning rate now {record['lr']:.3e}", timeout=3)
        if kind == "paused":
            if not self.state.startswith(PAUSING_ALARMS):  # they pause: keep saying so
                self.state = "paused"
        elif kind in ("resumed", "run_started"):
            self.state = "running"
        elif kind == "alarm":
            self.state = f"ALARM {record['kind']}" + (
                " — paused" if record["kind"] in ("nan", "memory_over") else ""
            )
            self.notify(
                str(record["message"]), title="Alarm", severity="error", timeout=10, markup=False
            )
        elif kind == "run_finished":
            self.state = f"finished ({record['reason']})"
        elif kind == "run_failed":
            self.state = "failed"
        elif kind == "checkpoint" and self._save_asked:  # periodic ones: the event log only
            self._save_asked = False
            self.pending = None if self.pending == SAVING else self.pending
            self.notify(f"checkpoint saved at step {record['step']}", timeout=3)

    def poll_attached(self) -> None:
        """Fold what the attached logs gained, for at most POLL_SLICE_S at a time: a huge log
        loads over many slices, with keys and redraws answered in between."""
        attached = self.attached
        started = time.perf_counter()
        while True:
            for name, records in attached.read_new(POLL_SLICE_BYTES).items():  # type: ignore[union-attr]
                history = self.histories[name]
                for record in records:
                    history.add(record)  # a bad record is skipped and counted there
                tailer = attached.tailers[name]  # type: ignore[union-attr]
                self._note_bad(name, history, tailer.skipped_lines, tailer.long_lines)
                if tailer.keep_every > 1 and name not in self._thinning_noted:
                    self._thinning_noted.add(name)
                    history.note(
                        f"a long metrics.jsonl: 1 step record in {tailer.keep_every:,} read "
                        f"before its last {FULL_TAIL_BYTES >> 20} MiB (what the chart can show)"
                    )
                self._dirty = self._dirty or bool(records)
            if not attached.behind or time.perf_counter() - started > POLL_SLICE_S:  # type: ignore[union-attr]
                break
        if attached.behind and not self._catching_up:  # type: ignore[union-attr]
            self._catching_up = True
            self.set_timer(CATCH_UP_S, self._catch_up)
        self.draw_status()

    def _catch_up(self) -> None:
        self._catching_up = False
        self.poll_attached()

    def on_snapshot_taken(self, message: SnapshotTaken) -> None:
        self.snapshot = message.snapshot
        if self.attached is None:  # attached: the card shows the run's RSS, not this viewer's
            self.query_one(CardGrid).show_process(self.snapshot, None)
        if self.query_one(TabbedContent).active == "system":
            self.query_one(SystemPanel).show(self.snapshot, self.histories[self.focused_run])

    def on_engine_failed(self, message: EngineFailed) -> None:
        self._fold_pending()
        history = self.histories[self.focused_run]
        if history.finished is None:  # failed before the trainer could report it
            step = (history.last_step or {}).get("step", 0)
            history.add({"event": "run_failed", "step": step, "message": message.message})
        self.state = "failed"
        self._dirty = True
        self.push_screen(ErrorScreen(message.message))

    # ------------------------------------------------------------------ drawing
    @property
    def compact(self) -> bool:
        """A small terminal (80x24 and up to COMPACT_*): cards of two short lines."""
        width, height = self.size
        return width < COMPACT_WIDTH or height < COMPACT_HEIGHT

    def on_resize(self, event: Resize) -> None:
        self._dirty = True  # card texts depend on the size
        self.query_one(FittingFooter).compact = event.size.width < COMPACT_WIDTH  # more keys

    def skipped(self) -> tuple[int, int, str | None]:
        """Bad records, unparsable lines and a read error, over every run shown."""
        bad = sum(h.bad_records for h in self.histories.values())
        if self.attached:
            tailers = self.attached.tailers.values()
            lines = sum(t.skipped_lines for t in tailers)
            errors = [t.read_error for t in tailers if t.read_error]
            return bad, lines, errors[0] if errors else None
        return bad, self.replay_skipped_lines, None

    def status_text(self) -> Text:
        """The status line: what is happening now (a key's request, an engine notice, the
        progress of a long task), bad input skipped, and the run's precision."""
        h = self.histories[self.focused_run]
        now: list[str] = [self.pending] if self.pending else []
        if h.notice is not None and h.notice["message"] != self.pending:
            now.append(h.notice["message"])
        if h.progress is not None:
            now.append(fmt.progress_text(h.progress))
        if not now and self.state == "starting…":
            now.append("starting: reading the data and building the model…")
        elif not now and self.run_active and h.last_step is None and h.finished is None:
            now.append("preparing step 1…")
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        for part in now:
            text.append(" · " if text else "")
            text.append(part, style="bold yellow")
        bad, lines, error = self.skipped()
        for count, what in ((bad, "bad record"), (lines, "unparsable line")):
            if count:
                text.append(" · " if text else "")
                text.append(f"{count:,} {what}{'s' * (count != 1)} skipped", style="bold red")
        if error:
            text.append(" · " if text else "")
            text.append(error, style="bold red")
        if h.precision_text:
            text.append(" · " if text else "")
            text.append(h.precision_text, style="dim")
        if not text:
            if self.engine is not None and self.training_worker is None:
                text.append("press t to train · ? lists every key", style="dim")
        if self.attached:
            text.append(" · " if text else "")
            text.append("read-only view: ? lists the keys that work here", style="dim")
        return text

    def draw_status(self) -> None:
        if not self.is_running:
            return
        line = self.query_one("#status-line", Static)
        text = self.status_text()
        if text != line.content:
            line.update(text, layout=False)  # one fixed line: no layout pass

    def attached_state(self, h: RunHistory) -> str:
        if h.finished:
            return f"finished ({h.finished.get('reason', 'failed')})"
        if h.alarm_active:
            return f"ALARM {h.alarm_active['kind']}"
        return "paused" if h.paused else ("following" if h.started else "waiting for metrics.jsonl")

    def redraw(self, force: bool = False) -> None:
        """Cards, Thought Stream and event log, when new records arrived."""
        if not self.is_running:
            return
        self._fold_pending()
        self._notified = False
        if not (self._dirty or force):
            return
        self._dirty = False
        self._chart_dirty = True
        history = self.histories[self.focused_run]
        state = self.attached_state(history) if self.attached else self.state
        live = self.attached is None
        self.query_one(CardGrid).show(history, state, self.compact, self.snapshot, live)
        self.draw_status()
        stream = thought_stream_text(history.samples[-2:])
        thought_stream = self.query_one("#thought-stream", Static)
        if stream != thought_stream.content:
            thought_stream.update(stream, layout=False)  # a fixed-size box: no layout pass
        self._append_log()
        if self.query_one(TabbedContent).active == "system":
            self.query_one(SystemPanel).show(self.snapshot, self.histories[self.focused_run])

    def redraw_chart(self, force: bool = False) -> None:
        if not (self._chart_dirty or force) or not self.is_running:
            return
        if self.query_one(TabbedContent).active != "icu":
            return
        self._chart_dirty = False
        self.query_one(LossChart).draw(self.histories, self.axis, self.units, self.smoothing)

    @property
    def settled(self) -> bool:
        """Nothing waits to be folded in or drawn (tests and benchmarks wait on this)."""
        chart_waiting = self._chart_dirty and self.query_one(TabbedContent).active == "icu"
        return not (self._pending or self._dirty or chart_waiting)

    def _view_changed(self) -> None:
        """A key changed what the chart shows: redraw it now, not at the next tick."""
        self._dirty = True
        self.redraw()
        self.redraw_chart(force=True)

    def _append_log(self) -> None:
        log = self.query_one("#event-log", RichLog)
        if log.scrollable_content_region.width < 10:  # hidden, or not laid out yet: wrapped
            return  # at min_width the lines would stay that narrow; the next redraw writes them
        for name, history in self.histories.items():
            new = history.notes - self._log_printed[name]  # history.log is trimmed: count notes
            prefix = f"{name}: " if len(self.histories) > 1 else ""
            for line in history.log[-new:] if new > 0 else []:
                log.write(prefix + line)
            self._log_printed[name] = history.notes

    # ------------------------------------------------------------------ engine control
    @property
    def run_active(self) -> bool:
        return self.training_worker is not None and not self.training_worker.is_finished

    def _train(self) -> None:
        try:  # on a thread that ends with the run: see h2q_tui/system/threads.py
            run_on_own_thread(self.engine.run, self.on_record)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - a worker error becomes a modal, never a dead app
            self.post_message(EngineFailed(f"{type(exc).__name__}: {exc}"))

    def action_start(self) -> None:
        if self.engine is None:
            self.notify(
                "attached runs are read-only: start training with h2q-tui or --no-ui",
                severity="warning",
            )
        elif self.training_worker is None:
            self.state = "starting…"
            self._dirty = True
            self.training_worker = self.run_worker(
                self._train, thread=True, name="training", exit_on_error=False
            )
        elif not self.run_active:
            self.notify(
                "this run has finished; start a new one with --resume RUN_DIR", severity="warning"
            )

    def send(self, command: commands.Command) -> bool:
        if not self.run_active:
            self.notify("no training run is active (press t to start)", severity="warning")
            return False
        self.commands_sent.append(command)
        self.engine.send(command)  # type: ignore[union-attr]
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Attached runs are read-only: their training keys leave the footer and do nothing."""
        if self.attached and action in ENGINE_ACTIONS:
            return False
        return True

    def on_key(self, event: Key) -> None:
        """A training key on an attached run is off (check_action): say why once it is pressed."""
        if self.attached and event.key in ENGINE_KEYS:
            self.notify(
                "attached runs are read-only: train with h2q-tui or --no-ui, then attach",
                severity="warning",
            )

    def available_actions(self) -> list[tuple[str, str, str]]:
        """ACTIONS that can act here (help screen, command palette)."""
        if not self.attached:
            return list(self.ACTIONS)
        off = ENGINE_ACTIONS | ENGINE_PALETTE_ACTIONS
        return [a for a in self.ACTIONS if a[1] not in off]

    def _say_pending(self, text: str) -> None:
        """Show at once what a key asked for, until the record that confirms it arrives."""
        self.pending = text
        self.draw_status()

    def action_toggle_pause(self) -> None:
        paused = self.histories[self.focused_run].paused  # an ALARM is not always paused
        if self.send(commands.Resume() if paused else commands.Pause()):
            self._say_pending("resuming…" if paused else PAUSING)

    def action_stop(self) -> None:
        if self.send(commands.Stop()):
            self._say_pending(STOPPING)

    def action_save(self) -> None:
        self._save_asked = self.send(commands.SaveNow())
        if self._save_asked:
            self._say_pending(SAVING)

    def action_sample(self) -> None:
        if self.send(commands.SampleNow()):
            self._say_pending(SAMPLING)

    def _follow_dir(self) -> Path | None:
        """The run dir the Generate pane's follow mode watches: the live run's, else the
        first attached one."""
        if self.engine is not None:
            return getattr(self.engine, "run_dir", None)
        return self.attached.run_dirs[0] if self.attached else None

    def request_snapshot(self, deliver) -> str | None:
        """Ask the live run for a copy of its model (Generate pane): None when asked, else why not."""
        if self.training_worker is None:
            return "no model yet: training has not started (press t), or load a checkpoint"
        if not self.run_active:
            return f"the run has finished: load its checkpoint ({self.engine.run_dir})"  # type: ignore[union-attr]
        self.send(commands.TakeSnapshot(deliver))
        return None

    def action_lr_up(self) -> None:
        self._scale_lr(LR_STEP)

    def action_lr_down(self) -> None:
        self._scale_lr(1 / LR_STEP)

    def _scale_lr(self, factor: float) -> None:
        """Ask for the LR change and say so at once; the lr_changed record confirms it."""
        if self.send(commands.ScaleLearningRate(factor)):
            self._lr_asked *= factor
            self._lr_asks += 1
            self._say_pending(f"learning rate ×{self._lr_asked:.3g} asked: from the next step…")

    async def stop_on_signal(self, signum: int) -> None:
        """A stop signal (signals.py has already asked the trainer to stop): once it has saved,
        exit 128 + signum, as --no-ui does."""
        await self._save_and_exit(exit_code(signum), signal.Signals(signum).name)

    async def action_help_quit(self) -> None:
        """Ctrl-C with nothing selected to copy: save (when training) and exit 130."""
        if self.engine is not None and self.run_active:
            self.engine.request_stop(BY_SIGNUM[signal.SIGINT].reason)
        await self._save_and_exit(exit_code(signal.SIGINT), "Ctrl-C")

    async def _save_and_exit(self, code: int, name: str) -> None:
        if self.run_active:
            self._say_pending(f"{name}: {STOPPING} then quitting")
            await self.training_worker.wait()  # type: ignore[union-attr]
        self.exit(code)

    async def action_quit(self) -> None:
        if not self.run_active:
            self.exit(0)
            return

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            if self.send(commands.Stop()):
                self._say_pending(f"{STOPPING} then quitting")
            await self.training_worker.wait()  # type: ignore[union-attr]
            self.exit(0)

        self.push_screen(
            ConfirmScreen("Training is running. Save a checkpoint and quit?"), answered
        )

    # ------------------------------------------------------------------ view control
    def action_pane(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane
        self._view_changed()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "system":  # it is only drawn while visible
            self.query_one(SystemPanel).show(self.snapshot, self.histories[self.focused_run])
        if event.pane.id == "icu":
            self.call_after_refresh(self._append_log)  # what came while another pane showed
        panes = {
            "generate": self.query_one(GeneratePane),
            "crystal": self.query_one(CrystalPane),
            "ollama": self.query_one(OllamaPane),
        }
        if event.pane.id in panes:
            panes[event.pane.id].focus()  # its keys (g, s, r…) work at once
        elif self.focused is not None and any(
            pane in self.focused.ancestors_with_self for pane in panes.values()
        ):
            self.set_focus(None)  # a hidden pane keeps no keys

    async def action_generate_pane(self, action: str) -> None:
        """A Generate pane key from the command palette: show the pane, then run it there."""
        self.action_pane("generate")
        pane = self.query_one(GeneratePane)
        pane.focus()
        await pane.run_action(action)

    async def action_crystal_pane(self, action: str) -> None:
        """A Crystal pane key from the command palette: show the pane, then run it there."""
        self.action_pane("crystal")
        pane = self.query_one(CrystalPane)
        pane.focus()
        await pane.run_action(action)

    async def action_ollama_pane(self, action: str) -> None:
        """An Ollama pane key from the command palette: show the pane, then run it there."""
        self.action_pane("ollama")
        pane = self.query_one(OllamaPane)
        pane.focus()
        await pane.run_action(action)

    def action_toggle_units(self) -> None:
        self.units = "bpb" if self.units == "nats" else "nats"
        self._view_changed()

    def action_cycle_axis(self) -> None:
        self.axis = X_AXES[(X_AXES.index(self.axis) + 1) % len(X_AXES)]
        self._view_changed()

    def action_smoothing(self, delta: float) -> None:
        self.smoothing = round(min(0.99, max(0.0, self.smoothing + delta)), 2)
        self._view_changed()

    def action_focus_next_run(self) -> None:
        names = list(self.histories)
        self.focused_run = names[(names.index(self.focused_run) + 1) % len(names)]
        self.notify(f"cards show {self.focused_run}", timeout=2, markup=False)
        self._dirty = True

    def action_config_diff(self) -> None:
        configs = {name: h.config for name, h in self.histories.items()}
        self.push_screen(ConfigDiffScreen(list(configs), fmt.config_diff(configs)))

    def action_help(self) -> None:
        keys = [(key, description) for key, _, description in self.available_actions()]
        self.push_screen(HelpScreen([*keys, ("ctrl+p", "Command palette: these actions, themes")]))

    def export_dir(self) -> Path:
        if self.engine is not None:
            return Path(self.engine.run_dir)
        return self.attached.run_dirs[list(self.histories).index(self.focused_run)]  # type: ignore[union-attr]

    def action_export(self) -> None:
        folder = self.export_dir()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        csv_path = folder / f"charts-{stamp}.csv"
        write_chart_csv(csv_path, self.histories)
        svg_path = self.save_screenshot(filename=f"screen-{stamp}.svg", path=str(folder))
        self.notify(f"wrote {csv_path.name} and {Path(svg_path).name} in {folder}", markup=False)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for key, action, description in self.available_actions():
            yield SystemCommand(
                description, f"key: {key}", lambda action=action: self.run_action(action)
            )


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


def run_app(app: App, **run_options: Any) -> int:
    """Run the dashboard to its end: its exit code, non-zero when Textual ended with an
    unhandled exception (Textual has then printed the traceback and set return_code 1)."""
    result = app.run(**run_options)
    if app.return_code:
        return app.return_code
    return result if isinstance(result, int) else 0


def make_app(
    engine: Any | None = None,
    attach: list[Path] | None = None,
    autostart: bool = False,
    monitor: bool = True,
    refresh_s: float = 1.0,
) -> H2QApp:
    """The one factory used by the CLI, Pilot tests and snapshot tests."""
    attached = AttachedRuns([Path(p) for p in attach]) if attach else None
    return H2QApp(
        engine=engine, attached=attached, autostart=autostart, monitor=monitor, refresh_s=refresh_s
    )
