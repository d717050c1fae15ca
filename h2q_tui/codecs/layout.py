"""The crystallized layout: a whole state_dict encoded by a method into one safetensors-ready
set of tensors and metadata, and decoded back.

The layout is one JSON document in the safetensors metadata under :data:`LAYOUT_KEY`; an
untouched tensor is stored under its own name, an encoded one as ``name::part``
(``head.weight::q``, ``c_fc.weight::u::scale``). Which tensors a method touches is
:mod:`h2q_tui.codecs.policy`'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from h2q_tui.codecs import packed
from h2q_tui.codecs.kronecker import VARIANTS, ham_groups, rearranged, truncate_state_dict
from h2q_tui.codecs.method import (
    PART_SEPARATOR,
    Step,
    calibrated,
    decode_chain,
    encode_chain,
    method_name,
)
from h2q_tui.codecs.policy import as_steps, kept, plan, split_steps, step_applies, tied_names
from h2q_tui.codecs.tensor import CrystalFormatError, dtype_name, relative_error, stored_bytes

LAYOUT_KEY = "h2q.crystal"
METHOD_KEY = "h2q.crystal.method"
FORMAT = "h2q-crystal"
VERSION = 1


@dataclass
class Row:
    """One row of the per-tensor report (kind: tensor, hamlinear (a layer's W) or bank)."""

    name: str
    kind: str
    steps: str  # "" when stored as is
    shape: list[int]
    dtype: str
    bytes_before: int
    bytes_after: int
    relative_error: float | None  # ‖W − Ŵ‖_F/‖W‖_F; None when not measured


@dataclass
class Crystal:
    """What :func:`encode_state_dict` produces: tensors and metadata for one safetensors file."""

    method: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]  # str → str, safetensors-ready: LAYOUT_KEY and METHOD_KEY
    layout: dict[str, Any]
    overrides: dict[str, Any]  # ModelConfig fields (rank, shared_bank) + rank_growths, for rank
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each, for the caller to print
    saves_no_bytes: list[str] = field(default_factory=list)  # svd settings that save nothing

    @property
    def bytes_after(self) -> int:
        return stored_bytes(self.tensors)

    @property
    def bytes_before(self) -> int:
        return sum(row.bytes_before for row in self.rows)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def encode_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    method: str | Iterable[Step],
    keep: Iterable[str] = (),
    measure: bool = True,
    importance: Mapping[str, torch.Tensor] | None = None,
) -> Crystal:
    """Crystallize a state_dict by ``method`` (a string or parsed steps) and the default policy.

    ``measure``: decode every encoded tensor again and report ‖W − Ŵ‖_F/‖W‖_F per tensor (per
    layer's W for rank). One-line ValueError for a method that does not apply, K out of range,
    a tensor name containing '::', or values a codec refuses (non-finite, beyond fp16).
    ``importance`` (tensor name → one per input column): a ``cal`` method's int steps round
    weighted by it where a tensor has one (:mod:`h2q_tui.codecs.calibrated`).
    """
    steps, keep = as_steps(method), tuple(keep)
    text = method_name(steps)
    bad = next((name for name in state_dict if PART_SEPARATOR in name), None)
    if bad is not None:
        raise ValueError(
            f"tensor name {bad!r} contains {PART_SEPARATOR!r}, which the layout reserves"
        )
    aliases = tied_names(state_dict)
    source = {name: t for name, t in state_dict.items() if name not in aliases}
    the_plan = plan(source, steps, keep)
    structural, numeric = split_steps(steps)
    weights = dict(importance or {}) if calibrated(steps) else {}
    records: dict[str, Any] = {}
    layout: dict[str, Any] = {"format": FORMAT, "version": VERSION, "method": text}
    crystal = Crystal(text, {}, {}, layout, {})
    handled: set[str] = set()
    if structural is not None and structural.name in VARIANTS:
        handled = _encode_rank(source, structural, numeric, keep, measure, crystal, records)
    for name, tensor in source.items():
        if name in handled:
            continue
        steps_for = the_plan[name] or ()
        error, after, _ = _encode_one(
            name, tensor, steps_for, crystal.tensors, records, measure, weights.get(name)
        )
        crystal.rows.append(
            Row(
                name,
                "tensor",
                method_name(steps_for),
                list(tensor.shape),
                dtype_name(tensor.dtype),
                _nbytes(tensor),
                after,
                error,
            )
        )
        meta = records[name]
        if meta and meta.get("codec") == "svd" and not meta.get("saves_bytes", True):
            crystal.saves_no_bytes.append(name)
    if crystal.saves_no_bytes:
        first = records[crystal.saves_no_bytes[0]]
        crystal.notes.append(
            f"{text} saves no bytes on {len(crystal.saves_no_bytes)} matrix(es), "
            f"e.g. {crystal.saves_no_bytes[0]}: {first.get('note', '')}"
        )
    layout["tensors"] = records
    layout["aliases"] = aliases
    layout["overrides"] = crystal.overrides
    crystal.metadata.update(
        {LAYOUT_KEY: json.dumps(layout, separators=(",", ":")), METHOD_KEY: text}
    )
    return crystal


def _encode_one(
    name, tensor, steps, out, records, measure, importance=None
) -> tuple[float | None, int, torch.Tensor]:
    """Store one tensor (as is, or by ``steps``) into ``out``/``records``.

    Returns (relative error or None, bytes stored, the decoded tensor — ``tensor`` itself when
    stored as is or not measured).
    """
    if not steps:
        out[name] = tensor.detach().contiguous()
        records[name] = None
        return (0.0 if measure else None), _nbytes(tensor), tensor
    stored, meta = encode_chain(tensor, steps, importance)
    for part, value in stored.items():
        out[f"{name}{PART_SEPARATOR}{part}"] = value
    records[name] = meta
    decoded = decode_chain(stored, meta) if measure else tensor
    return (relative_error(tensor, decoded) if measure else None), stored_bytes(stored), decoded


