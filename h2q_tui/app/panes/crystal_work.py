"""The Crystal pane's work off the UI thread: a source to crystallize (a loaded checkpoint, or
a live snapshot saved as one) and the sweep driven one method per pass, reported by callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from h2q_tui import checkpoints
from h2q_tui.app.display import short_path
from h2q_tui.crystal.folders import check_out, default_out, save_snapshot
from h2q_tui.crystal.methods import resolve_methods, sweep_methods
from h2q_tui.crystal.sweep import (
    Plan,
    Row,
    Source,
    refuse_crystallized,
    source_of,
    sweep,
    unique_tensors,
)

SUMMARY = "crystal-pane.json"  # beside the folders: the source, the data and the rows


class Cancelled(Exception):
    """Raised from the measurement's progress callback when the sweep was cancelled."""


@dataclass
class Loaded:
    """A checkpoint ready to crystallize: the loaded source, the methods that apply to its
    model (offered for ticking) and where its folders go."""

    source: Source
    describe: str
    methods: list[str]
    skipped: list[str]
    out_root: Path
    out_note: str  # where the folders go, for the screen


def prepare(info: Any, model: Any, out: Path | None = None, out_note: str = "") -> Loaded:
    """A loaded checkpoint ready to crystallize, with the methods that apply to its model;
    UserError (one line) for an already crystallized file or an output folder inside it."""
    refuse_crystallized(info)
    out = out if out is not None else default_out(info.weights)
    check_out(out, info.weights)
    source = source_of(info, model)
    methods, skipped = sweep_methods(unique_tensors(source.state_dict))
    folder = short_path(info.weights.parent)
    describe = f"{info.describe()} · {info.config.model.family} · {folder}"
    note = out_note or f"folders go to {short_path(out)}/"
    return Loaded(source, describe, methods, skipped, out, note)


def live_run(engine: Any) -> dict[str, Any]:
    """What a checkpoint of the live model's copy needs (read on the training thread)."""
    trainer = getattr(engine, "trainer", None)
    prepared = getattr(engine, "prepared", None)
    tokenizer = getattr(prepared, "tokenizer", None)
    return {
        "config": getattr(trainer, "config", None) or getattr(prepared, "config", None),
        "run_id": getattr(trainer, "run_id", None) or getattr(engine, "name", "live"),
        "rank_growths": getattr(trainer, "rank_growths", 0),
        "tokenizer": getattr(tokenizer, "path", None),
        "run_dir": getattr(engine, "run_dir", None),
    }


def prepare_snapshot(model: Any, step: int, live: dict[str, Any]) -> Loaded:
    """A live model's copy saved as a checkpoint (:func:`save_snapshot`) and loaded from it."""
    folder, out_root, in_run_dir = save_snapshot(model, step, live)
    where = "run dir" if in_run_dir else "temporary folder"
    note = f"snapshot + folders in the {where}: {short_path(out_root)}/"
    loaded = checkpoints.load_checkpoint(folder)
    return prepare(loaded.info, loaded.model, out_root, note)


@dataclass
class Order:
    """The ticked methods (in the ladder's order) and the held-out data to measure them on."""

    methods: list[str]
    data: str | None
    windows: int
    batch: int


def drive_sweep(
    loaded: Loaded,
    order: Order,
    cancelled: Callable[[], bool],
    say: Callable[[str], None],
    row_done: Callable[[Row], None],
) -> str:
    """Run the sweep one method per pass, each row (the original first) to ``row_done`` and
    the progress to ``say``; raises :class:`Cancelled` once ``cancelled()``. Returns the
    closing line."""
    source, methods = loaded.source, order.methods
    heldout = source.heldout(order.data, order.windows)
    parsed, _ = resolve_methods(",".join(methods), source.state_dict)
    plan = Plan(source, parsed, heldout, loaded.out_root, batch=order.batch)
    measured: list[Row] = []

    def progress(label: str, windows: int, batch: int) -> Callable[[int, int], None]:
        index = len(measured)  # one method per pass: the next one

        def report(done: int, total: int) -> None:
            if cancelled():
                raise Cancelled
            say(
                f"{index + 1}/{len(parsed)} {methods[index]}: measuring batch {done}/{total} "
                f"({windows:,} windows)"
            )

        return report

    original = source.original_row()
    say(f"1/{len(parsed)} {methods[0]}: encoding…")
    for row in sweep(plan, original, progress):
        row_done(row)
        if row is original:
            continue
        measured.append(row)
        if cancelled():
            raise Cancelled
        if len(measured) < len(parsed):
            say(f"{len(measured) + 1}/{len(parsed)} {methods[len(measured)]}: encoding…")
    summary = {
        "source": source.as_dict(),
        "data": heldout.describe(),
        "rows": [row.as_dict() for row in measured],
    }
    (loaded.out_root / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return (
        f"done: {len(measured)} methods · ↑/↓ + g opens a row in Generate · original "
        f"{original.bits_per_byte:.4f} bits/byte on {heldout.describe()} · * Pareto front"
    )
