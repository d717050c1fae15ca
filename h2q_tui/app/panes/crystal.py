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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Key
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, SelectionList, Static
from textual.worker import get_current_worker

from h2q_tui import checkpoints
from h2q_tui.app.messages import OpenInGenerate
from h2q_tui.app.panes.crystal_results import CrystalResults
from h2q_tui.app.panes.hotstart_panel import HotStartPanel
from h2q_tui.crystal.folders import check_out, default_out, save_snapshot
from h2q_tui.crystal.methods import resolve_methods, sweep_methods
from h2q_tui.crystal.sweep import Plan, Row, Source, load_source, mark_pareto, sweep, unique_tensors
from h2q_tui.errors import UserError
from h2q_tui.system.threads import on_own_thread

BATCH = 32  # windows per forward pass
DEFAULT_TICKS = ("bf16", "int8", "int4-g128", "int4-g32", "svd:0.5+int8")


class _Cancelled(Exception):
    """Raised from the measurement's progress callback when the sweep was cancelled."""


@dataclass
class Loaded:
    """A checkpoint ready to crystallize: the loaded source, the methods that apply to its
    model (offered for ticking) and where its folders go."""

    source: Source
    describe: str
    methods: list[str]
    skipped: list[str]
    out_root: Path
    out_note: str  # where the folders go, for the screen


def load_checkpoint(path: str, out: Path | None = None, out_note: str = "") -> Loaded:
    """The checkpoint at ``path`` (a run dir means its latest) with the methods that apply to
    its model; UserError (one line) for a bad path, a damaged or already crystallized file."""
    info = checkpoints.read_info(path)
    if info.crystal is not None:
        raise UserError(
            f"{info.weights.parent} is already crystallized ({info.crystal.method}): "
            f"pick its source {info.crystal.source or 'checkpoint'}"
        )
    out = out if out is not None else default_out(info.weights)
    check_out(out, info.weights)
    source = load_source(info)
    methods, skipped = sweep_methods(unique_tensors(source.state_dict))
    describe = f"{info.describe()} · {info.config.model.family} · {short(info.weights.parent)}"
    return Loaded(
        source, describe, methods, skipped, out, out_note or f"folders go to {short(out)}/"
    )


