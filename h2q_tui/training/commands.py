"""Commands into a running engine, put on a queue and drained between steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Stop:
    """Save a checkpoint, then finish; ``reason`` ends up in RunFinished."""

    reason: str = "stopped"


@dataclass(frozen=True)
class SaveNow:
    pass


@dataclass(frozen=True)
class SampleNow:
    pass


@dataclass(frozen=True)
class SetLearningRate:
    """Set the LR to ``lr`` now; the schedule keeps its shape, rescaled."""

    lr: float


@dataclass(frozen=True)
class ScaleLearningRate:
    """Multiply the LR (raise/lower keys)."""

    factor: float


@dataclass(frozen=True)
class TakeSnapshot:
    """Copy the model between two steps (training goes on) and hand it to ``deliver``.

    ``deliver(model, step)`` runs on the training thread and must not block: post a message.
    The copy is in eval mode with gradients off.
    """

    deliver: Callable[[Any, int], None]


Command = (
    Pause | Resume | Stop | SaveNow | SampleNow | SetLearningRate | ScaleLearningRate | TakeSnapshot
)
