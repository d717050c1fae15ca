"""Crystallized weights kept as their stored integers and multiplied as such.

A :class:`PackedWeight` holds one (N, K) matrix as an ``int8`` codec stores it (int8 rows and
an fp16 scale per row) or as an ``int4``/``int5``/``int6`` codec does (codes, fp16 scale and
minimum per group of G along a row); :meth:`PackedWeight.linear` is x Wᵀ + b computed on those
codes by :mod:`h2q_kernels.quantized`. int4 keeps the file's bytes as they are (two codes a
byte); int5/int6 codes are unpacked to one a byte at load, which the kernels read directly.
:class:`PackedLinear` is the module that replaces an ``nn.Linear`` whose weight is packed, so
the model's forward (eval, the model path) and the step programs use the same products.

Which weights can be packed (:func:`packable`): 2-D, stored by one integer codec (no chain
with svd), K a multiple of 32 and, for groups, of G (a group then never spans two rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from h2q_kernels import quantized
from h2q_kernels.quantized import step
from torch import nn
from torch.nn import functional as F

from h2q_tui.codecs.tensor import (
    CrystalFormatError,
    decode_group_int,
    decode_int8,
    encode_group_int,
    encode_int8,
    pack_bits,
    unpack_bits,
)

PACKED_CODECS = ("int8", "int4", "int5", "int6")


@dataclass
class PackedWeight:
    """An (N, K) weight as integer codes; ``parts`` are the tensors the kernel reads."""

    codec: str  # int8, int4, int5 or int6
    shape: tuple[int, int]
    parts: dict[str, torch.Tensor]
    group: int = 0  # the group length of int4/5/6
    _product: quantized.Product | None = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts.values())

    @property
    def device(self) -> torch.device:
        return next(iter(self.parts.values())).device

    @property
    def describe(self) -> str:
        return self.codec + (f"-g{self.group}" if self.group else "")

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (…, K) Wᵀ + bias on the codes (the decoded weight each call without kernels)."""
        if self._product is None:
            if quantized.library().handle is None:
                return F.linear(x, self.decoded().to(x.dtype), bias)
            self._product = self._bind()
        return self._product(x, bias, torch.get_num_threads())

    def _bind(self) -> quantized.Product:
        if self.codec == "int8":
            return quantized.int8_product(self.parts["q"], self.parts["scale"])
        return quantized.groups_product(
            self.parts["codes"], self.codec == "int4", self.parts["scale"], self.parts["min"],
            self.group,
        )  # fmt: skip

    def matrix(self, bias: torch.Tensor | None = None) -> step.Matrix:
        """The weight and bias as the one-call decode step reads them."""
        if self.codec == "int8":
            return step.int8_rows(self.parts["q"], self.parts["scale"], bias)
        return step.code_groups(
            self.parts["codes"], self.codec == "int4", self.parts["scale"], self.parts["min"],
            self.group, bias,
        )  # fmt: skip

    def decoded(self) -> torch.Tensor:
        """The float weight the codes stand for, as the codec decodes it."""
        meta = {"codec": self.codec, "shape": list(self.shape), "dtype": "float32"}
        if self.codec == "int8":
            return decode_int8(self.parts, meta)
        rows = self.parts["codes"].shape[0]
        if self.codec == "int4":
            packed = self.parts["codes"]
        else:
            packed = pack_bits(self.parts["codes"].reshape(-1), int(self.codec[3:]))
        parts = {
            "packed": packed.reshape(-1),
            "scale": self.parts["scale"],
            "min": self.parts["min"],
        }
        decoded = decode_group_int(parts, {**meta, "group": self.group})
        return decoded.reshape(rows, -1)


def packable(meta: Mapping[str, Any] | None) -> bool:
    """Whether a layout record is one integer codec on a matrix the kernels take."""
    if not isinstance(meta, Mapping) or meta.get("codec") not in PACKED_CODECS or meta.get("parts"):
        return False
    shape = meta.get("shape")
    if not isinstance(shape, list) or len(shape) != 2:
        return False
    group = meta.get("group") if meta["codec"] != "int8" else None
    return quantized.supports(int(shape[1]), None if group is None else int(group))


