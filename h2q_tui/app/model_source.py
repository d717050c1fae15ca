"""Where a pane's model comes from: the checkpoint box, the snapshot button and the load worker.

One row the Generate, Ollama and Crystal panes compose instead of writing it each::

    ModelSource(
        label="checkpoint",             # the row's label
        input_id="gen-checkpoint",      # id of the path Input (the box)
        snapshot_id="gen-snapshot",     # id of the snapshot Button (hidden without a live run)
        placeholder="…", value="…",     # the box's hint and first value
        snapshot_label="Snapshot live (s)",
        consumer="generate pane",       # who loaded, in the hot-start timeline
        request_snapshot=None,          # the shell's RequestSnapshot, None when attached
        live_run="fake-run", live_codec=Codec(tokenizer),
        describe=checkpoint_line,       # CheckpointInfo -> the source line of a loaded file
        guard=None,                     # () -> why no load may start now ("" when it may)
        classes="gen-row", label_classes="gen-label",
    )

Enter in the box (or ``load(path)``) loads that checkpoint folder, ``model.safetensors`` or run
dir (its latest) in a thread worker through :func:`load_for_pane` (the one loader, ``fast``, recorded); the button (or
``snapshot()``) asks the trainer for a copy of the live model between two steps. The widget
then posts, bubbling to its pane:

- ``ModelSource.Started(text, path)``: a load of ``path`` (or, with path "", a snapshot
  request) went out; ``text`` is the line to show;
- ``ModelSource.Loaded(model, codec, source, info, step, load_s)``: the model (eval mode) is
  ready; ``info`` is the checkpoint's CheckpointInfo, None for a live snapshot; ``load_s``
  is the load's time (for a snapshot, from the request to the copy's arrival);
- ``ModelSource.Failed(reason)``: one line (a bad path, a damaged file, no live run…).

``focus_box()`` focuses the box (a pane's ``o`` key); ``path`` is what the box holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.events import Key
from textual.message import Message
from textual.widgets import Button, Input, Label

from h2q_tui.app.display import short_path
from h2q_tui.checkpoints import load_checkpoint
from h2q_tui.errors import UserError
from h2q_tui.generation.text import Codec
from h2q_tui.system.threads import on_own_thread

# Deliver(model, step) is called by the trainer on the training thread; RequestSnapshot sends
# the request and returns None, or returns why no snapshot can be taken.
Deliver = Callable[[Any, int], None]
RequestSnapshot = Callable[[Deliver], "str | None"]

EMPTY_PATH = "type a checkpoint folder, model.safetensors or run dir, then Enter"
NO_LIVE_RUN = "no live run (attached runs): load a checkpoint instead"
SNAPSHOT_REQUESTED = "snapshot requested: the trainer copies its model between two steps…"


def checkpoint_line(info: Any) -> str:
    """``checkpoint runs/x/checkpoints/step_00000007 (step 7) · int8 of run X…``."""
    crystal = f" · {info.describe()}" if info.crystal is not None else ""
    return f"checkpoint {short_path(info.weights.parent)} (step {info.step:,}){crystal}"


def load_for_pane(path: str, consumer: str) -> tuple[Any, Any, Codec]:
    """Checkpoint info, model (eval) and codec, as every pane loads them: the one loader's
    ``fast`` path (memory-mapped weights, checksums alongside), recorded for the hot-start
    panel under ``consumer``."""
    loaded = load_checkpoint(path, "fast", consumer=consumer)
    return loaded.info, loaded.model, Codec(loaded.tokenizer)


class SnapshotKeyOff:
    """For a pane whose ``s`` snapshots the live run: without one (an attached run) the key
    leaves the footer, and ``s`` pressed on the pane itself still runs ``action_snapshot``,
    which says why nothing happens."""

    request_snapshot: Callable[..., Any] | None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action == "snapshot" and self.request_snapshot is None)

    def on_key(self, event: Key) -> None:
        if event.key == "s" and self.request_snapshot is None and self.screen.focused is self:
            event.stop()
            self.action_snapshot()


class ModelSource(Horizontal):
    """Label, checkpoint box and snapshot button; loads in a worker and posts the model."""

    class Started(Message):
        def __init__(self, text: str, path: str = "") -> None:
            super().__init__()
            self.text, self.path = text, path

    class Loaded(Message):
        def __init__(
            self, model: Any, codec: Codec, source: str, info: Any, step: int, load_s: float
        ) -> None:
            super().__init__()
            self.model, self.codec, self.source = model, codec, source
            self.info, self.step, self.load_s = info, step, load_s

    class Failed(Message):
        def __init__(self, reason: str) -> None:
            super().__init__()
            self.reason = reason

    def __init__(
        self,
        *,
        label: str,
        input_id: str,
        snapshot_id: str,
        placeholder: str,
        consumer: str,
        value: str = "",
        snapshot_label: str = "Snapshot live (s)",
        request_snapshot: RequestSnapshot | None = None,
        live_run: str | None = None,
        live_codec: Codec | None = None,
        describe: Callable[[Any], str] = checkpoint_line,
        guard: Callable[[], str] | None = None,
        classes: str = "",
        label_classes: str = "",
    ) -> None:
        super().__init__(classes=classes)
        self.label, self.input_id, self.snapshot_id = label, input_id, snapshot_id
        self.placeholder, self.initial, self.snapshot_label = placeholder, value, snapshot_label
        self.consumer, self.describe, self.guard = consumer, describe, guard
        self.request_snapshot, self.live_run = request_snapshot, live_run
        self.live_codec = live_codec if live_codec is not None else Codec()
        self.label_classes = label_classes
        self._snapshot_asked = 0.0

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes=self.label_classes)
        yield Input(self.initial, placeholder=self.placeholder, id=self.input_id, compact=True)
        yield Button(self.snapshot_label, id=self.snapshot_id, compact=True)

    def on_mount(self) -> None:
        if self.request_snapshot is None:  # attached runs: no live model to copy
            self.query_one(f"#{self.snapshot_id}", Button).display = False

    @property
    def path(self) -> str:
        return self.query_one(f"#{self.input_id}", Input).value.strip()

    def focus_box(self) -> None:
        self.query_one(f"#{self.input_id}", Input).focus()

    def _refused(self) -> bool:
        why = self.guard() if self.guard is not None else ""
        if why:
            self.post_message(self.Failed(why))
        return bool(why)

    def load(self, path: str) -> None:
        """Put ``path`` in the box and load it in a worker (Loaded or Failed follows)."""
        path = path.strip()
        if not path:
            self.post_message(self.Failed(EMPTY_PATH))
            return
        if self._refused():
            return
        self.query_one(f"#{self.input_id}", Input).value = path
        self.post_message(self.Started(f"loading {path}…", path))
        self._load_worker(path)

    def snapshot(self) -> None:
        """Ask the trainer for a copy of the live model (Loaded or Failed follows)."""
        if self.request_snapshot is None:
            self.post_message(self.Failed(NO_LIVE_RUN))
            return
        if self._refused():
            return
        self._snapshot_asked = time.perf_counter()
        why = self.request_snapshot(self._deliver)
        if why:
            self.post_message(self.Failed(why))
        else:
            self.post_message(self.Started(SNAPSHOT_REQUESTED))

    def _deliver(self, model: Any, step: int) -> None:
        """Called by the trainer on the training thread: post and return at once."""
        load_s = time.perf_counter() - self._snapshot_asked
        source = f"live snapshot of run {self.live_run} at step {step:,}"
        self.post_message(self.Loaded(model, self.live_codec, source, None, step, load_s))

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    @on_own_thread
    def _load_worker(self, path: str) -> None:
        started = time.perf_counter()
        try:
            info, model, codec = load_for_pane(path, self.consumer)
            source = self.describe(info)
        except UserError as exc:
            self.post_message(self.Failed(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a load failure is a line, not a crash
            self.post_message(self.Failed(f"cannot load {path}: {type(exc).__name__}: {exc}"))
        else:
            load_s = time.perf_counter() - started
            self.post_message(self.Loaded(model, codec, source, info, info.step, load_s))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.load(event.value)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.snapshot()
