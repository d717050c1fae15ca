"""The Generate pane's steering pieces: the strength bar and the steering readout row.

The readout samples the prompt at strength 0 and at the set strength
(h2q_tui/generation/steer_eval.py) in a thread worker, under the pane's model lock, and says
the word's hit rate and the fluency cost against strength 0. Its row shows the progress; when
done it posts ``SteerReadout.Done`` to the pane.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Button, Label, Static
from textual.worker import get_current_worker

from h2q_tui.generation.generate import use_decoding_threads
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.steer_eval import evaluate_steering
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.generation.text import Codec
from h2q_tui.system.threads import on_own_thread

STRENGTH_STEP = 0.1  # ←/→ change the strength by this much
STRENGTH_LIMIT = 2.0  # … within ±this
BAR_HALF = 20  # cells on each side of the bar's centre: one cell per step
READOUT_SAMPLES = 4  # seeds at each strength
READOUT_TOKENS = 60  # new tokens of each sample
HINT = "hit rate and fluency cost of the word, layer and strength above, against strength 0"


def format_strength(strength: float) -> str:
    return f"{strength:+.1f}" if strength else "0.0"


def steering_phrase(steer: SteerConfig) -> str:
    """`` towards 'cat' at +0.5, layer 1`` for an active steer, else ""."""
    if not steer.active:
        return ""
    return f" towards {steer.word!r} at {format_strength(steer.strength)}, layer {steer.layer}"


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


def readout_line(rows: list[Any], steer: SteerConfig, samples: int) -> str:
    """The steered row against the strength-0 row, in one line."""
    base = next(r for r in rows if r.strength == 0.0)
    steered = next(r for r in rows if r.strength == steer.strength)
    return (
        f"{steer.word!r} @ layer {steer.layer}, {format_strength(steer.strength)}: "
        f"hit rate {round(steered.hit_rate * samples)}/{samples} vs "
        f"{round(base.hit_rate * samples)}/{samples} at strength 0 (as a whole word "
        f"{round(steered.word_hit_rate * samples)}/{samples} vs "
        f"{round(base.word_hit_rate * samples)}/{samples}) · fluency "
        f"{steered.fluency_bpb:.2f} vs {base.fluency_bpb:.2f} bits/byte "
        f"({steered.fluency_bpb - base.fluency_bpb:+.2f}) · Δ log p(word) "
        f"{steered.delta_logprob:+.2f} nats"
    )


class _Cancelled(Exception):
    """Raised from the readout's progress callback when its worker was cancelled."""


class SteerReadout(Horizontal):
    """The readout row: a button and the last readout (or its progress)."""

    class Progress(Message, bubble=False):
        def __init__(self, done: int, total: int, strength: float) -> None:
            super().__init__()
            self.done, self.total, self.strength = done, total, strength

    class Done(Message):
        """The readout ended: ``text`` is its line, or ``error`` says why it failed."""

        def __init__(self, text: str | None, error: str | None) -> None:
            super().__init__()
            self.text, self.error = text, error

    running = False

    def compose(self) -> ComposeResult:
        yield Label("", classes="gen-label")
        yield Button("Steering readout (r)", id="gen-readout-go", compact=True)
        yield Static(Text(HINT, style="dim"), id="gen-readout")

    def show(self, text: Text | str) -> None:
        self.query_one("#gen-readout", Static).update(text)

    def start(self, model: Any, codec: Codec, steer: SteerConfig, prompt: str,
              sampling: SamplingConfig, samples: int, lock: threading.Lock) -> None:  # fmt: skip
        """Run the readout of ``steer`` against strength 0 with ``samples`` seeds."""
        self.running = True
        self._worker(model, codec, steer, prompt, sampling, samples, lock)

    def stop(self, note: str = "") -> None:
        """Cancel a running readout; ``note`` (dim) replaces its line when given."""
        self.running = False
        self.workers.cancel_group(self, "readout")
        if note:
            self.show(Text(note, style="dim"))

    @work(thread=True, exclusive=True, group="readout", exit_on_error=False)
    @on_own_thread
    def _worker(self, model, codec, steer, prompt, sampling, samples, lock) -> None:
        use_decoding_threads()
        worker = get_current_worker()
        order = sorted({0.0, steer.strength})
        total = len(order) * samples

        def progress(strength: float, seed: int) -> None:
            if worker.is_cancelled:
                raise _Cancelled
            done = order.index(strength) * samples + seed
            self.post_message(self.Progress(done, total, strength))

        with lock:
            try:
                if worker.is_cancelled:
                    raise _Cancelled
                rows = evaluate_steering(model, codec, steer, [0.0, steer.strength],
                                         prompt=prompt, samples=samples, sampling=sampling,
                                         progress=progress)  # fmt: skip
            except _Cancelled:
                return
            except Exception as exc:  # noqa: BLE001 - shown as a line in the pane
                self.post_message(self.Done(None, f"readout failed: {exc}"))
                return
        self.post_message(self.Done(readout_line(rows, steer, samples), None))

    def on_steer_readout_progress(self, message: Progress) -> None:
        if self.running:
            self.show(
                Text(
                    f"readout running: sample {message.done + 1}/{message.total} "
                    f"(strength {format_strength(message.strength)})…",
                    style="italic",
                )
            )

    def on_steer_readout_done(self, message: Done) -> None:
        if not self.running:
            message.stop()  # cancelled meanwhile: the pane hears nothing
            return
        self.running = False
        self.show(Text(message.text or "", style="bold") if message.error is None else "")
