"""The Crystal pane: crystallize a checkpoint (or a snapshot of the live run) with the ticked
methods, measure each against the original on held-out windows, and plot Δ bits/byte against
the compression ratio with the Pareto front.

The work is the ``h2q-tui crystallize`` command's loop (:func:`h2q_tui.crystal.sweep.sweep`),
one method per pass so each row shows as soon as it is measured: encode, write
``OUT/<method>/``, load it back (decoding, as every command does) and compare it with the
original. It runs in a thread worker on a thread of its own (h2q_tui/system/threads.py), so
the UI never waits and training goes on.

A live snapshot is first saved as a plain checkpoint, ``RUN/crystal/checkpoints/live-step_N/``
(a temporary folder when the run dir is not writable), and its crystallized folders go to
``RUN/crystal/live-step_N/<method>/``; a checkpoint's go where the command puts them
(``RUN/crystal/`` for ``RUN/checkpoints/<name>/``). Every folder opens in the Generate pane
(``g`` on its row posts :class:`~h2q_tui.app.messages.OpenInGenerate`) or in any command that
takes a CHECKPOINT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, SelectionList, Static
from textual.worker import get_current_worker

from h2q_tui.app.display import one_line, short_path
from h2q_tui.app.messages import OpenInGenerate
from h2q_tui.app.model_source import Deliver, ModelSource, SnapshotKeyOff
from h2q_tui.app.panes.crystal_results import CrystalResults
from h2q_tui.app.panes.crystal_work import (
    Cancelled,
    Loaded,
    Order,
    drive_sweep,
    live_run,
    prepare,
    prepare_snapshot,
)
from h2q_tui.app.panes.hotstart_panel import HotStartPanel
from h2q_tui.crystal.sweep import Row, mark_pareto
from h2q_tui.errors import UserError
from h2q_tui.generation.generate import use_decoding_threads
from h2q_tui.system.threads import on_own_thread

BATCH = 32  # windows per forward pass
DEFAULT_TICKS = ("bf16", "int8", "int4-g128", "int4-g32", "svd:0.5+int8")


class CrystalPane(SnapshotKeyOff, Vertical, can_focus=True):
    """Source → ticked methods → rows (bytes, ratio, Δ, KLD, top-1) and the Pareto plot."""

    BINDINGS = [
        Binding("r", "run", "Crystallize"),
        Binding("escape", "cancel", "Cancel"),
        Binding("s", "snapshot", "Snapshot live"),
        Binding("g", "open_in_generate", "Open in Generate"),
        Binding("h", "hotstart", "Hot start"),
        Binding("o", "open_checkpoint", "Checkpoint", show=False),
        Binding("up", "row(-1)", "Row up", show=False),
        Binding("down", "row(1)", "Row down", show=False),
    ]

    class SourceReady(Message, bubble=False):
        def __init__(self, loaded: Loaded) -> None:
            super().__init__()
            self.loaded = loaded

    class Failed(Message, bubble=False):
        def __init__(self, message: str) -> None:
            super().__init__()
            self.message = message

    class Progress(Message, bubble=False):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class RowDone(Message, bubble=False):
        def __init__(self, row: Row) -> None:
            super().__init__()
            self.row = row

    class SweepDone(Message, bubble=False):
        def __init__(self, text: str, error: bool = False) -> None:
            super().__init__()
            self.text, self.error = text, error

    def __init__(
        self,
        engine: Any = None,
        request_snapshot: Any = None,
        checkpoint_hint: str = "",
        id: str | None = "crystal-pane",  # noqa: A002 - Textual's name
    ) -> None:
        super().__init__(id=id)
        self.engine, self.request_snapshot = engine, request_snapshot
        self.checkpoint_hint = checkpoint_hint
        self.loaded: Loaded | None = None
        self.rows: list[Row] = []
        self.busy: str | None = None  # "loading", "sweeping" or None
        self._live: dict[str, Any] = {}  # the live run's details of the last snapshot
        self.last_error = ""

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Static(
            "source: none yet — s snapshots the live run, or a checkpoint path + Enter"
            if self.request_snapshot is not None
            else "source: none yet — a checkpoint path + Enter (o)",
            id="cry-source",
        )
        yield ModelSource(
            label="checkpoint",
            input_id="cry-checkpoint",
            snapshot_id="cry-snapshot",
            placeholder="checkpoint folder, model.safetensors or run dir (latest) — Enter",
            consumer="crystal pane",  # hotstart_panel.MEASURING: not a load for generation
            value=self.checkpoint_hint,
            request_snapshot=self._request_snapshot if self.request_snapshot else None,
            guard=self._refusal,
            classes="cry-row",
        )
        with Horizontal(classes="cry-row"):
            yield Label("held-out")
            yield Input(
                placeholder="data file (empty: the embedded corpus's last 5 %)",
                id="cry-data",
                compact=True,
            )
            yield Label("windows", classes="cry-short")
            yield Input("0", id="cry-windows", type="integer", compact=True)
            yield Button("Crystallize (r)", id="cry-go", variant="primary", compact=True)
        yield Static("", id="cry-message")
        yield Static("", id="cry-progress")
        with Horizontal(id="cry-body"):
            yield SelectionList[str](id="cry-methods")
            yield CrystalResults()
        yield HotStartPanel()

    def on_mount(self) -> None:
        self.query_one("#cry-methods").border_title = "methods (space)"

    def say(self, message: str, error: bool = False) -> None:
        line = (message.strip().splitlines() or [""])[0]
        self.last_error = line if error else ""
        style = "bold red" if error else ""
        self.query_one("#cry-message", Static).update(one_line(line, style))

    def progress_line(self, text: str) -> None:
        self.query_one("#cry-progress", Static).update(one_line(text, "italic"))

    # ------------------------------------------------------------------ the source
    def action_open_checkpoint(self) -> None:
        self.query_one(ModelSource).focus_box()

    def action_snapshot(self) -> None:
        self.query_one(ModelSource).snapshot()

    def _refusal(self) -> str:
        """Why no load or snapshot may start now ("" when it may)."""
        if self.busy == "sweeping":
            return "a sweep is running: Esc cancels it first"
        return f"{self.busy}: wait for it or press Esc first" if self.busy else ""

    def _request_snapshot(self, deliver: Deliver) -> str | None:
        def on_training_thread(model: Any, step: int) -> None:
            self._live = live_run(self.engine)  # read between two steps, beside the copy
            deliver(model, step)

        return self.request_snapshot(on_training_thread)

    @on(ModelSource.Started)
    def _load_started(self, message: ModelSource.Started) -> None:
        message.stop()
        self.busy = "loading"
        self.say(message.text)
        self.focus()

    @on(ModelSource.Failed)
    def _load_failed(self, message: ModelSource.Failed) -> None:
        message.stop()
        self._failed(message.reason)

    @on(ModelSource.Loaded)
    def _loaded(self, message: ModelSource.Loaded) -> None:
        message.stop()
        if message.info is None:  # a live snapshot: saved as a checkpoint first
            self.say(f"saving the snapshot of step {message.step:,}…")
            self._snapshot_worker(message.model, message.step, self._live)
        else:
            self._source_worker(message.info, message.model)

    @work(thread=True, exclusive=True, group="source", exit_on_error=False)
    @on_own_thread
    def _source_worker(self, info: Any, model: Any) -> None:
        self._post_source(lambda: prepare(info, model))

    @work(thread=True, exclusive=True, group="source", exit_on_error=False)
    @on_own_thread
    def _snapshot_worker(self, model: Any, step: int, live: dict[str, Any]) -> None:
        self._post_source(lambda: prepare_snapshot(model, step, live))

    def _post_source(self, load: Callable[[], Loaded]) -> None:
        try:
            loaded = load()
        except UserError as exc:
            self.post_message(self.Failed(str(exc)))
        except Exception as exc:  # noqa: BLE001 - any load failure is a line, not a crash
            self.post_message(self.Failed(f"cannot load: {type(exc).__name__}: {exc}"))
        else:
            self.post_message(self.SourceReady(loaded))

    def on_crystal_pane_source_ready(self, message: SourceReady) -> None:
        self.busy = None
        self.loaded = loaded = message.loaded
        self.rows = []
        self.query_one(CrystalResults).show(self.rows)
        picker = self.query_one("#cry-methods", SelectionList)
        picker.clear_options()
        ranks = [m for m in loaded.methods if m.startswith("rank:")]
        ticks = set(DEFAULT_TICKS) | set(ranks[:1]) | {m for m in ranks if m.endswith("+int8")}
        picker.add_options([(m, m, m in ticks) for m in loaded.methods])
        self.query_one("#cry-source", Static).update(
            Text.assemble(
                ("source: ", "bold"),
                (loaded.describe, "bold cyan"),
                no_wrap=True,
                overflow="ellipsis",
            )
        )
        skipped = f" · {'; '.join(loaded.skipped)}" if loaded.skipped else ""
        self.say(f"ready: {loaded.out_note} — tick methods (space), r runs{skipped}")
        self.progress_line("")

    def on_crystal_pane_failed(self, message: Failed) -> None:
        self._failed(message.message)

    def _failed(self, reason: str) -> None:
        self.busy = None
        self.say(reason, error=True)
        self.progress_line("")

    # ------------------------------------------------------------------ the sweep
    def action_run(self) -> None:
        if self.loaded is None:
            self.say("no source yet: s snapshots the live run, or a checkpoint path + Enter", True)
            return
        if self.busy:
            self.say(f"{self.busy}: wait for it or press Esc first", error=True)
            return
        methods = list(self.query_one("#cry-methods", SelectionList).selected)
        if not methods:
            self.say("tick at least one method (space in the list)", error=True)
            return
        data = self.query_one("#cry-data", Input).value.strip() or None
        raw = self.query_one("#cry-windows", Input).value.strip() or "0"
        try:
            windows = int(raw)
        except ValueError:
            self.say(f"windows must be a number, got {raw!r}", error=True)
            return
        order = [m for m in self.loaded.methods if m in methods]
        self.busy = "sweeping"
        self.rows = []
        self.query_one(CrystalResults).show(self.rows)
        out = short_path(self.loaded.out_root)
        self.say(f"crystallizing {len(order)} methods → {out}/ · Esc cancels")
        self._sweep_worker(self.loaded, order, data, windows)

    @work(thread=True, exclusive=True, group="sweep", exit_on_error=False)
    @on_own_thread
    def _sweep_worker(self, loaded: Loaded, methods: list[str], data: str | None, windows: int):
        use_decoding_threads()
        try:
            worker = get_current_worker()
            text = drive_sweep(
                loaded,
                Order(methods, data, windows, BATCH),
                lambda: worker.is_cancelled,
                lambda text: self.post_message(self.Progress(text)),
                lambda row: self.post_message(self.RowDone(row)),
            )
        except Cancelled:
            self.post_message(self.SweepDone("cancelled: the rows above are measured"))
        except UserError as exc:
            self.post_message(self.SweepDone(str(exc), error=True))
        except Exception as exc:  # noqa: BLE001 - a line in the pane, never a dead app
            self.post_message(self.SweepDone(f"sweep failed: {type(exc).__name__}: {exc}", True))
        else:
            self.post_message(self.SweepDone(text))

    def on_crystal_pane_progress(self, message: Progress) -> None:
        if self.busy == "sweeping":
            self.progress_line(message.text)

    def on_crystal_pane_row_done(self, message: RowDone) -> None:
        self.rows.append(message.row)
        mark_pareto(self.rows)
        self.query_one(CrystalResults).show(self.rows)

    def on_crystal_pane_sweep_done(self, message: SweepDone) -> None:
        self.busy = None
        self.progress_line("")
        self.say(message.text, error=message.error)

    def action_cancel(self) -> None:
        if self.busy != "sweeping":
            if self.screen.focused is not self:
                self.focus()  # Esc in a field or the list hands the pane's keys back
            return
        self.workers.cancel_group(self, "sweep")
        self.progress_line("cancelling after this batch…")

    # ------------------------------------------------------------------ open in Generate
    def selected_row(self) -> Row | None:
        return self.query_one(CrystalResults).selected()

    def action_row(self, step: int) -> None:
        """↑/↓ on the pane move the table's cursor (the row g opens)."""
        self.query_one(CrystalResults).move(step)

    def action_hotstart(self) -> None:
        """Time load → first token of the selected row's folder (else the source checkpoint)."""
        row = self.selected_row()
        path = (
            row.path if row is not None else str(self.loaded.source.folder) if self.loaded else ""
        )
        path = path or self.query_one(ModelSource).path
        if not path or not Path(path).exists():
            self.say("hotstart needs a checkpoint on disk: type one above, or crystallize a "
                     "snapshot first", error=True)  # fmt: skip
            return
        why = self.query_one(HotStartPanel).measure(path)
        if why:
            self.say(why, error=True)
        else:
            self.say(f"hotstart: timing {path} (fresh processes take a few seconds)…")

    def action_open_in_generate(self) -> None:
        row = self.selected_row()
        if row is None:
            self.say("no row yet: r runs the ticked methods, then select a row", error=True)
            return
        self.post_message(OpenInGenerate(row.path))

    # ------------------------------------------------------------------ widget events
    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus()

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_in_generate()

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "cry-go":
            self.action_run()
