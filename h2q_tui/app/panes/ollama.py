"""The Ollama pane (key 5): an Ollama server's status and models, and one prompt run on an
Ollama model and on a local model (a checkpoint or a snapshot of the live run), side by side.

Each side shows its text as it streams and, when done, tokens/s, first-token latency and the
load time: for the Ollama side tokens/s is the server's ``eval_count / eval_duration · 1e9``
and "hot start" its ``load_duration``; first-token latency is measured here from sending the
request. For the local side the same three are measured in-process (tokens after the first
over the time after the first, as Ollama counts them; the load is what loading the
checkpoint or taking the snapshot took). The two run one after the other, so neither shares
the CPU with the other (on one machine, a local Ollama or ``h2q-tui serve`` would).

Every network call and every generation runs in a thread worker (the work itself is in
app/panes/ollama_run.py), the local generation on a thread of its own
(h2q_tui/system/threads.py); the UI thread only draws. An unreachable
server is one line in the pane.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select, Static
from textual.worker import get_current_worker

from h2q_tui.app.display import one_line, printable
from h2q_tui.app.fields import FieldSelect
from h2q_tui.app.model_source import ModelSource, SnapshotKeyOff
from h2q_tui.app.panes.ollama_run import (
    SideRun,
    local_line,
    probe,
    read_settings,
)
from h2q_tui.generation.text import DEFAULT_PROMPT, Codec
from h2q_tui.ollama.client import default_host
from h2q_tui.system.threads import on_own_thread

SIDES = ("ollama", "local")
REPAINT_S = 0.1  # the side-by-side text repaints at most 10 times a second


class OllamaPane(SnapshotKeyOff, Vertical, can_focus=True):
    """Server URL + status + models, a prompt, and the Ollama model vs a local model."""

    BINDINGS = [
        Binding("r", "run", "Run both"),
        Binding("escape", "cancel", "Cancel"),
        Binding("l", "refresh", "Server"),
        Binding("s", "snapshot", "Snapshot live"),
        Binding("o", "open_checkpoint", "Local ckpt", show=False),
    ]

    class ServerStatus(Message, bubble=False):
        def __init__(self, url: str, version: str | None, models: list[str], error: str) -> None:
            super().__init__()
            self.url, self.version, self.models, self.error = url, version, models, error

    class Streamed(Message, bubble=False):
        """Pieces wait in the pane's deque (at most one of these pending)."""

    class SideDone(Message, bubble=False):
        def __init__(self, run_id: int, side: str, stats: str, error: str = "") -> None:
            super().__init__()
            self.run_id, self.side, self.stats, self.error = run_id, side, stats, error

    class RunDone(Message, bubble=False):
        def __init__(self, run_id: int) -> None:
            super().__init__()
            self.run_id = run_id

    def __init__(
        self,
        live_run: str | None = None,
        request_snapshot: Any = None,
        live_tokenizer: Any = None,
        checkpoint_hint: str = "",
        host: str | None = None,
        id: str | None = "ollama-pane",  # noqa: A002 - Textual's name
    ) -> None:
        super().__init__(id=id)
        self.live_run, self.request_snapshot = live_run, request_snapshot
        self.live_codec = Codec(live_tokenizer)
        self.checkpoint_hint = checkpoint_hint
        self.host = host if host is not None else default_host()
        self.server_models: list[str] = []
        self.server_error = ""
        self.local: tuple[Any, Any, str, float] | None = None  # model, codec, source, load_s
        self.busy = False
        self.last_error = ""
        self.outputs = {side: "" for side in SIDES}
        self.stats = {side: "" for side in SIDES}
        self._run_id = 0
        self._pieces: deque[tuple[int, str, str]] = deque()
        self._pending = False
        self._run: SideRun | None = None  # the run in flight (or the last one)
        self._probed = False
        self._model_lock = threading.Lock()  # one generation on the local model at a time

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Static(one_line(f"server {self.host}: checking…"), id="oll-server")
        with Horizontal(classes="oll-row"):
            yield Label("server")
            yield Input(self.host, id="oll-url", compact=True)
            yield Label("model", classes="oll-short")
            yield FieldSelect([], prompt="no models", id="oll-model", compact=True)
        yield ModelSource(
            label="local",
            input_id="oll-local",
            snapshot_id="oll-snapshot",
            placeholder="checkpoint or run dir — Enter loads",
            consumer="ollama pane",
            value=self.checkpoint_hint,
            snapshot_label="Snapshot (s)",
            request_snapshot=self.request_snapshot,
            live_run=self.live_run,
            live_codec=self.live_codec,
            describe=local_line,
            classes="oll-row",
        )
        with Horizontal(classes="oll-row"):
            yield Label("prompt")
            yield Input(DEFAULT_PROMPT, id="oll-prompt", compact=True)
            yield Label("tok", classes="oll-short")
            yield Input("100", id="oll-tokens", type="integer", compact=True)
            yield Label("T", classes="oll-short")
            yield Input("0.7", id="oll-temperature", type="number", compact=True)
            yield Label("seed", classes="oll-short")
            yield Input("0", id="oll-seed", type="integer", compact=True)
        yield Static("", id="oll-message")
        with Horizontal(id="oll-sides"):
            for side in SIDES:
                with Vertical(id=f"oll-{side}-side", classes="oll-side"):
                    with VerticalScroll(id=f"oll-{side}-box", classes="oll-out"):
                        yield Static("", id=f"oll-{side}-text")
                    yield Static("", id=f"oll-{side}-stats", classes="oll-stats")

    _run_after_load = False  # r pressed before the typed local checkpoint was loaded
    _posted_at = 0.0  # when the last Streamed message went out

    def on_mount(self) -> None:
        self.query_one("#oll-ollama-side").border_title = "Ollama: no model"
        self.query_one("#oll-local-side").border_title = "local: none (o path, or s)"

    def on_show(self) -> None:
        """The server is first asked when the pane is first shown (not at the app's start)."""
        if not self._probed:
            self._probed = True
            self.action_refresh()

    def say(self, message: str, error: bool = False) -> None:
        line = (message.strip().splitlines() or [""])[0]
        self.last_error = line if error else ""
        self.query_one("#oll-message", Static).update(one_line(line, "bold red" if error else ""))

    # ------------------------------------------------------------------ the server
    def action_refresh(self) -> None:
        url = self.query_one("#oll-url", Input).value.strip()
        self.query_one("#oll-server", Static).update(
            one_line(f"server {url or self.host}: checking…")
        )
        self._probe_worker(url)

    @work(thread=True, exclusive=True, group="probe", exit_on_error=False)
    def _probe_worker(self, url: str) -> None:
        self.post_message(self.ServerStatus(*probe(url)))

    def on_ollama_pane_server_status(self, message: ServerStatus) -> None:
        self.host = message.url
        self.server_models, self.server_error = message.models, message.error
        picker = self.query_one("#oll-model", Select)
        if message.error:
            self.query_one("#oll-server", Static).update(one_line(message.error, "bold red"))
            picker.set_options([])
            return
        count = len(message.models)
        line = f"server {message.url} · running (version {message.version}) · {count} model(s)"
        self.query_one("#oll-server", Static).update(one_line(line, "green"))
        keep = picker.value if picker.value in message.models else None
        picker.set_options([(Text(name), name) for name in message.models])  # names: literal
        if message.models:
            picker.value = keep or message.models[0]

    # ------------------------------------------------------------------ the local model
    def action_open_checkpoint(self) -> None:
        self.query_one(ModelSource).focus_box()

    def load_local(self, path: str) -> None:
        self.query_one(ModelSource).load(path)

    def action_snapshot(self) -> None:
        self.query_one(ModelSource).snapshot()

    def on_model_source_started(self, message: ModelSource.Started) -> None:
        if message.path:
            self.focus()  # Enter in the box: r, s and l work again
        self.say(message.text)

    def on_model_source_failed(self, message: ModelSource.Failed) -> None:
        self._run_after_load = False  # the load failed: r does not wait for it any more
        self.say(message.reason, error=True)

    def on_model_source_loaded(self, message: ModelSource.Loaded) -> None:
        self.local = (message.model, message.codec, message.source, message.load_s)
        self.query_one("#oll-local-side").border_title = Text(f"local: {message.source}")
        self.say(f"local model ready: {message.source} — r runs the prompt on both")
        if self._run_after_load:
            self.action_run()

    # ------------------------------------------------------------------ running
    def action_run(self) -> None:
        typed = self.query_one(ModelSource).path
        if self.local is None and typed and not self._run_after_load:
            self._run_after_load = True  # the path in the box is what "local" means: load it
            self.load_local(typed)
            return
        self._run_after_load = False
        picker = self.query_one("#oll-model", Select)
        model = picker.value if isinstance(picker.value, str) else None
        if model is None and self.local is None:
            self.say(
                "nothing to run: no Ollama model (l rechecks the server) and no local model "
                "(o path, or s)",
                error=True,
            )
            return
        try:
            settings = read_settings(self)
        except ValueError as exc:
            self.say(str(exc), error=True)
            return
        self.action_cancel(quiet=True)
        self._run_id += 1
        run_id = self._run_id
        self._run = SideRun(lambda side, piece: self._push(run_id, side, piece))
        self.busy = True
        for side in SIDES:
            self.outputs[side] = ""
            self.stats[side] = ""
            self._show(side)
        url = self.query_one("#oll-url", Input).value.strip() or self.host
        self.query_one("#oll-ollama-side").border_title = Text(f"Ollama: {model or 'no model'}")
        skipped = [] if model else ["no Ollama model"]
        skipped += [] if self.local else ["no local model"]
        note = f" ({', '.join(skipped)})" if skipped else ""
        self.say(f"running the prompt{note}… Esc cancels")
        self._run_worker(self._run, run_id, url, model, self.local, settings)

    @work(thread=True, exclusive=True, group="run", exit_on_error=False)
    @on_own_thread
    def _run_worker(self, run: SideRun, run_id: int, url: str, model: str | None, local,
                    settings) -> None:  # fmt: skip
        worker = get_current_worker()
        if model is not None:
            stats, error = run.ollama(url, model, settings)
            self.post_message(self.SideDone(run_id, "ollama", stats, error))
        if local is not None and not (run.cancelled.is_set() or worker.is_cancelled):
            stats, error = run.local(local, settings, self._model_lock)
            self.post_message(self.SideDone(run_id, "local", stats, error))
        self.post_message(self.RunDone(run_id))

    def _push(self, run_id: int, side: str, piece: str) -> None:
        """Queue a piece; the UI repaints at most every REPAINT_S (SideDone drains the rest).

        A repaint per token would take the GIL from the local decoder between its small torch
        ops and slow it several-fold, so its tokens/s would not be comparable to the server's.
        """
        self._pieces.append((run_id, side, piece))
        now = time.perf_counter()
        if not self._pending and now - self._posted_at >= REPAINT_S:
            self._pending = True
            self._posted_at = now
            self.post_message(self.Streamed())

    def on_ollama_pane_streamed(self, _: Streamed) -> None:
        self._pending = False
        grew = set()
        while self._pieces:
            run_id, side, piece = self._pieces.popleft()
            if run_id == self._run_id:
                self.outputs[side] += piece
                grew.add(side)
        for side in grew:
            self._show(side)

    def _show(self, side: str) -> None:
        prompt = self.query_one("#oll-prompt", Input).value if self.busy else ""
        text = Text(printable(prompt), style="bold")
        text.append(printable(self.outputs[side]))
        self.query_one(f"#oll-{side}-text", Static).update(text)
        self.query_one(f"#oll-{side}-box", VerticalScroll).scroll_end(animate=False)
        self.query_one(f"#oll-{side}-stats", Static).update(Text(self.stats[side]))

    def on_ollama_pane_side_done(self, message: SideDone) -> None:
        self.on_ollama_pane_streamed(self.Streamed())
        if message.run_id != self._run_id:
            return
        if message.error:
            self.stats[message.side] = message.error
            self.query_one(f"#oll-{message.side}-stats", Static).update(
                Text(message.error, style="bold red")
            )
            return
        self.stats[message.side] = message.stats
        self._show(message.side)

    def on_ollama_pane_run_done(self, message: RunDone) -> None:
        if message.run_id != self._run_id:
            return
        self.busy = False
        if not self.last_error:
            self.say("done — r runs again")

    def action_cancel(self, quiet: bool = False) -> None:
        if not self.busy:
            if not quiet and self.screen.focused is not self:
                self.focus()
            return
        if self._run is not None:
            self._run.cancel()
        if not quiet:
            self.say("cancelled")

    # ------------------------------------------------------------------ fields and buttons
    @on(Input.Submitted, "#oll-url")
    def _url_submitted(self, event: Input.Submitted) -> None:
        self.focus()
        self.action_refresh()

    @on(Input.Submitted, "#oll-prompt, #oll-tokens, #oll-temperature, #oll-seed")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        self.focus()
        self.action_run()
