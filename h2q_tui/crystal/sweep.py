"""The sweep: crystallize a loaded checkpoint by each method and measure it, one row at a time.

:func:`sweep` is the one loop that the ``crystallize`` command and the Crystal pane both
drive. Per method it encodes the source's weights
(:func:`h2q_tui.codecs.layout.encode_state_dict`), writes ``OUT/<slug>/``
(:func:`h2q_tui.crystal.folders.write_crystal`), loads it back the way every command does
(:func:`h2q_tui.checkpoints.load_checkpoint`, decoding at load) and measures it against the
source on the same held-out windows (:func:`h2q_tui.crystal.measure.compare_many`, ``group``
models per pass). It yields the original's row first, then each method's row as soon as it is
measured; :func:`mark_pareto` marks the Pareto front on (bytes, Δ bits/byte).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors import safe_open

from h2q_tui import checkpoints
from h2q_tui.codecs import stored
from h2q_tui.codecs.layout import encode_state_dict
from h2q_tui.codecs.method import Step, method_name
from h2q_tui.codecs.policy import tied_names
from h2q_tui.codecs.tensor import stored_bytes
from h2q_tui.crystal import measure
from h2q_tui.crystal.folders import folder_bytes, slug, source_folder, write_crystal
from h2q_tui.crystal.methods import method_error
from h2q_tui.errors import UserError
from h2q_tui.models import count_parameters

MEASURE_MEMORY_SHARE = 0.25  # of available memory, for the crystallized models measured at once

# (label, windows, windows per batch) → the progress(done, total) callback of one pass, or None
ProgressFactory = Callable[[str, int, int], "measure.Progress | None"]


@dataclass
class Row:
    """One table row (the original's row has no comparison)."""

    method: str
    path: str
    bytes: int
    files: dict[str, int]
    ratio: float
    bits_per_weight: float
    bits_per_byte: float
    seconds: float
    comparison: dict[str, Any] | None = None  # measure.Comparison.as_dict()
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    load_seconds: float = 0.0
    eval_seconds: float = 0.0
    pareto: bool = False
    notes: list[str] = field(default_factory=list)
    tensors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def delta(self) -> float:
        return self.comparison["delta_bits_per_byte"] if self.comparison else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "comparison"}
        measured = {k: v for k, v in (self.comparison or {}).items() if k != "seconds"}
        return {**data, **measured}  # seconds: the row's total (eval_seconds: its evaluation)


def mark_pareto(rows: list[Row]) -> None:
    """Set ``pareto`` on the crystallized rows no other row dominates (bytes and Δ, the original
    included: Δ = 0 at its size)."""
    for row in rows:
        row.pareto = row.comparison is not None and not any(
            other is not row
            and other.bytes <= row.bytes
            and other.delta <= row.delta
            and (other.bytes < row.bytes or other.delta < row.delta)
            for other in rows
        )


def unique_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict without the aliases of tied tensors."""
    aliases = tied_names(state_dict)
    return {name: t for name, t in state_dict.items() if name not in aliases}


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict on the CPU, tied tensors (GPT's head = embedding) still one object."""
    state_dict = model.state_dict()
    aliases = tied_names(state_dict)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        out[name] = out[aliases[name]] if name in aliases else tensor.detach().cpu()
    return out


@dataclass
class Source:
    """A loaded (not crystallized) checkpoint: its model, and what every crystallized folder
    records about it, read once."""

    info: Any  # h2q_tui.checkpoints.CheckpointInfo
    model: torch.nn.Module  # in eval mode, on the device it was loaded to
    state_dict: dict[str, torch.Tensor]  # on the CPU
    folder: Path
    bytes: int  # the checkpoint's model files on disk
    files: dict[str, int]
    weights: int  # distinct weights (tied tensors counted once)
    parameters: int
    metadata: dict[str, str]  # the source file's safetensors metadata
    tokenizer: Path | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.folder),
            "run_id": self.info.run_id,
            "step": self.info.step,
            "family": self.info.config.model.family,
            "bytes": self.bytes,
            "files": self.files,
            "weights": self.weights,
            "parameters": self.parameters,
        }

    def heldout(self, data: str | None, windows: int) -> measure.HeldOut:
        """The held-out windows of ``data`` (None: the embedded corpus's tail) for this model."""
        context = self.info.config.model.context
        return measure.load_heldout(data, context, checkpoints.tokenizer_of(self.info), windows)

    def original_row(self, load_seconds: float = 0.0) -> Row:
        """Its row before measuring (bits/byte and evaluation time come with the first pass)."""
        unique = stored_bytes(unique_tensors(self.state_dict))
        return Row(
            method="original",
            path=str(self.folder),
            bytes=self.bytes,
            files=self.files,
            ratio=1.0,
            bits_per_weight=8 * unique / max(1, self.weights),
            bits_per_byte=0.0,
            seconds=load_seconds,
        )


def refuse_crystallized(info: Any) -> None:
    """A one-line UserError when the checkpoint is itself crystallized: crystallize its source."""
    if info.crystal is not None:
        raise UserError(
            f"checkpoint {info.weights} is already crystallized ({info.crystal.method}); "
            f"crystallize its source {info.crystal.source or 'checkpoint'} instead"
        )