def from_stored(stored: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> PackedWeight:
    """The packed weight of one stored tensor (``packable(meta)`` must hold)."""
    codec = str(meta["codec"])
    rows, width = (int(n) for n in meta["shape"])
    if codec == "int8":
        q, scale = stored.get("q"), stored.get("scale")
        if q is None or scale is None or q.dtype != torch.int8 or q.shape != (rows, width):
            raise CrystalFormatError("int8: stored q/scale do not match the metadata's shape")
        if scale.dtype != torch.float16 or scale.shape != (rows,):
            raise CrystalFormatError("int8: stored q/scale do not match the metadata's shape")
        return PackedWeight(codec, (rows, width), {"q": q, "scale": scale})
    bits, group = int(codec[3:]), int(meta["group"])
    packed, scale, minimum = stored.get("packed"), stored.get("scale"), stored.get("min")
    groups = rows * width // group
    if (
        packed is None or scale is None or minimum is None or packed.dtype != torch.uint8
        or packed.numel() * 8 != rows * width * bits or scale.shape != (groups,)
        or minimum.shape != (groups,) or scale.dtype != torch.float16
        or minimum.dtype != torch.float16
    ):  # fmt: skip
        raise CrystalFormatError(f"{codec}: stored packed/scale/min do not match the metadata")
    if bits == 4:
        codes = packed.reshape(rows, width // 2)
    else:
        codes = unpack_bits(packed.reshape(-1), bits).to(torch.uint8).reshape(rows, width)
    return PackedWeight(
        codec, (rows, width), {"codes": codes, "scale": scale, "min": minimum}, group
    )


def quantize(weight: torch.Tensor, codec: str, group: int = 0) -> PackedWeight:
    """Pack a float (N, K) weight by ``codec`` (for weights computed at load, as HamLinear W)."""
    if codec == "int8":
        stored, meta = encode_int8(weight)
    else:
        stored, meta = encode_group_int(weight, int(codec[3:]), group)
    return from_stored(stored, meta)


def concatenate(weights: list[PackedWeight]) -> PackedWeight:
    """One packed weight of the rows of several of one codec and width (q/k/v fused)."""
    first = weights[0]
    if any(
        (w.codec, w.group, w.shape[1]) != (first.codec, first.group, first.shape[1])
        for w in weights
    ):
        raise ValueError("packed weights of different codecs or widths cannot be joined")
    parts = {key: torch.cat([w.parts[key] for w in weights]) for key in first.parts}
    rows = sum(w.shape[0] for w in weights)
    return PackedWeight(first.codec, (rows, first.shape[1]), parts, first.group)


class PackedLinear(nn.Module):
    """``nn.Linear`` over a :class:`PackedWeight`: the same forward, on the integer codes.

    ``weight`` is the packed weight (not a tensor): the step programs pass it on to
    :func:`linear`; its parts are registered as buffers, so ``.to()`` and memory counts see them.
    """

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        for key, value in weight.parts.items():
            self.register_buffer(f"packed_{key}", value, persistent=False)
        if bias is None:
            self.bias = None
        else:
            self.bias = nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.linear(x, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.weight.describe}"


def linear(x: torch.Tensor, weight: torch.Tensor | PackedWeight, bias=None) -> torch.Tensor:
    """F.linear for a float or a packed weight: the one call the step programs make."""
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight, bias)
    return weight.linear(x, bias)


def kernel_matrix(weight: torch.Tensor | PackedWeight, bias=None) -> step.Matrix:
    """A float or packed weight as the one-call decode step reads it (ValueError: it cannot)."""
    if isinstance(weight, torch.Tensor):
        return step.dense(weight, bias)
    return weight.matrix(bias)
