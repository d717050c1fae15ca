"""The Crystal pane: crystallize a checkpoint (or a snapshot of the live run) with the ticked
methods, measure each against the original on held-out windows, and plot Δ bits/byte against
the compression ratio with the Pareto front.

The work is the ``h2q-tui crystallize`` command's (:mod:`h2q_tui.crystal.crystallize`), one
method at a time so each row shows as soon as it is measured: encode, write ``OUT/<method>/``,
load it back (decoding, as every command does) and compare it with the original
(:func:`h2q_tui.crystal.measure.compare_many`). It runs in a thread worker on a thread of its
own (h2q_tui/system/threads.py), so the UI never waits and training goes on.

A live snapshot is first saved as a plain checkpoint, ``RUN/crystal/checkpoints/live-step_N/``
(a temporary folder when the run dir is not writable), and its crystallized folders go to
``RUN/crystal/live-step_N/<method>/``; a checkpoint's go where the command puts them
(``RUN/crystal/`` for ``RUN/checkpoints/<name>/``). Every folder opens in the Generate pane
(``g`` on its row) or in any command that takes a CHECKPOINT.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field
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
from textual_plot import HiResMode, LegendLocation, PlotWidget

from h2q_tui.app.panes.hotstart_panel import HotStartPanel, generation_source_of
from h2q_tui.app.widgets import safe_axes
from h2q_tui.system.threads import on_own_thread

BATCH = 32  # windows per forward pass
DEFAULT_TICKS = ("bf16", "int8", "int4-g128", "int4-g32", "svd:0.5+int8")
COLUMNS = ("", "method", "bytes", "ratio", "Δ bits/byte ± s.e.", "mean KLD", "top-1 %", "s")


class _Cancelled(Exception):
    """Raised from the measurement's progress callback when the sweep was cancelled."""


@dataclass
class Source:
    """A checkpoint ready to crystallize: its base model, state_dict and applicable methods."""

    path: str  # the checkpoint folder
    describe: str
    info: Any
    base: Any
    state_dict: dict[str, Any]
    methods: list[str]
    skipped: list[str]
    out_root: Path
    out_note: str  # where the folders go, for the screen
    about: Any = None  # h2q_tui.crystal.crystallize.Source: what each folder records of it


@dataclass
class SweepRow:
    method: str
    path: str
    bytes: int
    ratio: float
    delta: float | None = None
    std_error: float | None = None
    mean_kld: float | None = None
    same_top1: float | None = None
    seconds: float = 0.0
    pareto: bool = False
    notes: list[str] = field(default_factory=list)


def mark_front(rows: list[SweepRow]) -> None:
    """Pareto front on (bytes, Δ): no other row (the original: Δ 0) is as small with as small a Δ."""
    for row in rows:
        row.pareto = (
            row.delta is not None
            and row.method != "original"
            and not any(
                other is not row
                and other.delta is not None
                and other.bytes <= row.bytes
                and other.delta <= row.delta
                and (other.bytes < row.bytes or other.delta < row.delta)
                for other in rows
            )
        )


def row_cells(row: SweepRow) -> list[str | Text]:
    star = Text("*", style="bold green") if row.pareto else ""
    if row.method == "original":
        measured = ["—", "—", "—"]
    else:
        measured = [
            f"{row.delta:+.4f} ± {row.std_error:.4f}",
            f"{row.mean_kld:.5f}",
            f"{100 * row.same_top1:.1f}",
        ]
    return [
        star,
        row.method,
        f"{row.bytes:,}",
        f"{row.ratio:.2f}×",
        *measured,
        f"{row.seconds:.1f}",
    ]


