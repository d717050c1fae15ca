"""A timed load that every in-process generator uses, recorded for the Crystal pane.

:func:`load_recorded` loads a checkpoint the fast way (h2q_tui/hotstart/phases.py:
built without init, memory-mapped safetensors assigned without a copy; crystallized
folders decoded; the checksum pass beside the load, waited for before the model is
returned) and records a :class:`~h2q_tui.hotstart.timeline.LoadEvent` with its
phases and whether the file was in the page cache beforehand (``mincore``: cold when at
most 5 % of its pages were resident, warm when at least 95 %, unknown between or where
it cannot be checked).
"""

from __future__ import annotations

from pathlib import Path

from h2q_tui.hotstart import timeline
from h2q_tui.hotstart.cold import RESIDENT_LIMIT, residency
from h2q_tui.hotstart.phases import Clock, load_timed


def cache_state(path: str | Path) -> bool | None:
    """True when ``path`` is (almost) not in the page cache, False when it (almost) all is."""
    try:
        fraction = residency(path).fraction
    except OSError:
        return None
    if fraction <= RESIDENT_LIMIT:
        return True
    return False if fraction >= 1 - RESIDENT_LIMIT else None


def load_recorded(path: str | Path, consumer: str, kind: str = "load", note: str = ""):
    """(info, model in eval mode, codec, LoadEvent) of ``path``; raises UserError."""
    from h2q_tui.checkpoints.find import candidate_weights

    weights = candidate_weights(path)  # unverified: read_info's checksum pass would warm it
    cold = cache_state(weights) if weights is not None else None
    clock = Clock()
    info, model, codec = load_timed(path, "fast", None, clock)
    if weights != info.weights:
        cold = None  # another checkpoint was taken (the first was damaged): state unknown
    total = clock.elapsed
    phases = dict(clock.phases)
    rest = total - sum(phases.values())
    if rest > 0:
        phases["rest"] = rest
    event = timeline.record(
        timeline.LoadEvent(
            kind=kind,
            what=info.describe(),
            path=str(info.weights.parent),
            step=info.step,
            total_s=total,
            phases=phases,
            cold=cold,
            consumer=consumer,
            note=note,
            overlapped=dict(clock.overlapped),
        )
    )
    return info, model, codec, event
