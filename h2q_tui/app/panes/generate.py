"""The Generate pane: prompt, mode, target word, signed steering strength, layer; streamed
output with tokens/s; the steering readout against the strength-0 baseline.

The model is one the pane owns: a snapshot copy of the live run (taken by the trainer
between two steps without pausing it) or a checkpoint. Generation and the readout run in a
thread worker on that copy, one at a time (the steering hooks live on the model), and stream
back through coalesced messages, so the UI never waits on them and the training thread is
never touched.

Follow mode (``f``, app/panes/follow_mode.py) swaps each new checkpoint of a run dir into the
model in place between two generations, then generates again: a live look at how it learns.
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
from textual.events import Key
from textual.message import Message
from textual.widgets import Button, Input, Label, Static
from textual.worker import get_current_worker

from h2q_tui.app.display import printable
from h2q_tui.app.messages import GenerationSourceChanged
from h2q_tui.app.model_source import ModelSource, RequestSnapshot
from h2q_tui.app.panes import generate_settings as settings
from h2q_tui.app.panes.follow_mode import FollowMode
from h2q_tui.app.panes.generate_settings import compose_settings, describe_model, format_stats
from h2q_tui.app.panes.steer_readout import (
    READOUT_SAMPLES,
    READOUT_TOKENS,
    STRENGTH_LIMIT,
    STRENGTH_STEP,
    SteerReadout,
    format_strength,
    steering_phrase,
    strength_bar,
)
from h2q_tui.generation.generate import Generation, GenerationStats, use_decoding_threads
from h2q_tui.generation.text import Codec
from h2q_tui.system.threads import on_own_thread

REPAINT_S = 0.1  # streamed text repaints at most this often (a repaint per token slows decoding)


class GeneratePane(Vertical, can_focus=True):
    """Prompt → streamed continuation from a live snapshot or a checkpoint, with steering."""

    BINDINGS = [
        Binding("g", "generate", "Generate"),
        Binding("escape", "cancel", "Cancel"),
        Binding("left", "strength(-1)", "Strength −", show=False),
        Binding("right", "strength(1)", "Strength +", show=False),
        Binding("0", "strength_reset", "Strength 0", show=False),
        Binding("s", "snapshot", "Snapshot live"),
        Binding("o", "open_checkpoint", "Checkpoint", show=False),
        Binding("r", "readout", "Steer readout"),
        Binding("f", "follow", "Follow run"),
    ]

    class Streamed(Message, bubble=False):
        """Pieces wait in the pane's deque (coalesced: at most one pending)."""

    class Finished(Message, bubble=False):
        def __init__(self, gen_id: int, generation: Generation, error: str | None) -> None:
            super().__init__()
            self.gen_id, self.generation, self.error = gen_id, generation, error

    def __init__(
        self,
        live_run: str | None = None,
        request_snapshot: RequestSnapshot | None = None,
        live_tokenizer: Any = None,
        checkpoint_hint: str = "",
        follow_hint: str = "",
        readout_samples: int = READOUT_SAMPLES,
        readout_tokens: int = READOUT_TOKENS,
        id: str | None = "generate-pane",  # noqa: A002 - Textual's name
    ) -> None:
        super().__init__(id=id)
        self.live_run, self.request_snapshot = live_run, request_snapshot
        self.live_codec = Codec(live_tokenizer)
        self.checkpoint_hint = checkpoint_hint
        self.follow_hint = follow_hint  # the run dir f follows when the box names none
        self._posted_at = 0.0
        self.readout_samples, self.readout_tokens = readout_samples, readout_tokens
        self.model: Any = None
        self.codec = Codec()
        self.source = ""
        self.strength_tenths = 0
        self.busy: str | None = None  # "generating", "readout" or None
        self.generation: Generation | None = None
        self.output = ""  # the continuation streamed so far
        self.last_error = ""
        self._gen_id = 0
        self._started = 0.0
        self._what = ""  # mode and steering of the current generation
        self._pieces: deque[tuple[int, str]] = deque()
        self._streamed_pending = False
        self._model_lock = threading.Lock()  # one generation or readout on the model at a time
        self.follow = FollowMode(self, self._model_lock)

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Static(
            "model: none yet — s takes a snapshot of the live run, or load a checkpoint below"
            if self.request_snapshot is not None
            else "model: none yet — load a checkpoint below (o, a path, Enter)",
            id="gen-source",
        )
        yield ModelSource(
            label="checkpoint",
            input_id="gen-checkpoint",
            snapshot_id="gen-snapshot",
            placeholder="checkpoint folder, model.safetensors or run dir (latest) — Enter loads",
            consumer="generate pane",
            value=self.checkpoint_hint,
            request_snapshot=self.request_snapshot,
            live_run=self.live_run,
            live_codec=self.live_codec,
            classes="gen-row",
            label_classes="gen-label",
        )
        yield from compose_settings()
        with Horizontal(classes="gen-row"):
            yield Label("steer", classes="gen-label")
            yield Static(strength_bar(0.0), id="gen-strength")
        yield SteerReadout(classes="gen-row", id="gen-readout-row")
        yield Static("", id="gen-message")
        with VerticalScroll(id="gen-output-box"):
            yield Static("", id="gen-output")
        yield Static("", id="gen-stats")

    def on_mount(self) -> None:
        self.query_one("#gen-output-box").border_title = "Output"
        self.query_one("#gen-output-box").can_focus = False

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """No live run (attach): the snapshot key leaves the footer."""
        return not (action == "snapshot" and self.request_snapshot is None)

    def on_key(self, event: Key) -> None:
        if event.key == "s" and self.request_snapshot is None:  # its binding is off: say why
            event.stop()
            self.action_snapshot()

    # ------------------------------------------------------------------ small helpers
    @property
    def follower(self) -> Any:
        """The RunFollower while following, else None."""
        return self.follow.follower

    @property
    def strength(self) -> float:
        return round(self.strength_tenths * STRENGTH_STEP, 1)

    def say(self, message: str, error: bool = False) -> None:
        """One line under the settings: what happened, or what went wrong."""
        line = (message.strip().splitlines() or [""])[0]
        self.last_error = line if error else ""
        self.query_one("#gen-message", Static).update(Text(line, style="bold red" if error else ""))

    # ------------------------------------------------------------------ the model
    def action_snapshot(self) -> None:
        if self.follower is not None:
            self.stop_following()  # the snapshot is the model now
        self.query_one(ModelSource).snapshot()

    def action_open_checkpoint(self) -> None:
        self.query_one(ModelSource).focus_box()

    def load_path(self, path: str) -> None:
        """Load a checkpoint folder (e.g. a crystallized one from the Crystal pane)."""
        self.focus()
        self.query_one(ModelSource).load(path)

    def on_model_source_started(self, message: ModelSource.Started) -> None:
        if self.follower is not None:
            self.stop_following()  # the checkpoint or snapshot asked for is the model now
        self.say(message.text)

    def on_model_source_loaded(self, message: ModelSource.Loaded) -> None:
        self.use_model(message.model, message.codec, message.source)

    def on_model_source_failed(self, message: ModelSource.Failed) -> None:
        self.say(message.reason, error=True)

    def use_model(self, model: Any, codec: Codec, source: str) -> None:
        """Generate from ``model`` from now on; ``source`` says where it came from."""
        self.model, self.codec, self.source = model, codec, source
        settings.offer_layers(self, len(self.model.residual_blocks()))
        self.query_one("#gen-source", Static).update(
            Text.assemble(
                ("model: ", "bold"),
                (self.source, "bold cyan"),
                (f"  ·  {describe_model(self.model, self.codec)}", "dim"),
            )
        )
        self.say(f"ready: {self.source} — g or Enter in the prompt generates")
        self.post_message(GenerationSourceChanged(self.source))

    # ------------------------------------------------------------------ strength
    def action_strength(self, steps: int) -> None:
        limit = round(STRENGTH_LIMIT / STRENGTH_STEP)
        self.strength_tenths = max(-limit, min(limit, self.strength_tenths + steps))
        self.query_one("#gen-strength", Static).update(strength_bar(self.strength))

    def action_strength_reset(self) -> None:
        self.action_strength(-self.strength_tenths)

    # ------------------------------------------------------------------ generation
    def action_generate(self) -> None:
        if self.model is None:
            self.say(
                "no model yet: press s for a snapshot of the live run, or load a checkpoint", True
            )
            return
        try:
            generation = settings.build_generation(self, self.model, self.codec, self.strength)
        except ValueError as exc:
            self.say(str(exc), error=True)
            return
        self._stop_current()
        self._gen_id += 1
        self.generation, self.busy, self.output = generation, "generating", ""
        self._started = time.perf_counter()
        self.query_one("#gen-output-box").border_title = Text(f"Output · {self.source}")
        self._what = f"{generation.mode.mode}{steering_phrase(generation.steer)}"
        self.say(f"generating ({self._what})… Esc cancels")
        self.query_one("#gen-stats", Static).update("")
        self._show_output()
        self._generate_worker(generation, self._gen_id)

    def _stop_current(self) -> None:
        if self.generation is not None:
            self.generation.cancel()
        self.workers.cancel_group(self, "generate")
        self.query_one(SteerReadout).stop()

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    @on_own_thread
    def _generate_worker(self, generation: Generation, gen_id: int) -> None:
        use_decoding_threads()
        worker = get_current_worker()
        error = None
        with self._model_lock:
            try:
                if worker.is_cancelled:
                    generation.cancel()
                for piece in generation:
                    self._pieces.append((gen_id, piece))
                    now = time.perf_counter()
                    if not self._streamed_pending and now - self._posted_at >= REPAINT_S:
                        self._streamed_pending = True  # Finished drains what is left
                        self._posted_at = now
                        self.post_message(self.Streamed())
                    if worker.is_cancelled:
                        generation.cancel()
            except Exception as exc:  # noqa: BLE001 - shown as a line in the pane
                error = f"generation failed: {type(exc).__name__}: {exc}"
        self.post_message(self.Finished(gen_id, generation, error))

    def _drain(self) -> None:
        self._streamed_pending = False  # before draining: a piece added now posts again
        grew = False
        while self._pieces:
            gen_id, piece = self._pieces.popleft()
            if gen_id == self._gen_id:
                self.output += piece
                grew = True
        if grew:
            self._show_output()

    def _show_output(self) -> None:
        text = Text(printable(self.generation.prompt if self.generation else ""), style="bold")
        text.append(printable(self.output))
        self.query_one("#gen-output", Static).update(text)
        self.query_one("#gen-output-box", VerticalScroll).scroll_end(animate=False)

    def on_generate_pane_streamed(self, _: Streamed) -> None:
        self._drain()
        if self.busy == "generating" and self.generation is not None:
            tokens = self.generation.stats.new_tokens
            seconds = max(1e-9, time.perf_counter() - self._started)
            self.query_one("#gen-stats", Static).update(
                Text(f"generating… {tokens} tokens · {tokens / seconds:.1f} tokens/s")
            )

    def on_generate_pane_finished(self, message: Finished) -> None:
        self._drain()
        if message.gen_id != self._gen_id:
            return  # an earlier, cancelled generation
        self.busy = None
        if message.error:
            self.say(message.error, error=True)
            return
        self.show_stats(message.generation.stats)
        self.say(f"done ({self._what}) · model: {self.source}")

    def show_stats(self, stats: GenerationStats) -> None:
        self.query_one("#gen-stats", Static).update(Text(format_stats(stats)))

    def action_cancel(self) -> None:
        if self.busy is None:
            if self.screen.focused is not self:
                self.focus()  # Esc in a text field leaves it, so the pane's keys work again
            return
        what = self.busy
        self._stop_current()
        if what == "readout":
            self.busy = None
            self.query_one(SteerReadout).stop("readout cancelled")
        self.say(f"{what} cancelled")

    # ------------------------------------------------------------------ steering readout
    def action_readout(self) -> None:
        if self.model is None:
            self.say("no model yet: press s for a snapshot, or load a checkpoint", error=True)
            return
        try:
            steer, sampling = settings.readout_settings(
                self, self.model, self.strength, self.readout_tokens
            )
        except ValueError as exc:
            self.say(str(exc), error=True)
            return
        self._stop_current()
        self._gen_id += 1  # pieces of a generation still winding down are dropped
        self.busy = "readout"
        self.say(
            f"steering readout: {self.readout_samples} samples at strength 0 and "
            f"{format_strength(steer.strength)}… Esc cancels"
        )
        self.query_one(SteerReadout).start(self.model, self.codec, steer, settings.prompt(self),
                                           sampling, self.readout_samples, self._model_lock)  # fmt: skip

    def on_steer_readout_done(self, message: SteerReadout.Done) -> None:
        self.busy = None
        if message.error:
            self.say(message.error, error=True)
        else:
            self.say(f"readout done · model: {self.source}")

    # ------------------------------------------------------------------ follow mode
    def action_follow(self) -> None:
        if self.follower is not None:
            self.stop_following()
            self.say("stopped following: the model stays as it is")
            return
        line, error = self.follow.start(self.query_one(ModelSource).path, self.follow_hint)
        self.say(line, error)

    def stop_following(self) -> None:
        self.follow.stop()

    def on_follow_mode_said(self, message: FollowMode.Said) -> None:
        self.say(message.text, message.error)

    def on_follow_mode_taken(self, message: FollowMode.Taken) -> None:
        if self.follower is None:
            return  # stopped meanwhile
        self.use_model(message.model, message.codec, message.source)
        if self.busy != "readout":
            self.action_generate()

    # ------------------------------------------------------------------ widget events
    @on(Input.Submitted)
    def _settings_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_generate()
        self.focus()  # ←/→, 0, g and r work again; Tab goes back to the fields

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        event.stop()
        actions = {
            "gen-go": self.action_generate,
            "gen-cancel": self.action_cancel,
            "gen-readout-go": self.action_readout,
        }
        action = actions.get(event.button.id or "")
        if action is not None:
            action()
