"""The Generate pane: prompt, mode, target word, signed steering strength, layer; streamed
output with tokens/s; the steering readout against the strength-0 baseline.

The model is one the pane owns: a snapshot copy of the live run (taken by the trainer
between two steps without pausing it) or a checkpoint. Generation and the readout run in a
thread worker on that copy, one at a time (the steering hooks live on the model), and stream
back through coalesced messages, so the UI never waits on them and the training thread is
never touched.

Follow mode (``f``) watches a run dir (the live run's, the attached one's, or the one typed
in the checkpoint box) and swaps each new complete checkpoint into the model in place
between two generations (h2q_tui/generation/follow.py), then generates again: a live look
at how the run learns. The source line says which step is in use and how long the swap took.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Key
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static
from textual.worker import get_current_worker

from h2q_tui.app.display import printable, short_path
from h2q_tui.app.fields import FieldSelect
from h2q_tui.app.messages import GenerationSourceChanged
from h2q_tui.app.model_source import ModelSource, RequestSnapshot
from h2q_tui.generation.generate import (
    MODES,
    Generation,
    GenerationStats,
    ModeConfig,
    use_decoding_threads,
)
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.generation.text import Codec
from h2q_tui.system.threads import on_own_thread

DEFAULT_PROMPT = "Once upon a time"
STRENGTH_STEP = 0.1  # ←/→ change the strength by this much
STRENGTH_LIMIT = 2.0  # … within ±this
BAR_HALF = 20  # cells on each side of the bar's centre: one cell per step
READOUT_SAMPLES = 4
READOUT_TOKENS = 60
REPAINT_S = 0.1  # streamed text repaints at most this often (a repaint per token slows decoding)
FOLLOW_POLL_S = 1.0  # how often follow mode looks at the run's checkpoints/latest


def strength_bar(strength: float, limit: float = STRENGTH_LIMIT, half: int = BAR_HALF) -> Text:
    """``−2 ━━━━━━━━━━│━━━━━━━━━━ +2   strength +0.5``, filled from the centre."""
    filled = min(half, round(abs(strength) / limit * half))
    neg = filled if strength < 0 else 0
    pos = filled if strength > 0 else 0
    bar = Text()
    bar.append(f"−{limit:g} ", style="dim")
    bar.append("━" * (half - neg), style="grey35")
    bar.append("━" * neg, style="bold red")
    bar.append("│", style="bold")
    bar.append("━" * pos, style="bold green")
    bar.append("━" * (half - pos), style="grey35")
    bar.append(f" +{limit:g}", style="dim")
    bar.append(f"   strength {format_strength(strength)}", style="bold")
    bar.append("  × residual norm   ←/→ ±0.1 · 0 resets", style="dim")
    return bar


def format_strength(strength: float) -> str:
    return f"{strength:+.1f}" if strength else "0.0"


def format_stats(stats: GenerationStats) -> str:
    return (
        f"{stats.new_tokens} tokens · {stats.tokens_per_s:.1f} tokens/s · first token "
        f"{1000 * stats.first_token_s:.0f} ms · {stats.seconds:.2f} s · stop: {stats.stop_reason}"
    )


def describe_model(model: Any, codec: Codec) -> str:
    family = getattr(getattr(model, "config", None), "family", type(model).__name__)
    layers = len(model.residual_blocks())
    params = sum(p.numel() for p in model.parameters())
    tokens = "BPE" if codec.tokenizer is not None else "bytes"
    return f"{family}, {layers} layers, {params:,} parameters, {tokens}"


class _Cancelled(Exception):
    """Raised from the readout's progress callback when its worker was cancelled."""


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

    class ModelReady(Message, bubble=False):
        def __init__(self, model: Any, codec: Codec, source: str) -> None:
            super().__init__()
            self.model, self.codec, self.source = model, codec, source

    class Streamed(Message, bubble=False):
        """Pieces wait in the pane's deque (coalesced: at most one pending)."""

    class Finished(Message, bubble=False):
        def __init__(self, gen_id: int, generation: Generation, error: str | None) -> None:
            super().__init__()
            self.gen_id, self.generation, self.error = gen_id, generation, error

    class FollowTaken(Message, bubble=False):
        def __init__(self, swapped: Any, codec: Codec) -> None:
            super().__init__()
            self.swapped, self.codec = swapped, codec

    class FollowSaid(Message, bubble=False):
        def __init__(self, text: str, error: bool = False) -> None:
            super().__init__()
            self.text, self.error = text, error

    class ReadoutProgress(Message, bubble=False):
        def __init__(self, done: int, total: int, strength: float) -> None:
            super().__init__()
            self.done, self.total, self.strength = done, total, strength

    class ReadoutDone(Message, bubble=False):
        def __init__(self, text: str | None, error: str | None) -> None:
            super().__init__()
            self.text, self.error = text, error

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
        self.follower: Any = None  # RunFollower while following
        self._follow_timer: Any = None
        self._followed_model: Any = None  # the model the follower loaded: swaps go into it
        self._follow_waiting_said = False
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
        with Horizontal(classes="gen-row"):
            yield Label("prompt", classes="gen-label")
            yield Input(DEFAULT_PROMPT, id="gen-prompt", compact=True)
            yield Button("Generate (g)", id="gen-go", variant="primary", compact=True)
            yield Button("Cancel (Esc)", id="gen-cancel", compact=True)
        with Horizontal(classes="gen-row"):
            yield Label("mode", classes="gen-label")
            options = [(mode, mode) for mode in MODES]
            yield FieldSelect(
                options, value="sample", allow_blank=False, id="gen-mode", compact=True
            )
            yield Label("word", classes="gen-label-short")
            yield Input(placeholder="target word", id="gen-word", compact=True)
            yield Label("layer", classes="gen-label-short")
            yield FieldSelect([], prompt="no model", id="gen-layer", compact=True)
        with Horizontal(classes="gen-row"):  # a row of its own: 80 columns hold it
            yield Label("decoding", classes="gen-label")
            yield Label("L", classes="gen-label-tiny gen-first")
            yield Input("3", id="gen-lookahead", type="integer", compact=True)
            yield Label("w", classes="gen-label-tiny")
            yield Input("0.5", id="gen-flow", type="number", compact=True)
            yield Label("temp", classes="gen-label-short")
            yield Input("0.7", id="gen-temperature", type="number", compact=True)
            yield Label("tokens", classes="gen-label-short")
            yield Input("200", id="gen-tokens", type="integer", compact=True)
            yield Label("seed", classes="gen-label-short")
            yield Input("0", id="gen-seed", type="integer", compact=True)
        with Horizontal(classes="gen-row"):
            yield Label("steer", classes="gen-label")
            yield Static(strength_bar(0.0), id="gen-strength")
        with Horizontal(classes="gen-row", id="gen-readout-row"):
            yield Label("", classes="gen-label")
            yield Button("Steering readout (r)", id="gen-readout-go", compact=True)
            yield Static(
                Text(
                    "hit rate and fluency cost of the word, layer and strength above, "
                    "against strength 0",
                    style="dim",
                ),
                id="gen-readout",
            )
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
    def strength(self) -> float:
        return round(self.strength_tenths * STRENGTH_STEP, 1)

    def say(self, message: str, error: bool = False) -> None:
        """One line under the settings: what happened, or what went wrong."""
        line = (message.strip().splitlines() or [""])[0]
        self.last_error = line if error else ""
        self.query_one("#gen-message", Static).update(Text(line, style="bold red" if error else ""))

    def _value(self, widget_id: str, kind: type, name: str):
        raw = self.query_one(f"#{widget_id}", Input).value.strip()
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None

    def _layer(self) -> int:
        value = self.query_one("#gen-layer", Select).value
        return value if isinstance(value, int) else 0

    def _word(self) -> str:
        return self.query_one("#gen-word", Input).value.strip()

    def _prompt(self) -> str:
        return self.query_one("#gen-prompt", Input).value

    def build_generation(self) -> Generation:
        """A Generation from the widgets; ValueError (readable) for a bad setting."""
        mode = str(self.query_one("#gen-mode", Select).value)
        sampling = SamplingConfig(
            temperature=self._value("gen-temperature", float, "temp"),
            max_new_tokens=self._value("gen-tokens", int, "tokens"),
            seed=self._value("gen-seed", int, "seed"),
        )
        modes = ModeConfig(
            mode=mode,
            lookahead=self._value("gen-lookahead", int, "L"),
            flow_weight=self._value("gen-flow", float, "w"),
        )
        # as `generate --steer WORD`: a word and a non-zero strength steer in every mode,
        # and sampling with them is the steer mode
        steer = SteerConfig(word=self._word(), strength=self.strength, layer=self._layer())
        if mode == "sample" and steer.active:
            modes.mode = "steer"
        return Generation(self.model, self.codec, self._prompt(), sampling, modes, steer)

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
        self.on_generate_pane_model_ready(
            self.ModelReady(message.model, message.codec, message.source)
        )

    def on_model_source_failed(self, message: ModelSource.Failed) -> None:
        self.say(message.reason, error=True)

    def on_generate_pane_model_ready(self, message: ModelReady) -> None:
        self.model, self.codec, self.source = message.model, message.codec, message.source
        layers = len(self.model.residual_blocks())
        picker = self.query_one("#gen-layer", Select)
        keep = min(self._layer(), layers - 1)
        picker.set_options([(str(i), i) for i in range(layers)])
        picker.value = keep
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
            generation = self.build_generation()
        except ValueError as exc:
            self.say(str(exc), error=True)
            return
        self._stop_current()
        self._gen_id += 1
        self.generation, self.busy, self.output = generation, "generating", ""
        self._started = time.perf_counter()
        self.query_one("#gen-output-box").border_title = Text(f"Output · {self.source}")
        steer = generation.steer
        steering = (
            f" towards {steer.word!r} at {format_strength(steer.strength)}, layer {steer.layer}"
            if steer.active
            else ""
        )
        self._what = f"{generation.mode.mode}{steering}"
        self.say(f"generating ({self._what})… Esc cancels")
        self.query_one("#gen-stats", Static).update("")
        self._show_output()
        self._generate_worker(generation, self._gen_id)

    def _stop_current(self) -> None:
        if self.generation is not None:
            self.generation.cancel()
        self.workers.cancel_group(self, "generate")

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
            self.query_one("#gen-readout", Static).update(Text("readout cancelled", style="dim"))
        self.say(f"{what} cancelled")

    # ------------------------------------------------------------------ steering readout
    def action_readout(self) -> None:
        if self.model is None:
            self.say("no model yet: press s for a snapshot, or load a checkpoint", error=True)
            return
        word, strength = self._word(), self.strength
        if not word or strength == 0.0:
            self.say("the steering readout needs a target word and a non-zero strength (←/→)", True)
            return
        steer = SteerConfig(word=word, strength=strength, layer=self._layer())
        try:
            steer.check(len(self.model.residual_blocks()))
            temperature = self._value("gen-temperature", float, "temp")
        except ValueError as exc:
            self.say(str(exc), error=True)
            return
        self._stop_current()
        self._gen_id += 1  # pieces of a generation still winding down are dropped
        self.busy = "readout"
        self.say(
            f"steering readout: {self.readout_samples} samples at strength 0 and "
            f"{format_strength(strength)}… Esc cancels"
        )
        self._readout_worker(self.model, self.codec, steer, self._prompt(), temperature)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    @on_own_thread
    def _readout_worker(
        self, model: Any, codec: Codec, steer: SteerConfig, prompt: str, temperature: float
    ) -> None:
        from h2q_tui.generation.steer_eval import evaluate_steering

        use_decoding_threads()
        worker = get_current_worker()
        samples = self.readout_samples
        order = sorted({0.0, steer.strength})
        total = len(order) * samples

        def progress(strength: float, seed: int) -> None:
            if worker.is_cancelled:
                raise _Cancelled
            done = order.index(strength) * samples + seed
            self.post_message(self.ReadoutProgress(done, total, strength))

        with self._model_lock:
            try:
                if worker.is_cancelled:
                    raise _Cancelled
                rows = evaluate_steering(
                    model,
                    codec,
                    steer,
                    [0.0, steer.strength],
                    prompt=prompt,
                    samples=samples,
                    sampling=SamplingConfig(
                        temperature=temperature, max_new_tokens=self.readout_tokens
                    ),
                    progress=progress,
                )
            except _Cancelled:
                return
            except Exception as exc:  # noqa: BLE001 - shown as a line in the pane
                self.post_message(self.ReadoutDone(None, f"readout failed: {exc}"))
                return
        base = next(r for r in rows if r.strength == 0.0)
        steered = next(r for r in rows if r.strength == steer.strength)
        text = (
            f"{steer.word!r} @ layer {steer.layer}, {format_strength(steer.strength)}: "
            f"hit rate {round(steered.hit_rate * samples)}/{samples} vs "
            f"{round(base.hit_rate * samples)}/{samples} at strength 0 (as a whole word "
            f"{round(steered.word_hit_rate * samples)}/{samples} vs "
            f"{round(base.word_hit_rate * samples)}/{samples}) · fluency "
            f"{steered.fluency_bpb:.2f} vs {base.fluency_bpb:.2f} bits/byte "
            f"({steered.fluency_bpb - base.fluency_bpb:+.2f}) · Δ log p(word) "
            f"{steered.delta_logprob:+.2f} nats"
        )
        self.post_message(self.ReadoutDone(text, None))

    def on_generate_pane_readout_progress(self, message: ReadoutProgress) -> None:
        if self.busy != "readout":
            return
        self.query_one("#gen-readout", Static).update(
            Text(
                f"readout running: sample {message.done + 1}/{message.total} "
                f"(strength {format_strength(message.strength)})…",
                style="italic",
            )
        )

    def on_generate_pane_readout_done(self, message: ReadoutDone) -> None:
        if self.busy != "readout":
            return
        self.busy = None
        if message.error:
            self.query_one("#gen-readout", Static).update("")
            self.say(message.error, error=True)
            return
        self.query_one("#gen-readout", Static).update(Text(message.text or "", style="bold"))
        self.say(f"readout done · model: {self.source}")

    # ------------------------------------------------------------------ follow mode
    def action_follow(self) -> None:
        from h2q_tui.errors import UserError
        from h2q_tui.generation.follow import RunFollower

        if self.follower is not None:
            self.stop_following()
            self.say("stopped following: the model stays as it is")
            return
        typed = self.query_one(ModelSource).path
        target = typed if typed and not Path(typed, "model.safetensors").is_file() else ""
        target = target or self.follow_hint
        if not target:
            self.say("nothing to follow: type a run dir in the checkpoint box, then f", True)
            return
        try:
            self.follower = RunFollower(target, consumer="generate pane")
        except UserError as exc:
            self.say(str(exc), error=True)
            return
        self._followed_model, self._follow_waiting_said = None, False
        self.say(f"following {short_path(self.follower.run_dir)}: each new checkpoint is "
                 "swapped in and generated from · f stops")  # fmt: skip
        self._follow_timer = self.set_interval(FOLLOW_POLL_S, self._follow_tick)
        self._follow_tick()

    def stop_following(self) -> None:
        if self._follow_timer is not None:
            self._follow_timer.stop()
        self.follower = self._follow_timer = None
        self.workers.cancel_group(self, "follow")

    def _follow_tick(self) -> None:
        if self.follower is not None:
            self._follow_worker(self.follower)

    @work(thread=True, exclusive=True, group="follow", exit_on_error=False)
    @on_own_thread
    def _follow_worker(self, follower: Any) -> None:
        from h2q_tui.checkpoints import tokenizer_of
        from h2q_tui.errors import UserError

        info = follower.poll()
        if info is None:
            if self._followed_model is None and not self._follow_waiting_said:
                self._follow_waiting_said = True
                self.post_message(
                    self.FollowSaid(
                        f"following {short_path(follower.run_dir)}: waiting for "
                        "its first complete checkpoint…"
                    )  # fmt: skip
                )
            return
        use_decoding_threads()
        with self._model_lock:  # between two generations, never during one
            try:
                swapped = follower.take(self._followed_model, info)
                codec = Codec(tokenizer_of(info))
            except UserError as exc:
                self.post_message(self.FollowSaid(str(exc), error=True))
                return
        self._followed_model = swapped.model
        self.post_message(self.FollowTaken(swapped, codec))

    def on_generate_pane_follow_said(self, message: FollowSaid) -> None:
        self.say(message.text, message.error)

    def on_generate_pane_follow_taken(self, message: FollowTaken) -> None:
        if self.follower is None:
            return  # stopped meanwhile
        swapped = message.swapped
        source = f"following {short_path(self.follower.run_dir)} · {swapped.line()}"
        self.on_generate_pane_model_ready(self.ModelReady(swapped.model, message.codec, source))
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