def load_source(path: str, out: Path | None = None, out_note: str = "") -> Source:
    """The checkpoint at ``path`` (a run dir means its latest) with the methods that apply to
    its model; UserError (one line) for a bad path, a damaged or already crystallized file."""
    from h2q_tui import checkpoints
    from h2q_tui.codecs.policy import tied_names
    from h2q_tui.crystal.crystallize import (
        check_out,
        cpu_state_dict,
        default_out,
        describe_source,
        sweep_methods,
    )
    from h2q_tui.errors import UserError

    info = checkpoints.read_info(path)
    if info.crystal is not None:
        raise UserError(
            f"{info.weights.parent} is already crystallized ({info.crystal.method}): "
            f"pick its source {info.crystal.source or 'checkpoint'}"
        )
    out = out if out is not None else default_out(info.weights)
    check_out(out, info.weights)
    base = checkpoints.load_checkpoint(info).model
    state_dict = cpu_state_dict(base)
    aliases = tied_names(state_dict)
    methods, skipped = sweep_methods({k: v for k, v in state_dict.items() if k not in aliases})
    describe = f"{info.describe()} · {info.config.model.family} · {short(info.weights.parent)}"
    return Source(
        str(info.weights.parent),
        describe,
        info,
        base,
        state_dict,
        methods,
        skipped,
        out,
        out_note or f"folders go to {short(out)}/",
        describe_source(info, base, state_dict),
    )


