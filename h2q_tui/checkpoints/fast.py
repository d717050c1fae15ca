"""The fast way to fill a model from a plain checkpoint: built without random init, the
memory-mapped safetensors tensors assigned as its weights without a copy.

Why not the meta device: on torch's meta device elementwise ops (``randn(...) * 0.02`` in
a builder) run Python reference kernels whose first call imports torch._dynamo, 1.1-1.9 s
in a fresh process on a 2-core EPYC, more than the whole load. Unfilled CPU storage costs
next to nothing (untouched pages are never faulted in) and buffers and plain tensors that a
builder computes (``energy``, tables from ``arange``) come out right without any fix-up.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from h2q_tui.checkpoints.layout import CheckpointInfo
from h2q_tui.checkpoints.load import check_memory, refuse_wrong_dtypes
from h2q_tui.errors import UserError
from h2q_tui.models import build_model
from h2q_tui.units import first_sentence


class _SkipInitialisers(torch.overrides.TorchFunctionMode):
    """Within the block, initialisers (``nn.init.normal_``, ``Tensor.uniform_``, ...) do
    nothing: for a model whose every parameter is replaced by a checkpoint's right after.

    A torch function mode is thread-local: a trainer on another thread is unaffected.
    """

    TENSOR_FILLS = ("normal_", "uniform_", "random_", "bernoulli_", "exponential_")
    INIT_FILLS = (
        "normal_",
        "uniform_",
        "trunc_normal_",
        "constant_",
        "zeros_",
        "ones_",
        "eye_",
        "dirac_",
        "orthogonal_",
        "sparse_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
    )
    FILLS = frozenset(
        [getattr(torch.Tensor, name) for name in TENSOR_FILLS]
        + [getattr(nn.init, name) for name in INIT_FILLS if hasattr(nn.init, name)]
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FILLS:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor):
                return target
        return func(*args, **kwargs)


def build_unfilled(info: CheckpointInfo) -> nn.Module | None:
    """The checkpoint's model (with any grown rank) on the CPU, its parameters unfilled.

    Their values are whatever the allocator left (often NaN after a builder's rescaling):
    only for :func:`assign_weights` to replace. Refuses, like :func:`build_model_of`, a
    model too large for this machine's memory. Returns None when the model cannot be built
    this way (a builder that fails without its random init): the caller then takes the
    normal path.
    """
    check_memory(info)
    try:
        with torch.no_grad(), _SkipInitialisers():
            model = build_model(info.config.model)
            for _ in range(info.rank_growths):
                model.grow_ffn_rank()
    except Exception:  # noqa: BLE001 - any failure here only means "use the normal path"
        return None
    return model


def read_tensors(
    info: CheckpointInfo, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file (plain or crystallized), memory-mapped (:func:`map_tensors`).

    ``device``: where the tensors are put (default the CPU). Raises a one-line UserError for
    a damaged file.
    """
    try:
        tensors = map_tensors(info.weights)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {info.weights} is corrupt or truncated ({first_sentence(exc)})"
        ) from None
    target = torch.device(device or "cpu")
    if target.type != "cpu":
        tensors = {name: tensor.to(target) for name, tensor in tensors.items()}
    return tensors


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
HEADER_LIMIT = 100_000_000  # bytes of JSON header, safetensors' own limit


def map_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file on the CPU, as safetensors' ``load_file`` gives
    them (each over a private, copy-on-write memory map of the file, with a storage of its
    own) at a fraction of its cost a tensor, which a crystallized file's 70-90 small
    tensors feel at every load (``h2q-tui hotstart``'s read phase).

    A header this reader does not take as sound (a dtype it does not know, offsets out of
    bounds or overlapping, a size that does not match a shape) is handed to ``load_file``,
    so a damaged or hostile file is refused in safetensors' own words.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= 8:
            return load_file(str(path))
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    length = int.from_bytes(mapped[:8], "little")
    if length > min(size - 8, HEADER_LIMIT):
        return load_file(str(path))
    try:
        header = json.loads(mapped[8 : 8 + length])
    except (ValueError, UnicodeDecodeError):
        return load_file(str(path))
    if not isinstance(header, dict):
        return load_file(str(path))
    base, tensors, spans = 8 + length, {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        layout = _layout(entry, size - base)
        if layout is None:
            return load_file(str(path))
        dtype, shape, (start, stop) = layout
        spans.append((start, stop))
        tensors[name] = _view(mapped, base + start, stop - start, dtype, shape)
    spans.sort()
    if any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)):
        return load_file(str(path))
    return tensors