def one_line(text: str, style: str = "") -> Text:
    """A fixed one-line Static: cut with … at the width, never wrapped."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis", end="")


def short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class CrystalPane(Vertical, can_focus=True):
    """Source → ticked methods → rows (bytes, ratio, Δ, KLD, top-1) and the Pareto plot."""

    DEFAULT_CSS = """
    CrystalPane { height: 1fr; padding: 0 1; }
    CrystalPane:focus { background: $boost; }
    #cry-source, #cry-message, #cry-progress { height: 1; }
    .cry-row { height: 1; }
    .cry-row Label { width: 11; padding: 0 1 0 0; color: $text-muted; }
    .cry-row Input { width: 1fr; }
    .cry-row Button { margin-left: 2; min-width: 14; }
    #cry-windows { width: 6; }
    .cry-row Label.cry-short { width: auto; margin-left: 2; }
    #cry-body { height: 1fr; }
    #cry-methods { width: 26; height: 1fr; border: round $secondary 60%; }
    #cry-results { width: 1fr; }
    #cry-table { height: 1fr; min-height: 4; }
    #cry-plot { height: 1fr; min-height: 6; }
    """

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

    class SnapshotArrived(Message, bubble=False):
        def __init__(self, model: Any, step: int, live: dict[str, Any]) -> None:
            super().__init__()
            self.model, self.step, self.live = model, step, live

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
        self.last_error = ""

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Static(
            "source: none yet — s snapshots the live run, or a checkpoint path + Enter"
            if self.request_snapshot is not None
            else "source: none yet — a checkpoint path + Enter (o)",
            id="cry-source",
        )
        with Horizontal(classes="cry-row"):
            yield Label("checkpoint")
            yield Input(
                self.checkpoint_hint,
                placeholder="checkpoint folder, model.safetensors or run dir (latest) — Enter",
                id="cry-checkpoint",
                compact=True,
            )
            yield Button("Snapshot live (s)", id="cry-snapshot", compact=True)
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
        if self.request_snapshot is None:
            self.query_one("#cry-snapshot", Button).display = False

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "snapshot" and self.request_snapshot is None)

    def on_key(self, event: Key) -> None:
        if event.key == "s" and self.request_snapshot is None and self.screen.focused is self:
            event.stop()
            self.action_snapshot()

    def say(self, message: str, error: bool = False) -> None:
        line = (message.strip().splitlines() or [""])[0]
        self.last_error = line if error else ""
        style = "bold red" if error else ""
        self.query_one("#cry-message", Static).update(one_line(line, style))

    def progress_line(self, text: str) -> None:
        self.query_one("#cry-progress", Static).update(one_line(text, "italic"))

    # ------------------------------------------------------------------ the source
    def action_open_checkpoint(self) -> None:
        self.query_one("#cry-checkpoint", Input).focus()

    def action_snapshot(self) -> None:
        if self.request_snapshot is None:
            self.say("no live run (attached runs): give a checkpoint path instead", error=True)
            return
        if self.busy:
            self.say(f"{self.busy}: wait for it or press Esc first", error=True)
            return
        why = self.request_snapshot(self._deliver)
        if why:
            self.say(why, error=True)
        else:
            self.busy = "loading"
            self.say("snapshot requested: the trainer copies its model between two steps…")

    def _deliver(self, model: Any, step: int) -> None:
        """On the training thread: read what a checkpoint of the copy needs, post, return."""
        trainer = getattr(self.engine, "trainer", None)
        prepared = getattr(self.engine, "prepared", None)
        tokenizer = getattr(prepared, "tokenizer", None)
        live = {
            "config": getattr(trainer, "config", None) or getattr(prepared, "config", None),
            "run_id": getattr(trainer, "run_id", None) or getattr(self.engine, "name", "live"),
            "rank_growths": getattr(trainer, "rank_growths", 0),
            "tokenizer": getattr(tokenizer, "path", None),
            "run_dir": getattr(self.engine, "run_dir", None),
        }
        self.post_message(self.SnapshotArrived(model, step, live))

    def on_crystal_pane_snapshot_arrived(self, message: SnapshotArrived) -> None:
        self.say(f"saving the snapshot of step {message.step:,}…")
        self._snapshot_worker(message.model, message.step, message.live)

    def load_source(self, path: str) -> None:
        path = path.strip()
        if not path:
            self.say("type a checkpoint folder, model.safetensors or run dir, then Enter", True)
            return
        if self.busy == "sweeping":
            self.say("a sweep is running: Esc cancels it first", error=True)
            return
        self.busy = "loading"
        self.say(f"loading {path}…")
        self._source_worker(path)

    @work(thread=True, exclusive=True, group="source", exit_on_error=False)
    @on_own_thread
    def _source_worker(self, path: str) -> None:
        self._post_source(lambda: load_checkpoint(path))

    @work(thread=True, exclusive=True, group="source", exit_on_error=False)
    @on_own_thread
    def _snapshot_worker(self, model: Any, step: int, live: dict[str, Any]) -> None:
        def save_and_load() -> Loaded:
            folder, out_root, in_run_dir = save_snapshot(model, step, live)
            where = "run dir" if in_run_dir else "temporary folder"
            note = f"snapshot + folders in the {where}: {short(out_root)}/"
            return load_checkpoint(str(folder), out_root, note)

        self._post_source(save_and_load)

    def _post_source(self, load) -> None:
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
        self._show_rows()
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
        self.busy = None
        self.say(message.message, error=True)
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
        self._show_rows()
        self.say(
            f"crystallizing {len(order)} methods → {short(self.loaded.out_root)}/ · Esc cancels"
        )
        self._sweep_worker(self.loaded, order, data, windows)

    @work(thread=True, exclusive=True, group="sweep", exit_on_error=False)
    @on_own_thread
    def _sweep_worker(self, loaded: Loaded, methods: list[str], data: str | None, windows: int):
        from h2q_tui.generation.generate import use_decoding_threads

        use_decoding_threads()
        try:
            text = self._sweep(loaded, methods, data, windows)
        except _Cancelled:
            self.post_message(self.SweepDone("cancelled: the rows above are measured"))
        except UserError as exc:
            self.post_message(self.SweepDone(str(exc), error=True))
        except Exception as exc:  # noqa: BLE001 - a line in the pane, never a dead app
            self.post_message(self.SweepDone(f"sweep failed: {type(exc).__name__}: {exc}", True))
        else:
            self.post_message(self.SweepDone(text))

    def _sweep(self, loaded: Loaded, methods: list[str], data: str | None, windows: int) -> str:
        """Drive the sweep one method per pass, posting each row and the progress."""
        worker = get_current_worker()
        source = loaded.source
        heldout = source.heldout(data, windows)
        parsed, _ = resolve_methods(",".join(methods), source.state_dict)
        plan = Plan(source, parsed, heldout, loaded.out_root, batch=BATCH)
        measured: list[Row] = []

        def step(index: int) -> str:
            return f"{index + 1}/{len(parsed)} {methods[index]}"

        def progress(label: str, windows: int, batch: int):
            index = len(measured)  # one method per pass: the next one

            def report(done: int, total: int) -> None:
                if worker.is_cancelled:
                    raise _Cancelled
                self.post_message(
                    self.Progress(
                        f"{step(index)}: measuring batch {done}/{total} ({windows:,} windows)"
                    )
                )

            return report

        original = source.original_row()
        self.post_message(self.Progress(f"{step(0)}: encoding…"))
        for row in sweep(plan, original, progress):
            self.post_message(self.RowDone(row))
            if row is original:
                continue
            measured.append(row)
            if worker.is_cancelled:
                raise _Cancelled
            if len(measured) < len(parsed):
                self.post_message(self.Progress(f"{step(len(measured))}: encoding…"))
        summary = {
            "source": source.as_dict(),
            "data": heldout.describe(),
            "rows": [row.as_dict() for row in measured],
        }
        (loaded.out_root / "crystal-pane.json").write_text(json.dumps(summary, indent=2) + "\n")
        return (
            f"done: {len(measured)} methods · ↑/↓ + g opens a row in Generate · original "
            f"{original.bits_per_byte:.4f} bits/byte on {heldout.describe()} · * Pareto front"
        )

    def on_crystal_pane_progress(self, message: Progress) -> None:
        if self.busy == "sweeping":
            self.progress_line(message.text)

    def on_crystal_pane_row_done(self, message: RowDone) -> None:
        self.rows.append(message.row)
        mark_pareto(self.rows)
        self._show_rows()

    def on_crystal_pane_sweep_done(self, message: SweepDone) -> None:
        self.busy = None
        self.progress_line("")
        self.say(message.text, error=message.error)

    def _show_rows(self) -> None:
        self.query_one(CrystalResults).show(self.rows)

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
        path = path or self.query_one("#cry-checkpoint", Input).value.strip()
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
    @on(Input.Submitted, "#cry-checkpoint")
    def _checkpoint_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.load_source(event.value)
        self.focus()

    @on(Input.Submitted)
    def _other_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id != "cry-checkpoint":
            self.focus()

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_in_generate()

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        event.stop()
        actions = {"cry-go": self.action_run, "cry-snapshot": self.action_snapshot}
        action = actions.get(event.button.id or "")
        if action is not None:
            action()