def load_source(info: Any, device: torch.device | str = "cpu") -> Source:
    """The :class:`Source` of a checkpoint's info (not a crystallized one): its model loaded."""
    return source_of(info, checkpoints.load_checkpoint(info, device=device).model)


def source_of(info: Any, model: torch.nn.Module) -> Source:
    """The :class:`Source` of a checkpoint's info and its model, already loaded."""
    model = model.eval()
    state_dict = cpu_state_dict(model)
    folder = source_folder(info.weights)
    with safe_open(str(info.weights), framework="pt") as handle:  # the header only
        metadata = handle.metadata() or {}
    tokenizer = folder / stored.TOKENIZER
    return Source(
        info=info,
        model=model,
        state_dict=state_dict,
        folder=folder,
        bytes=stored.model_files_bytes(folder),
        files={
            n: (folder / n).stat().st_size for n in stored.MODEL_FILES if (folder / n).is_file()
        },
        weights=sum(t.numel() for t in unique_tensors(state_dict).values()),
        parameters=count_parameters(model),
        metadata=metadata,
        tokenizer=tokenizer if tokenizer.is_file() else None,
    )


def crystallize_method(
    steps: tuple[Step, ...],
    source: Source,
    keep: Sequence[str],
    out_root: Path,
    device: torch.device | str,
    importance: dict[str, torch.Tensor] | None = None,
) -> tuple[Row, torch.nn.Module]:
    """Encode, write, load back (decoding) one method: its row (without the comparison) and
    the loaded model. ``importance``: the calibration a ``cal`` method rounds by."""
    name = method_name(steps)
    started = time.perf_counter()
    try:
        crystal = encode_state_dict(source.state_dict, steps, keep, True, importance)
    except ValueError as exc:
        raise method_error(name, exc) from None
    encoded = time.perf_counter()
    folder = write_crystal(
        out_root, slug(name), crystal, source.metadata, source.as_dict(), source.tokenizer
    )
    written = time.perf_counter()
    model = checkpoints.load_checkpoint(folder, device=device).model
    loaded = time.perf_counter()
    files = folder_bytes(folder)
    total = sum(files.values())
    notes = list(crystal.notes)
    if total >= source.bytes:
        notes.append(f"{name} saves no bytes on disk: {total:,} bytes against {source.bytes:,}")
    row = Row(
        method=name,
        path=str(folder),
        bytes=total,
        files=files,
        ratio=source.bytes / total,
        bits_per_weight=8 * crystal.bytes_after / max(1, source.weights),
        bits_per_byte=0.0,
        seconds=loaded - started,
        encode_seconds=encoded - started,
        write_seconds=written - encoded,
        load_seconds=loaded - written,
        notes=notes,
        tensors=[row.__dict__ for row in crystal.rows],
    )
    return row, model


def group_size(model: torch.nn.Module, device: torch.device | str) -> int:
    """How many crystallized models to measure in one pass (their fp32 weights ≤ a share of
    the memory available)."""
    device = torch.device(device)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) or 1
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = psutil.virtual_memory().available
    return max(1, min(32, int(free * MEASURE_MEMORY_SHARE // size)))


@dataclass
class Plan:
    """What one sweep does: these methods on this source, measured on these windows."""

    source: Source
    methods: Sequence[tuple[Step, ...]]
    heldout: measure.HeldOut
    out_root: Path
    keep: Sequence[str] = ()
    device: torch.device | str = "cpu"
    batch: int = 32  # windows per forward pass
    group: int = 1  # crystallized models measured per pass over the windows
    importance: dict[str, torch.Tensor] | None = None  # for cal methods (crystal.calibrate)
    calibration: Any = None  # the crystal.calibrate.Calibration it came from


def sweep(
    plan: Plan,
    original: Row,
    progress: ProgressFactory | None = None,
    written: Callable[[Row], None] | None = None,
) -> Iterator[Row]:
    """``original`` (completed by the first pass: bits/byte, evaluation time), then each
    method's row, in order, as soon as its group is measured.

    ``progress`` makes each pass's ``progress(done, total)`` (it may raise to stop the sweep);
    ``written(row)`` hears of each folder once it is written and loaded back.
    """
    group = max(1, plan.group)
    for first in range(0, len(plan.methods), group):
        rows, models = [], []
        for steps in plan.methods[first : first + group]:
            row, model = crystallize_method(
                steps, plan.source, plan.keep, plan.out_root, plan.device, plan.importance
            )
            rows.append(row)
            models.append(model)
            if written is not None:
                written(row)
        names = ", ".join(row.method for row in rows)
        label = f"measuring {names}" if len(names) <= 40 else f"measuring {len(rows)} methods"
        callback = progress(label, plan.heldout.windows, plan.batch) if progress else None
        score, comparisons = measure.compare_many(
            plan.source.model, models, plan.heldout, plan.device, plan.batch, progress=callback
        )
        del models, model
        if first == 0:
            original.bits_per_byte = score.bits_per_byte
            original.seconds += score.seconds
            original.eval_seconds = score.seconds
            yield original
        for row, comparison in zip(rows, comparisons, strict=True):
            row.comparison = comparison.as_dict()
            row.bits_per_byte = comparison.bits_per_byte
            row.eval_seconds = comparison.seconds
            row.seconds += comparison.seconds
            yield row