def one_line(text: str, style: str = "") -> Text:
    """A fixed one-line Static: cut with … at the width, never wrapped."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis", end="")


def short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class ParetoPlot(PlotWidget):
    """Δ bits/byte against the compression ratio; the Pareto front joined and marked."""

    def on_mount(self) -> None:
        safe_axes(self)

    def draw(self, rows: list[SweepRow]) -> None:
        self.clear()
        measured = [r for r in rows if r.delta is not None and r.method != "original"]
        others = [r for r in measured if not r.pareto]
        front = sorted((r for r in measured if r.pareto), key=lambda r: r.ratio)
        if others:
            xs, ys = [r.ratio for r in others], [r.delta for r in others]
            self.scatter(xs, ys, "○", "grey62", None, "other methods")
        if front:
            xs, ys = [r.ratio for r in front], [r.delta for r in front]
            self.plot(xs, ys, "green", HiResMode.BRAILLE)
            self.scatter(xs, ys, "●", "bold green", None, "Pareto front")
        self.set_xlabel("ratio (× smaller)")
        self.set_ylabel("Δ bits/byte")
        points = [(r.ratio, r.delta) for r in measured]
        # no legend over an empty chart, nor over the points: it goes in the emptiest corner
        self.show_legend(quiet_corner(points), is_visible=bool(points) and self.size.height >= 12)


def quiet_corner(points: list[tuple[float, float]]) -> LegendLocation:
    """The corner of the data's range (x right or left, y top or bottom) with the fewest
    points, the top right on a tie."""
    if not points:
        return LegendLocation.TOPRIGHT
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_mid, y_mid = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    corners = {
        LegendLocation.TOPRIGHT: lambda x, y: x >= x_mid and y >= y_mid,
        LegendLocation.TOPLEFT: lambda x, y: x <= x_mid and y >= y_mid,
        LegendLocation.BOTTOMRIGHT: lambda x, y: x >= x_mid and y <= y_mid,
        LegendLocation.BOTTOMLEFT: lambda x, y: x <= x_mid and y <= y_mid,
    }
    return min(corners, key=lambda c: sum(corners[c](x, y) for x, y in points))


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
        def __init__(self, source: Source) -> None:
            super().__init__()
            self.source = source

    class Failed(Message, bubble=False):
        def __init__(self, message: str) -> None:
            super().__init__()
            self.message = message

    class Progress(Message, bubble=False):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class RowDone(Message, bubble=False):
        def __init__(self, row: SweepRow) -> None:
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
        self.source: Source | None = None
        self.rows: list[SweepRow] = []
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
            with Vertical(id="cry-results"):
                yield DataTable(id="cry-table", cursor_type="row", zebra_stripes=True)
                yield ParetoPlot(id="cry-plot")
        yield HotStartPanel(lambda: generation_source_of(self.app))

    def on_mount(self) -> None:
        self.query_one("#cry-methods").border_title = "methods (space)"
        table = self.query_one("#cry-table", DataTable)
        table.add_columns(*COLUMNS)
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
        self._post_source(lambda: load_source(path))

    @work(thread=True, exclusive=True, group="source", exit_on_error=False)
    @on_own_thread
    def _snapshot_worker(self, model: Any, step: int, live: dict[str, Any]) -> None:
        from h2q_tui import checkpoints
        from h2q_tui.config import RunConfig
        from h2q_tui.errors import UserError

        def save_and_load() -> Source:
            config = live["config"] or RunConfig(model=model.config)  # as Trainer.save
            name = f"live-step_{step:08d}"
            extra = {checkpoints.TOKENIZER: Path(live["tokenizer"])} if live["tokenizer"] else {}
            run_dir = live["run_dir"]
            roots = [Path(run_dir) / "crystal"] if run_dir else []
            roots.append(Path(tempfile.mkdtemp(prefix="h2q-crystal-")))
            problem = ""
            for root in roots:
                try:
                    folder = checkpoints.save_checkpoint(
                        root,
                        model,
                        config,
                        step,
                        str(live["run_id"]),
                        {"rank_growths": live["rank_growths"]},
                        extra_files=extra,
                        name=name,
                    )
                except UserError as exc:
                    problem = str(exc)
                    continue
                where = "run dir" if root is roots[0] and run_dir else "temporary folder"
                note = f"snapshot + folders in the {where}: {short(root / name)}/"
                return load_source(str(folder), root / name, note)
            raise UserError(problem or "cannot save the snapshot")

        self._post_source(save_and_load)

    def _post_source(self, load) -> None:
        from h2q_tui.errors import UserError

        try:
            source = load()
        except UserError as exc:
            self.post_message(self.Failed(str(exc)))
        except Exception as exc:  # noqa: BLE001 - any load failure is a line, not a crash
            self.post_message(self.Failed(f"cannot load: {type(exc).__name__}: {exc}"))
        else:
            self.post_message(self.SourceReady(source))

    def on_crystal_pane_source_ready(self, message: SourceReady) -> None:
        self.busy = None
        self.source = source = message.source
        self.rows = []
        self._show_rows()
        picker = self.query_one("#cry-methods", SelectionList)
        picker.clear_options()
        ranks = [m for m in source.methods if m.startswith("rank:")]
        ticks = set(DEFAULT_TICKS) | set(ranks[:1]) | {m for m in ranks if m.endswith("+int8")}
        picker.add_options([(m, m, m in ticks) for m in source.methods])
        self.query_one("#cry-source", Static).update(
            Text.assemble(
                ("source: ", "bold"),
                (source.describe, "bold cyan"),
                no_wrap=True,
                overflow="ellipsis",
            )
        )
        skipped = f" · {'; '.join(source.skipped)}" if source.skipped else ""
        self.say(f"ready: {source.out_note} — tick methods (space), r runs{skipped}")
        self.progress_line("")

    def on_crystal_pane_failed(self, message: Failed) -> None:
        self.busy = None
        self.say(message.message, error=True)
        self.progress_line("")

    # ------------------------------------------------------------------ the sweep
    def action_run(self) -> None:
        if self.source is None:
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
        order = [m for m in self.source.methods if m in methods]
        self.busy = "sweeping"
        self.rows = []
        self._show_rows()
        self.say(
            f"crystallizing {len(order)} methods → {short(self.source.out_root)}/ · Esc cancels"
        )
        self._sweep_worker(self.source, order, data, windows)

    @work(thread=True, exclusive=True, group="sweep", exit_on_error=False)
    @on_own_thread
    def _sweep_worker(self, source: Source, methods: list[str], data: str | None, windows: int):
        from h2q_tui.errors import UserError
        from h2q_tui.generation.generate import use_decoding_threads

        use_decoding_threads()
        try:
            text = self._sweep(source, methods, data, windows)
        except _Cancelled:
            self.post_message(self.SweepDone("cancelled: the rows above are measured"))
        except UserError as exc:
            self.post_message(self.SweepDone(str(exc), error=True))
        except Exception as exc:  # noqa: BLE001 - a line in the pane, never a dead app
            self.post_message(self.SweepDone(f"sweep failed: {type(exc).__name__}: {exc}", True))
        else:
            self.post_message(self.SweepDone(text))

    def _sweep(self, source: Source, methods: list[str], data: str | None, windows: int) -> str:
        """One method at a time (the command's steps): encode, write, load, measure, post."""
        from h2q_tui import checkpoints
        from h2q_tui.crystal import measure
        from h2q_tui.crystal.crystallize import crystallize_method, resolve_methods

        worker = get_current_worker()
        info = source.info
        heldout = measure.load_heldout(
            data, info.config.model.context, checkpoints.tokenizer_of(info), windows
        )
        parsed, _ = resolve_methods(",".join(methods), source.state_dict)
        source_bytes = source.about.bytes
        rows, base = [], None
        for index, steps in enumerate(parsed):
            if worker.is_cancelled:
                raise _Cancelled
            name = methods[index]
            self.post_message(self.Progress(f"{index + 1}/{len(parsed)} {name}: encoding…"))
            row, model = crystallize_method(
                steps, source.about, source.state_dict, (), source.out_root, "cpu", io.StringIO()
            )

            def progress(done: int, total: int, index=index, name=name) -> None:
                if worker.is_cancelled:
                    raise _Cancelled
                self.post_message(
                    self.Progress(
                        f"{index + 1}/{len(parsed)} {name}: measuring batch {done}/{total} "
                        f"({heldout.windows:,} windows)"
                    )
                )

            base, (comparison,) = measure.compare_many(
                source.base, [model], heldout, "cpu", BATCH, progress
            )
            del model
            if index == 0:
                self.post_message(
                    self.RowDone(SweepRow("original", source.path, source_bytes, 1.0, 0.0, 0.0))
                )
            done = SweepRow(
                row.method,
                row.path,
                row.bytes,
                row.ratio,
                comparison.delta_bits_per_byte,
                comparison.delta_std_error,
                comparison.mean_kld,
                comparison.same_top1,
                row.seconds + comparison.seconds,
                notes=row.notes,
            )
            rows.append(done)
            self.post_message(self.RowDone(done))
        summary = {
            "source": source.about.as_dict(),
            "data": heldout.describe(),
            "rows": [r.__dict__ for r in rows],
        }
        (source.out_root / "crystal-pane.json").write_text(json.dumps(summary, indent=2) + "\n")
        return (
            f"done: {len(rows)} methods · ↑/↓ + g opens a row in Generate · original {base.bits_per_byte:.4f} bits/byte on "
            f"{heldout.describe()} · * Pareto front"
        )

    def on_crystal_pane_progress(self, message: Progress) -> None:
        if self.busy == "sweeping":
            self.progress_line(message.text)

    def on_crystal_pane_row_done(self, message: RowDone) -> None:
        self.rows.append(message.row)
        mark_front(self.rows)
        self._show_rows()

    def on_crystal_pane_sweep_done(self, message: SweepDone) -> None:
        self.busy = None
        self.progress_line("")
        self.say(message.text, error=message.error)

    def _show_rows(self) -> None:
        table = self.query_one("#cry-table", DataTable)
        cursor = table.cursor_row
        table.clear()
        for row in self.rows:
            table.add_row(*row_cells(row), key=row.method)
        if self.rows:
            table.move_cursor(row=min(cursor, len(self.rows) - 1))
        self.query_one(ParetoPlot).draw(self.rows)

    def action_cancel(self) -> None:
        if self.busy != "sweeping":
            if self.screen.focused is not self:
                self.focus()  # Esc in a field or the list hands the pane's keys back
            return
        self.workers.cancel_group(self, "sweep")
        self.progress_line("cancelling after this batch…")

    # ------------------------------------------------------------------ open in Generate
    def selected_row(self) -> SweepRow | None:
        table = self.query_one("#cry-table", DataTable)
        if not self.rows or table.cursor_row < 0 or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def action_row(self, step: int) -> None:
        """↑/↓ on the pane move the table's cursor (the row g opens)."""
        table = self.query_one("#cry-table", DataTable)
        if self.rows:
            table.move_cursor(row=max(0, min(len(self.rows) - 1, table.cursor_row + step)))

    def action_hotstart(self) -> None:
        """Time load → first token of the selected row's folder (else the source checkpoint)."""
        row = self.selected_row()
        path = row.path if row is not None else self.source.path if self.source else ""
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
        from h2q_tui.app.panes.generate import GeneratePane

        row = self.selected_row()
        if row is None:
            self.say("no row yet: r runs the ticked methods, then select a row", error=True)
            return
        self.app.query_one("TabbedContent").active = "generate"
        self.app.query_one(GeneratePane).load_path(row.path)

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