def _layout(
    entry: object, data_bytes: int
) -> tuple[torch.dtype, list[int], tuple[int, int]] | None:
    """(dtype, shape, byte span in the data) of one header entry, or None when unsound."""
    if not isinstance(entry, dict):
        return None
    dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if dtype is None or not isinstance(shape, list) or not isinstance(offsets, list):
        return None
    numbers = [*shape, *offsets]
    if len(offsets) != 2 or any(type(n) is not int or n < 0 for n in numbers):
        return None
    start, stop = offsets
    if not start <= stop <= data_bytes or stop - start != math.prod(shape) * dtype.itemsize:
        return None
    return dtype, shape, (start, stop)


def _view(mapped: mmap.mmap, offset: int, nbytes: int, dtype: torch.dtype, shape: list[int]):
    """The tensor at ``offset`` of the map (a copy where it is not aligned to its dtype)."""
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    if offset % dtype.itemsize:
        raw = torch.frombuffer(mapped, dtype=torch.uint8, count=nbytes, offset=offset)
        return raw.clone().view(dtype).view(shape)
    count = nbytes // dtype.itemsize
    return torch.frombuffer(mapped, dtype=dtype, count=count, offset=offset).view(shape)


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one tensor (tied weights, a shared bank), in state-dict order."""
    groups: dict[int, list[str]] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(the module holding the dotted ``name``, its attribute name there)."""
    owner_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(owner_name) if owner_name else model), leaf


def assign_weights(
    info: CheckpointInfo,
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    device: torch.device | str | None = None,
) -> None:
    """Make ``tensors`` the parameters and buffers of ``model`` in place, without a copy.

    Strict like :func:`load_weights` (same names, same shapes; a one-line UserError
    otherwise), so every parameter of a :func:`build_unfilled` model is replaced. A tensor
    stored once for several tied names (the GPT head and token embedding) serves them all
    and they are tied again afterwards, so they stay one parameter. A tensor of another
    dtype than the model's is converted (a copy); one on another device than ``device``
    is moved there.
    """
    expected = model.state_dict(keep_vars=True)
    groups = _alias_groups(model)
    for group in groups:
        stored = [name for name in group if name in tensors]
        for name in group if stored else ():
            tensors.setdefault(name, tensors[stored[0]])
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"checkpoint {info.weights} does not match its model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    wrong = sorted(
        name for name in expected if list(tensors[name].shape) != list(expected[name].shape)
    )
    if wrong:
        raise UserError(
            f"checkpoint {info.weights} does not match its model: {wrong[0]} is "
            f"{list(tensors[wrong[0]].shape)} in the file but {list(expected[wrong[0]].shape)} "
            f"in the model built from its config ({len(wrong)} tensor(s) differ)"
        )
    refuse_wrong_dtypes(
        info,
        expected,
        {n: tensors[n].is_floating_point() for n in expected},
        {n: str(tensors[n].dtype).removeprefix("torch.") for n in expected},
    )
    target = torch.device(device or "cpu")
    state = {
        name: tensors[name].to(device=target, dtype=model_tensor.dtype)
        for name, model_tensor in expected.items()
    }  # .to is a no-op (no copy) when device and dtype already match
    model.load_state_dict(state, strict=True, assign=True)
    for group in groups:  # assign gave each name its own Parameter: make them one again
        owner, leaf = _owner(model, group[0])
        table = owner._parameters if leaf in owner._parameters else owner._buffers
        shared = table[leaf]
        for name in group[1:]:
            owner, leaf = _owner(model, name)
            (owner._parameters if leaf in owner._parameters else owner._buffers)[leaf] = shared
