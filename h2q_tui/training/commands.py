"""Commands into a running engine, put on a queue and drained between steps."""

from __future__ import annotations

from dataclasses import dataclass


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


Command = Pause | Resume | Stop | SaveNow | SampleNow | SetLearningRate | ScaleLearningRate
