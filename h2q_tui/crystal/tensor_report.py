"""``h2q-tui crystallize FILE --tensors-only``: any safetensors file, no model needed.

Reads every tensor of the file (ours, or e.g. a Hugging Face ``model.safetensors``), encodes
it by each method under the default policy (:mod:`h2q_tui.codecs.policy`: names decide what
is an embedding, a head, a bank; ``--keep`` exempts tensors) and reports, per method and per
tensor: the steps applied, the data bytes before and after, and the relative reconstruction
error ‖W − Ŵ‖_F/‖W‖_F of the decoded tensor (per layer's W for a HamLinear rank truncation).
Bytes here are tensor data (what the file stores for each tensor, without the header), and
the totals also give the data bytes of the whole file before and after. Nothing is written
but the JSON (``--json PATH``, default ``<file stem>.tensors.json`` in the current folder).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open

from h2q_tui.codecs.layout import encode_state_dict, is_crystallized
from h2q_tui.codecs.method import calibrated, method_name
from h2q_tui.crystal.crystallize import Request, batched_threads, format_rows
from h2q_tui.crystal.folders import write_json
from h2q_tui.crystal.methods import method_error, resolve_methods
from h2q_tui.errors import UserError
from h2q_tui.system import hardware

COLUMNS = (
    "tensor",
    "shape",
    "dtype",
    "steps",
    "bytes before",
    "bytes after",
    "ratio",
    "rel. error",
)


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """(tensors, metadata, the file) of a safetensors file or a folder holding model.safetensors."""
    if not path.exists():
        raise UserError(f"safetensors file not found: {path}")
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path} is a folder without a model.safetensors")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{file} is not a readable safetensors file ({first})") from None
    if is_crystallized(metadata):
        raise UserError(
            f"{file} is already crystallized ({metadata.get('h2q.crystal.method', '?')}); "
            "report on its source instead"
        )
    if not any(t.is_floating_point() and t.numel() for t in tensors.values()):
        raise UserError(f"{file} holds no floating-point tensors to crystallize")
    return tensors, metadata, file


def _error(value: float | None) -> str:
    if value is None:
        return "—"
    return "inf" if math.isinf(value) else f"{value:.2e}"


def run(
    request: Request, out: Callable[[str], None] = print, err: IO[str] | None = None
) -> dict[str, Any]:
    """Per-tensor table per method, and the JSON document (also returned); torch on the
    thread count the command measures on."""
    with batched_threads():
        return _run(request, out, err if err is not None else sys.stderr)


def _run(request: Request, out: Callable[[str], None], err: IO[str]) -> dict[str, Any]:
    started = time.perf_counter()
    if request.calibrate:
        raise UserError("--calibrate needs a checkpoint's model to run; --tensors-only has none")
    tensors, _, file = read_tensors(Path(request.checkpoint))
    methods, skipped = resolve_methods(request.method, tensors, request.keep)
    if any(calibrated(steps) for steps in methods):
        raise UserError("--tensors-only has no model to calibrate on: drop +cal from --method")
    for line in skipped:
        print(f"note: {line}", file=err)
    file_bytes = file.stat().st_size
    out(f"file {file} | {len(tensors)} tensors | {file_bytes:,} bytes on disk")
    reports = []
    for steps in methods:
        name = method_name(steps)
        began = time.perf_counter()
        try:
            crystal = encode_state_dict(tensors, steps, request.keep, measure=True)
        except ValueError as exc:
            raise method_error(name, exc) from None
        seconds = time.perf_counter() - began
        before, after = crystal.bytes_before, crystal.bytes_after
        errors = [r.relative_error for r in crystal.rows if r.relative_error is not None]
        cells = [
            [
                row.name,
                "×".join(str(n) for n in row.shape),
                row.dtype,
                row.steps or "as is",
                f"{row.bytes_before:,}",
                f"{row.bytes_after:,}",
                f"{row.bytes_before / row.bytes_after:.2f}×" if row.bytes_after else "—",
                _error(row.relative_error),
            ]
            for row in crystal.rows
        ]
        cells.append(
            [
                "total",
                "",
                "",
                name,
                f"{before:,}",
                f"{after:,}",
                f"{before / after:.2f}×" if after else "—",
                f"max {_error(max(errors))}" if errors else "—",
            ]
        )
        out("")
        out(
            f"{name}: {before:,} → {after:,} data bytes ({before / max(1, after):.2f}×), {seconds:.1f} s"
        )
        out(format_rows(COLUMNS, cells, left=4))
        for note in crystal.notes:
            print(f"note: {note}", file=err)
        reports.append(
            {
                "method": name,
                "bytes_before": before,
                "bytes_after": after,
                "ratio": before / after if after else None,
                "max_relative_error": max(errors) if errors else None,
                "seconds": seconds,
                "notes": crystal.notes,
                "tensors": [row.__dict__ for row in crystal.rows],
            }
        )
    document = {
        "command": "crystallize --tensors-only",
        "source": {"file": str(file), "bytes": file_bytes, "tensors": len(tensors)},
        "machine": hardware.machine_info(),
        "keep": list(request.keep),
        "skipped": skipped,
        "methods": reports,
        "seconds": time.perf_counter() - started,
    }
    path = Path(request.json) if request.json else Path(f"{file.stem}.tensors.json")
    write_json(path, document)
    print(f"wrote {path}", file=err)
    return document