def _encode_rank(source, structural, numeric, keep, measure, crystal, records) -> set[str]:
    """rank:K / rank-shared:K on the HamLinear groups, then the numeric step on the factors.

    Returns the source names it replaced (and the new names it stored).
    """
    truncation = truncate_state_dict(source, int(structural.value), VARIANTS[structural.name])
    crystal.overrides.update(truncation.overrides)
    shared = structural.name == "rank-shared"
    decoded: dict[str, torch.Tensor] = {}
    stored: dict[str, int] = {}
    for name in truncation.outputs:
        tensor = truncation.state_dict[name]
        use = numeric is not None and not kept(name, keep) and step_applies(numeric, name, tensor)
        steps_for = (numeric,) if use else ()
        _, stored[name], decoded[name] = _encode_one(
            name, tensor, steps_for, crystal.tensors, records, measure
        )
    method = f"{structural}" + (f"+{numeric}" if numeric else "")
    for group in ham_groups(source):
        bank = torch.cat([source[k] for k in group.bank_keys])
        new_bank = f"{group.prefix}bank.A"
        crystal.rows.append(
            Row(
                f"{group.prefix}bank",
                "bank",
                method if shared else str(structural),
                list(bank.shape),
                dtype_name(bank.dtype),
                sum(_nbytes(source[k]) for k in group.bank_keys),
                stored[new_bank] if shared else 0,
                None,
            )
        )
        for layer in group.layers:
            factors = torch.cat([source[k] for k in layer.factor_keys])
            names = [f"{layer.prefix}B"] + ([] if shared else [f"{layer.prefix}bank.A"])
            error = None
            if measure:
                original = rearranged(bank, factors)  # ‖W − Ŵ‖/‖W‖ = ‖C − Ĉ‖/‖C‖ (kronecker.py)
                approx = rearranged(decoded[new_bank if shared else names[1]], decoded[names[0]])
                error = float((original - approx).norm() / original.norm().clamp_min(1e-300))
            crystal.rows.append(
                Row(
                    layer.name,
                    "hamlinear",
                    method,
                    list(factors.shape),
                    dtype_name(factors.dtype),
                    sum(_nbytes(source[k]) for k in layer.factor_keys),
                    sum(stored[n] for n in names),
                    error,
                )
            )
    crystal.layout["rank"] = {
        "k": int(structural.value),
        "variant": VARIANTS[structural.name],
        "kept": truncation.kept if shared else {},
        "layers": truncation.layers,
    }
    return set(truncation.removed) | set(truncation.outputs)


def is_crystallized(metadata: Mapping[str, str] | None) -> bool:
    return bool(metadata) and LAYOUT_KEY in metadata  # type: ignore[operator]


def read_layout(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """The layout document of a crystallized file's metadata (CrystalFormatError otherwise)."""
    if not is_crystallized(metadata):
        raise CrystalFormatError(f"not a crystallized file: no {LAYOUT_KEY!r} in its metadata")
    try:
        layout = json.loads(metadata[LAYOUT_KEY])  # type: ignore[index]
    except (TypeError, ValueError):
        raise CrystalFormatError(f"the {LAYOUT_KEY!r} metadata is not valid JSON") from None
    if not isinstance(layout, dict) or layout.get("format") != FORMAT:
        raise CrystalFormatError(f"the {LAYOUT_KEY!r} metadata is not an {FORMAT} layout")
    if layout.get("version") != VERSION:
        raise CrystalFormatError(
            f"{FORMAT} layout version {layout.get('version')!r}; this version reads {VERSION}"
        )
    if not isinstance(layout.get("tensors"), dict) or not isinstance(
        layout.get("aliases", {}), dict
    ):
        raise CrystalFormatError(f"the {FORMAT} layout lacks its tensor table")
    return layout


def decode_state_dict(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], pack: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state_dict, overrides) from a crystallized file's tensors and metadata.

    The state_dict is float, in the original dtypes and shapes (for rank, the truncated
    model's: build it with ``overrides``); with ``pack``, a matrix stored by one integer
    codec the kernels take is a :class:`~h2q_tui.codecs.packed.PackedWeight` instead. Tied
    names get the same object. Raises CrystalFormatError (a ValueError) with one line for a
    corrupt or foreign layout.
    """
    layout = read_layout(metadata)
    records: dict[str, Any] = layout["tensors"]
    groups: dict[str, dict[str, torch.Tensor]] = {name: {} for name in records}
    for key, value in tensors.items():
        name, sep, part = key.partition(PART_SEPARATOR)
        if name not in groups or (records[name] is None) == bool(sep):
            raise CrystalFormatError(f"stored tensor {key!r} is not in the crystallized layout")
        groups[name][part if sep else ""] = value
    state_dict: dict[str, torch.Tensor] = {}
    for name, record in records.items():
        if record is None:
            if "" not in groups[name]:
                raise CrystalFormatError(f"tensor {name!r} named in the layout is missing")
            state_dict[name] = groups[name][""]
        else:
            if not isinstance(record, dict):
                raise CrystalFormatError(f"bad layout record for {name!r}")
            if pack and packed.packable(record):
                state_dict[name] = packed.from_stored(groups[name], record)
            else:
                state_dict[name] = decode_chain(groups[name], record)
    for alias, canonical in layout.get("aliases", {}).items():
        if canonical not in state_dict:
            raise CrystalFormatError(f"tied tensor {alias!r} refers to missing {canonical!r}")
        state_dict[alias] = state_dict[canonical]
    overrides = layout.get("overrides", {})
    return state_dict, dict(overrides) if isinstance(overrides, dict) else {}
