"""Following a training run: take each new checkpoint as soon as it is complete.

A :class:`RunFollower` watches ``RUN/checkpoints/latest``. Training moves that pointer only
after a checkpoint folder is complete and renamed into place (h2q_tui/checkpoints/save.py),
and :func:`h2q_tui.checkpoints.resolve_checkpoint` checks every tensor against its CRC
before it is trusted, so a checkpoint still being written is never picked up.

:func:`swap_weights` copies the new weights into the model that is already generating:
parameters and buffers keep their identity (a Generate pane, a server or a test holding
``model.parameters()`` sees the new values), nothing is rebuilt; decode state (the KV cache)
lives in each :class:`~h2q_tui.generation.decoder.Decoder`, so the next generation starts
clean. Call it between two generations, never during one. A checkpoint whose shapes differ
(a qrlm run that grew its rank) cannot be swapped in place and is loaded afresh instead.

Every swap or load is recorded in h2q_tui/checkpoints/timing.py for the Crystal pane.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from h2q_tui import checkpoints
from h2q_tui.checkpoints import timing
from h2q_tui.checkpoints.find import named_run_dir, pointer_state
from h2q_tui.errors import UserError


@dataclass
class Swapped:
    """What :meth:`RunFollower.take` did: ``kind`` is ``load`` (a new model) or ``swap``."""

    info: checkpoints.CheckpointInfo
    model: nn.Module
    kind: str
    seconds: float
    previous_step: int | None

    def line(self) -> str:
        """``now step 400, swapped in 3.1 ms`` (or ``loaded in``)."""
        verb = "swapped in" if self.kind == "swap" else "loaded in"
        return f"now step {self.info.step:,}, {verb} {1000 * self.seconds:.1f} ms"


class RunFollower:
    """Hands out each new complete checkpoint of one run dir (poll from any one thread)."""

    def __init__(self, run_dir: str | Path, consumer: str = "generate --follow") -> None:
        self.run_dir = named_run_dir(Path(run_dir))
        if self.run_dir.is_file() or (self.run_dir / "model.safetensors").is_file():
            raise UserError(
                f"{self.run_dir} is a checkpoint, not a run dir: --follow needs the folder a "
                "training run writes (its checkpoints/ land there)"
            )
        if (
            self.run_dir.is_dir()
            and not (
                (self.run_dir / "checkpoints").is_dir() or (self.run_dir / "run.json").is_file()
            )
            and any(self.run_dir.iterdir())
        ):
            raise UserError(
                f"{self.run_dir} is not a run dir (no checkpoints/ or run.json): --follow needs "
                "the folder a training run writes"
            )
        self.consumer = consumer
        self.info: checkpoints.CheckpointInfo | None = None  # what the model holds now
        self._seen: tuple[int, bytes] | None = None  # pointer_state last looked at

    def poll(self) -> checkpoints.CheckpointInfo | None:
        """The run's newest sound checkpoint when it differs from the one held, else None.

        Cheap while nothing changed (one stat and a tiny read of ``latest``); a moved pointer
        is followed only to a checkpoint that passes its checksums.
        """
        state = pointer_state(self.run_dir)
        if state is None or state == self._seen:
            return None
        try:
            info = checkpoints.read_info(self.run_dir)
        except UserError:
            return None  # nothing sound yet (or a damaged one): keep what is held, look again
        self._seen = state
        if self.info is not None and info.weights == self.info.weights:
            return None
        return info

    def take(self, model: nn.Module | None, info: checkpoints.CheckpointInfo) -> Swapped:
        """Put ``info``'s weights in front of the generator: in ``model`` when it can be
        swapped in place, else a freshly loaded model. Records the event."""
        previous = self.info
        note = f"step {previous.step:,} → {info.step:,}" if previous else ""
        if model is not None and can_swap(model, info, previous):
            kind, started = "swap", time.perf_counter()
            swap_weights(model, info)
            seconds = time.perf_counter() - started
            timing.record(
                timing.LoadEvent(
                    kind="swap",
                    what=info.describe(),
                    path=str(info.weights.parent),
                    step=info.step,
                    total_s=seconds,
                    phases={"copy": seconds},
                    consumer=self.consumer,
                    note=note,
                )
            )
        else:
            kind = "load"
            loaded = checkpoints.load_checkpoint(
                info.weights.parent, "fast", consumer=self.consumer, note=note
            )
            info, model, seconds = loaded.info, loaded.model, loaded.event.total_s
        self.info = info
        return Swapped(info, model, kind, seconds, previous.step if previous else None)


def can_swap(model: nn.Module, info: checkpoints.CheckpointInfo, previous: Any) -> bool:
    """True when ``info`` builds the same architecture as what ``model`` holds."""
    if previous is None:
        return False
    same_model = info.config.model == previous.config.model
    return same_model and info.rank_growths == previous.rank_growths


def swap_weights(model: nn.Module, info: checkpoints.CheckpointInfo) -> None:
    """Copy ``info``'s weights into ``model`` in place (strict: same names and shapes).

    ``load_state_dict`` copies into the existing tensors, so every parameter keeps its
    identity; crystallized checkpoints are decoded first. Raises UserError on a mismatch.
    """
    checkpoints.load_weights(info, model)
    model.eval()


def follow(
    follower: RunFollower,
    regenerate,
    say,
    seconds: float | None = None,
    poll_s: float = 0.25,
) -> int:
    """Wait for checkpoints of ``follower``'s run and call ``regenerate(model, info, swapped)``
    after each one lands, until ``seconds`` have passed (None: until Ctrl+C).

    ``say(line)`` reports waiting and each swap. Returns how many checkpoints were taken;
    raises UserError when the time ran out before any checkpoint appeared.
    """
    deadline = None if seconds is None else time.monotonic() + seconds
    model: nn.Module | None = None
    taken = 0
    waiting_said = False
    while deadline is None or time.monotonic() < deadline:
        info = follower.poll()
        if info is None:
            if model is None and not waiting_said:
                missing = "" if follower.run_dir.exists() else " (it does not exist yet)"
                say(
                    f"waiting for a first complete checkpoint in {follower.run_dir}{missing}; "
                    "Ctrl+C stops…"
                )
                waiting_said = True
            time.sleep(poll_s)
            continue
        swapped = follower.take(model, info)
        model, taken = swapped.model, taken + 1
        say(f"{swapped.line()} · {info.describe()}")
        regenerate(model, info, swapped)
    if taken == 0:
        raise UserError(
            f"no complete checkpoint appeared in {follower.run_dir} within {seconds:g} s"
        )
    return taken
