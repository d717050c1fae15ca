"""The Generate pane's follow mode: poll a run dir, swap each new checkpoint into the model.

A :class:`FollowMode` belongs to one pane: every ``FOLLOW_POLL_S`` a thread worker of that pane
asks the run's ``checkpoints/latest`` (h2q_tui/generation/follow.py) and, under the pane's model
lock (between two generations, never during one), swaps the new weights into the followed model
in place. It posts ``FollowMode.Said`` (a line for the pane) and ``FollowMode.Taken`` (the model
and its source line) to the pane, which generates again. The run dir is the one typed in the
checkpoint box, else the live run's or the attached one's; the source line says which step is
in use and how long the swap took.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.widget import Widget

from h2q_tui.app.display import short_path
from h2q_tui.checkpoints import tokenizer_of
from h2q_tui.errors import UserError
from h2q_tui.generation.follow import RunFollower
from h2q_tui.generation.generate import use_decoding_threads
from h2q_tui.generation.text import Codec
from h2q_tui.system.threads import run_on_own_thread

FOLLOW_POLL_S = 1.0  # how often follow mode looks at the run's checkpoints/latest


class FollowMode:
    """Follows one run dir for ``pane`` while started; ``follower`` is None when stopped."""

    class Said(Message, bubble=False):
        def __init__(self, text: str, error: bool = False) -> None:
            super().__init__()
            self.text, self.error = text, error

    class Taken(Message, bubble=False):
        def __init__(self, model: Any, codec: Codec, source: str) -> None:
            super().__init__()
            self.model, self.codec, self.source = model, codec, source

    def __init__(self, pane: Widget, model_lock: threading.Lock) -> None:
        self.pane, self.model_lock = pane, model_lock
        self.follower: Any = None  # RunFollower while following
        self._timer: Any = None
        self._model: Any = None  # the model the follower loaded: swaps go into it
        self._waiting_said = False

    def start(self, typed: str, hint: str) -> tuple[str, bool]:
        """Follow the run dir typed in the box (else ``hint``); (the pane's line, error)."""
        target = typed if typed and not Path(typed, "model.safetensors").is_file() else ""
        target = target or hint
        if not target:
            return "nothing to follow: type a run dir in the checkpoint box, then f", True
        try:
            self.follower = RunFollower(target, consumer="generate pane")
        except UserError as exc:
            return str(exc), True
        self._model, self._waiting_said = None, False
        self._timer = self.pane.set_interval(FOLLOW_POLL_S, self._tick)
        self._tick()
        return (
            f"following {short_path(self.follower.run_dir)}: each new checkpoint is "
            "swapped in and generated from · f stops"
        ), False

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.follower = self._timer = None
        self.pane.workers.cancel_group(self.pane, "follow")

    def _tick(self) -> None:
        if self.follower is not None:
            work = functools.partial(run_on_own_thread, self._poll, self.follower)
            self.pane.run_worker(work, thread=True, exclusive=True, group="follow",
                                 exit_on_error=False)  # fmt: skip

    def _poll(self, follower: Any) -> None:
        """On a worker thread: take the run's newest checkpoint if it is new."""
        info = follower.poll()
        if info is None:
            if self._model is None and not self._waiting_said:
                self._waiting_said = True
                self.pane.post_message(
                    self.Said(
                        f"following {short_path(follower.run_dir)}: waiting for "
                        "its first complete checkpoint…"
                    )  # fmt: skip
                )
            return
        use_decoding_threads()
        with self.model_lock:  # between two generations, never during one
            try:
                swapped = follower.take(self._model, info)
                codec = Codec(tokenizer_of(info))
            except UserError as exc:
                self.pane.post_message(self.Said(str(exc), error=True))
                return
        self._model = swapped.model
        source = f"following {short_path(follower.run_dir)} · {swapped.line()}"
        self.pane.post_message(self.Taken(swapped.model, codec, source))
