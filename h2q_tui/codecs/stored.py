"""Crystallized checkpoint folders on disk: what they hold, how they are read and decoded.

A crystallized folder (written by ``h2q-tui crystallize``, :mod:`h2q_tui.crystal.crystallize`)
holds ``model.safetensors`` and, when the source had one, a copy of its ``tokenizer.json``; no
``state.pt`` (it cannot be resumed). The safetensors metadata carries:

- the source's own entries ``format``, ``format_version``, ``step``, ``run_id``, ``config``
  (the *source* model's config) and ``rank_growths``, so every reader of checkpoints
  recognises the file;
- ``checksums``: per-tensor CRC-32s of the **stored** tensors (``head.weight::q``, …), so the
  usual soundness check (``checkpoint_problem``) covers the file as it is;
- :data:`~h2q_tui.codecs.layout.LAYOUT_KEY` / ``METHOD_KEY``: the layout document of
  :mod:`h2q_tui.codecs.layout` (which codec stored which tensor, and the model-config
  overrides of a rank truncation);
- :data:`SOURCE_KEY`: JSON naming the source checkpoint, its step and run, and the bytes of its
  model files (``model.safetensors`` + ``tokenizer.json``) when it was crystallized, so a reader
  can say "int8 of run X step N, 3.8× smaller" without the source at hand.

Loading reads every stored tensor onto the target device (:func:`decode_file`). On the CPU
a matrix stored by one integer codec stays as its integers and the model multiplies by them
(:mod:`h2q_tui.codecs.packed`); everything else, and everything when asked to (``--dequantize``)
or off the CPU, is turned back into the float tensor the model expects. Then the tensors load
strictly into a model built from the source config with the layout's overrides (``rank``,
``shared_bank``, ``rank_growths`` = 0 after ``rank:K``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from h2q_tui.codecs.layout import METHOD_KEY, decode_state_dict, is_crystallized, read_layout
from h2q_tui.codecs.tensor import CrystalFormatError

SOURCE_KEY = "h2q.crystal.source"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
MODEL_FILES = (WEIGHTS, TOKENIZER)  # the files a model load reads (state.pt is for resuming)
OVERRIDE_FIELDS = ("rank", "shared_bank")  # ModelConfig fields a layout may override


def model_files_bytes(folder: Path) -> int:
    """Bytes on disk (os.stat) of a checkpoint folder's model files: weights + tokenizer."""
    return sum((folder / name).stat().st_size for name in MODEL_FILES if (folder / name).is_file())


@dataclass(frozen=True)
class CrystalOrigin:
    """What a crystallized file is: its method, its source, and its size against the source's."""

    method: str
    run_id: str
    step: int
    source: str  # the source checkpoint folder, as recorded when crystallized
    source_bytes: int  # the source's model files then (model.safetensors + tokenizer.json)
    bytes: int  # this folder's model files now
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.source_bytes / self.bytes if self.bytes else 0.0

    def describe(self) -> str:
        """``int8 of run 20250101-120000 step 1000, 3.8× smaller``."""
        run = f"run {self.run_id}" if self.run_id else f"checkpoint {self.source}"
        if not self.ratio:
            size = "size of its source unknown"
        elif self.ratio >= 1:
            size = f"{self.ratio:.1f}× smaller"
        else:
            size = f"{1 / self.ratio:.1f}× larger"
        return f"{self.method} of {run} step {self.step}, {size}"


def origin(metadata: Mapping[str, str], weights: Path, step: int, run_id: str) -> CrystalOrigin:
    """The :class:`CrystalOrigin` of a crystallized file's metadata (CrystalFormatError if bad)."""
    layout = read_layout(metadata)
    try:
        source = json.loads(metadata.get(SOURCE_KEY, "{}"))
    except (TypeError, ValueError):
        raise CrystalFormatError(f"the {SOURCE_KEY!r} metadata is not valid JSON") from None
    if not isinstance(source, dict):
        raise CrystalFormatError(f"the {SOURCE_KEY!r} metadata is not a table")
    overrides = layout.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise CrystalFormatError("the crystallized layout's overrides are not a table")
    rank = overrides.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise CrystalFormatError(f"the crystallized layout overrides rank with {rank!r}")
    if not isinstance(overrides.get("shared_bank", True), bool):
        raise CrystalFormatError("the crystallized layout's shared_bank override is not a boolean")
    source_bytes = source.get("bytes", 0)
    return CrystalOrigin(
        method=str(metadata.get(METHOD_KEY) or layout.get("method", "?")),
        run_id=run_id,
        step=step,
        source=str(source.get("checkpoint", "")),
        source_bytes=source_bytes if isinstance(source_bytes, int) else 0,
        bytes=model_files_bytes(weights.parent),
        overrides=dict(overrides),
    )


def config_overrides(crystal: CrystalOrigin) -> dict[str, Any]:
    """The ModelConfig fields a crystallized layout changes (rank truncation: rank, shared_bank)."""
    return {key: crystal.overrides[key] for key in OVERRIDE_FIELDS if key in crystal.overrides}


def decode_file(
    weights: Path,
    device: torch.device | str = "cpu",
    pack: bool = False,
    tensors: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read a crystallized safetensors file onto ``device`` and decode it: (state_dict,
    overrides, the layout's tensor records).

    ``pack``: matrices stored by one integer codec stay integers
    (:class:`~h2q_tui.codecs.packed.PackedWeight`, see :func:`decode_state_dict`).
    ``tensors``: the file's tensors already read (memory-mapped, on the CPU) by the caller,
    which then only the header is read for. Raises
    CrystalFormatError (a ValueError) for a layout that does not match its tensors, and
    whatever safetensors raises for an unreadable file.
    """
    with safe_open(str(weights), framework="pt", device=str(device)) as handle:
        metadata = handle.metadata() or {}
        if not is_crystallized(metadata):
            raise CrystalFormatError(f"{weights} is not a crystallized file")
        if tensors is None:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    state_dict, overrides = decode_state_dict(tensors, metadata, pack)
    return state_dict, overrides, read_layout(metadata)["tensors"]
