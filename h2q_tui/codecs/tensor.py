"""Tensor codecs for crystallization: pure encode/decode pairs and their registry.

Every codec is a pair of pure functions::

    encode(tensor, **params) -> (stored, meta)   # stored: {part: tensor}, meta: JSON-able dict
    decode(stored, meta)     -> tensor           # float, the original shape and dtype

``meta`` always holds ``codec``, ``shape`` and ``dtype`` (the original's), plus the codec's own
parameters. Stored tensors are contiguous and own their memory, ready for safetensors.

Codecs and their documented error bounds (w the original value, ŵ the decoded one; the
bounds are for fp32 originals, a bf16/fp16 original adds half an ulp of its own dtype when ŵ is
cast back):

- ``bf16``, ``fp16``: casts; |w − ŵ| ≤ half an ulp of the target dtype (2^-8 |w| for bf16,
  2^-11 |w| for fp16 normals). fp16 refuses values beyond ±65504 (use bf16).
- ``int8``: symmetric absmax per row, a row being a vector along the last dimension (so for a
  2-D (out, in) weight: one scale per output row = dim 0; a 1-D tensor has one scale; a
  HamLinear factor stack (R, F, F) one scale per row of each B_r). Stored: ``q`` int8 in
  [−127, 127] and ``scale`` fp16 per row. The fp16 scale is rounded *up* from absmax/127, so
  no value is clipped and |w − ŵ| ≤ scale/2 per element, ``scale`` being the stored fp16 value
  (the fp16 rounding only ever widens the scale, by at most 2^-11 relative for normal fp16).
- ``int4-gG`` (G = 32, 64, 128): asymmetric per group of G consecutive values of the tensor
  flattened in C order (groups may span rows; the tail group is padded by repeating the last
  value, which changes neither its minimum nor its maximum; the original shape is in meta).
  Stored: ``packed`` uint8 with two 4-bit codes per byte, **low nibble first** (byte i =
  q[2i] | q[2i+1] << 4), ``scale`` and ``min`` fp16 per group. The fp16 minimum is rounded
  down and the scale up from (max − min16)/15, so the 16 levels min16 + q·scale cover the
  group and |w − ŵ| ≤ scale/2 (+ fp32 arithmetic, ~1e-7 relative).
- ``int5-gG``, ``int6-gG``: the same with 2^B levels (scale from (max − min16)/(2^B − 1)) and
  the codes bit-packed, eight codes into B bytes, least significant bits first (code i
  occupies bits B·i … B·i + B − 1 of the little-endian 8-byte word); for B = 4 that is exactly
  the int4 layout. Between int8 and int4 the way llama.cpp's q5/q6 are: half and a quarter of
  int4's error for 1 and 2 more bits per weight.
- ``svd:K`` / ``svd:F``: truncated SVD of a 2-D matrix (m, n), stored as ``u`` = U_k·√S_k
  (m, k) and ``v`` = √S_k·V_kᵀ (k, n) in fp32; ‖w − ŵ‖_F = sqrt(Σ_{i>k} σ_i²) exactly (up to
  fp32). An integer is the rank k, a float F in (0, 1] a fraction of the break-even rank
  mn/(m+n) (k = max(1, floor(F·mn/(m+n)))). k is capped at min(m, n). meta ``saves_bytes``
  is false (and ``note`` says why) when k ≥ mn/(m+n): the factors hold at least as many
  numbers as the matrix.

Method strings (``svd:0.5+int8``) and the chains that apply several codecs in turn are in
:mod:`h2q_tui.codecs.method`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

INT4_GROUPS = (32, 64, 128)
GROUP_BITS = (4, 5, 6)  # the group-wise asymmetric codecs: int4-gG, int5-gG, int6-gG
FP16_MAX = 65504.0

Stored = dict[str, torch.Tensor]
Meta = dict[str, Any]


class CrystalFormatError(ValueError):
    """Stored tensors or metadata that do not form a valid crystallized layout."""


# ----------------------------------------------------------------------------- helpers
_FLOAT_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _FLOAT_DTYPES:
        raise CrystalFormatError(f"unsupported dtype {name!r} in crystallized metadata")
    return _FLOAT_DTYPES[name]


def _base_meta(codec: str, tensor: torch.Tensor) -> Meta:
    return {"codec": codec, "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype)}


def _check_float(tensor: torch.Tensor, codec: str) -> torch.Tensor:
    """The tensor as fp32 (a copy); refuses non-float and non-finite tensors."""
    if not tensor.is_floating_point():
        raise ValueError(
            f"{codec}: expects a floating-point tensor, got {dtype_name(tensor.dtype)}"
        )
    values = tensor.detach().to(torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{codec}: the tensor holds non-finite values (NaN or inf)")
    return values


def _fp16_rounded(values: torch.Tensor, up: bool, codec: str) -> torch.Tensor:
    """fp16 values ≥ (up) or ≤ (down) the fp32 ``values``, the nearest such."""
    half = values.to(torch.float16)
    wrong = half.float() < values if up else half.float() > values
    if bool(wrong.any()):
        target = torch.tensor(float("inf") if up else float("-inf"), dtype=torch.float16)
        half = torch.where(wrong, torch.nextafter(half, target.expand_as(half)), half)
    if not bool(torch.isfinite(half).all()):
        raise ValueError(f"{codec}: values beyond the fp16 range (±{FP16_MAX:g}) for its scales")
    return half


def _need(stored: Mapping[str, torch.Tensor], meta: Mapping[str, Any], *parts: str) -> list:
    missing = [p for p in parts if p not in stored]
    if missing:
        raise CrystalFormatError(f"{meta.get('codec', '?')}: stored part {missing[0]!r} is missing")
    return [stored[p] for p in parts]


def _meta_shape(meta: Mapping[str, Any]) -> tuple[torch.Size, torch.dtype]:
    try:
        shape = torch.Size(int(n) for n in meta["shape"])
        return shape, dtype_from_name(str(meta["dtype"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CrystalFormatError):
            raise
        raise CrystalFormatError(f"{meta.get('codec', '?')}: bad shape/dtype in metadata") from None


def stored_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the tensors' data (not a file size: safetensors adds a header and padding)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ----------------------------------------------------------------------------- casts
def _encode_cast(tensor: torch.Tensor, codec: str, dtype: torch.dtype) -> tuple[Stored, Meta]:
    values = _check_float(tensor, codec)
    if dtype == torch.float16 and bool((values.abs() > FP16_MAX).any()):
        raise ValueError(f"fp16: values beyond ±{FP16_MAX:g} overflow fp16 (use bf16)")
    return {"value": tensor.detach().to(dtype).contiguous().clone()}, _base_meta(codec, tensor)


def encode_bf16(tensor: torch.Tensor) -> tuple[Stored, Meta]:
    return _encode_cast(tensor, "bf16", torch.bfloat16)


def encode_fp16(tensor: torch.Tensor) -> tuple[Stored, Meta]:
    return _encode_cast(tensor, "fp16", torch.float16)


def decode_cast(stored: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> torch.Tensor:
    shape, dtype = _meta_shape(meta)
    (value,) = _need(stored, meta, "value")
    if value.shape != shape:
        raise CrystalFormatError(
            f"{meta['codec']}: stored shape {list(value.shape)} != {list(shape)}"
        )
    return value.to(dtype)


# ----------------------------------------------------------------------------- int8
def _rows(values: torch.Tensor) -> torch.Tensor:
    """(rows, last) view: one row per vector along the last dimension; 0-D/1-D: one row."""
    if values.ndim == 0:
        return values.reshape(1, 1)
    last = values.shape[-1]
    return values.reshape(-1, last) if last else values.reshape(0, 0)


def encode_int8(tensor: torch.Tensor) -> tuple[Stored, Meta]:
    """Symmetric absmax per row (vector along the last dim): |w − ŵ| ≤ scale/2."""
    rows = _rows(_check_float(tensor, "int8"))  # (rows, last)
    absmax = rows.abs().amax(dim=1) if rows.numel() else torch.zeros(rows.shape[0])
    scale = _fp16_rounded(absmax / 127.0, up=True, codec="int8")  # (rows,) fp16, ≥ absmax/127
    divisor = scale.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    q = torch.round(rows / divisor).clamp_(-127, 127).to(torch.int8)
    meta = _base_meta("int8", tensor)
    return {"q": q.contiguous(), "scale": scale.contiguous()}, meta


def decode_int8(stored: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> torch.Tensor:
    shape, dtype = _meta_shape(meta)
    q, scale = _need(stored, meta, "q", "scale")
    if (
        q.dtype != torch.int8
        or q.ndim != 2
        or scale.shape != (q.shape[0],)
        or q.numel() != shape.numel()
    ):
        raise CrystalFormatError("int8: stored q/scale do not match the metadata's shape")
    return (q.float() * scale.float()[:, None]).reshape(shape).to(dtype)


# ----------------------------------------------------------------------------- int4/5/6
def encode_int4(tensor: torch.Tensor, group: int = 64) -> tuple[Stored, Meta]:
    """Asymmetric per group of ``group`` flattened values, two 4-bit codes per byte (low first)."""
    return encode_group_int(tensor, 4, group)


def encode_int5(tensor: torch.Tensor, group: int = 64) -> tuple[Stored, Meta]:
    return encode_group_int(tensor, 5, group)


def encode_int6(tensor: torch.Tensor, group: int = 64) -> tuple[Stored, Meta]:
    return encode_group_int(tensor, 6, group)


def encode_group_int(tensor: torch.Tensor, bits: int, group: int) -> tuple[Stored, Meta]:
    """Asymmetric per group of ``group`` flattened values, ``bits``-bit codes bit-packed."""
    codec = f"int{bits}"
    if bits not in GROUP_BITS:
        raise ValueError(f"{codec}: bits must be 4, 5 or 6")
    if group not in INT4_GROUPS:
        raise ValueError(f"{codec}-g{group}: group size must be 32, 64 or 128")
    flat = _check_float(tensor, codec).reshape(-1)
    count = flat.numel()
    pad = (-count) % group
    if count and pad:  # repeat the last value: the tail group's min and max stay its own
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    groups = flat.reshape(-1, group)  # (n_groups, G)
    if groups.shape[0]:
        low, high = groups.amin(dim=1), groups.amax(dim=1)
    else:
        low = high = torch.zeros(0)
    top = (1 << bits) - 1
    minimum = _fp16_rounded(low, up=False, codec=codec)  # ≤ the group's minimum
    scale = _fp16_rounded((high - minimum.float()) / float(top), up=True, codec=codec)
    divisor = scale.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    q = torch.round((groups - minimum.float()[:, None]) / divisor).clamp_(0, top).to(torch.uint8)
    meta = {**_base_meta(codec, tensor), "group": group}
    return {
        "packed": pack_bits(q.reshape(-1), bits),
        "scale": scale.contiguous(),
        "min": minimum.contiguous(),
    }, meta


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2^bits, a multiple of 8 of them → uint8 bytes, eight codes per ``bits``
    bytes, least significant bits first."""
    words = torch.zeros(codes.numel() // 8, dtype=torch.int64)
    for i, column in enumerate(codes.reshape(-1, 8).to(torch.int64).unbind(dim=1)):
        words |= column << (bits * i)
    parts = [(words >> (8 * j)) & 0xFF for j in range(bits)]
    return torch.stack(parts, dim=1).to(torch.uint8).reshape(-1).contiguous()


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: uint8 bytes → codes (8 per ``bits`` bytes)."""
    words = torch.zeros(packed.numel() // bits, dtype=torch.int64)
    for j, column in enumerate(packed.reshape(-1, bits).to(torch.int64).unbind(dim=1)):
        words |= column << (8 * j)
    mask = (1 << bits) - 1
    return torch.stack([(words >> (bits * i)) & mask for i in range(8)], dim=1).reshape(-1)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (n,) → codes 0..15 (2n,), low nibble first."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(-1)


def decode_group_int(stored: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> torch.Tensor:
    codec = str(meta.get("codec", ""))
    bits = int(codec[3:]) if codec in ("int4", "int5", "int6") else 0
    shape, dtype = _meta_shape(meta)
    packed, scale, minimum = _need(stored, meta, "packed", "scale", "min")
    group = int(meta.get("group", 0))
    n_groups = -(-shape.numel() // group) if group in INT4_GROUPS else -1
    if (
        bits not in GROUP_BITS
        or packed.dtype != torch.uint8
        or packed.numel() * 8 != n_groups * group * bits
        or scale.shape != (n_groups,)
        or minimum.shape != (n_groups,)
    ):
        raise CrystalFormatError(f"{codec}: stored packed/scale/min do not match the metadata")
    if bits == 4:
        codes = unpack_int4(packed.reshape(-1))
    else:
        codes = unpack_bits(packed.reshape(-1), bits)
    codes = codes.float().reshape(n_groups, group)
    values = minimum.float()[:, None] + codes * scale.float()[:, None]
    return values.reshape(-1)[: shape.numel()].reshape(shape).to(dtype)


decode_int4 = decode_group_int


# ----------------------------------------------------------------------------- svd
def break_even_rank(rows: int, cols: int) -> float:
    """The rank k at which U·√S (m, k) and √S·Vᵀ (k, n) hold as many numbers as the matrix."""
    return rows * cols / (rows + cols)


def svd_rank(rows: int, cols: int, rank: int | None = None, fraction: float | None = None) -> int:
    """The rank svd:K (``rank``) or svd:F (``fraction`` of the break-even rank) keeps, ≤ min(m, n)."""
    if (rank is None) == (fraction is None):
        raise ValueError("svd: give exactly one of rank and fraction")
    if rank is not None:
        if rank < 1:
            raise ValueError(f"svd:{rank}: the rank must be at least 1")
        k = rank
    else:
        assert fraction is not None
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"svd:{fraction:g}: the fraction must be in (0, 1]")
        k = max(1, math.floor(fraction * break_even_rank(rows, cols)))
    return min(k, rows, cols)


def encode_svd(
    tensor: torch.Tensor, rank: int | None = None, fraction: float | None = None
) -> tuple[Stored, Meta]:
    """u = U_k·√S_k, v = √S_k·V_kᵀ (fp32); meta says whether the setting saves bytes."""
    values = _check_float(tensor, "svd")
    if values.ndim != 2:
        raise ValueError(f"svd: expects a 2-D matrix, got shape {list(values.shape)}")
    rows, cols = values.shape
    k = svd_rank(rows, cols, rank, fraction)
    u, s, vh = torch.linalg.svd(values.double(), full_matrices=False)
    root = s[:k].sqrt()
    left = (u[:, :k] * root).float().contiguous()
    right = (root[:, None] * vh[:k]).float().contiguous()
    even = break_even_rank(rows, cols)
    meta = {
        **_base_meta("svd", tensor),
        "rank": k,
        "break_even": round(even, 3),
        "saves_bytes": k < even,
        "relative_error": float(
            s[k:].square().sum().sqrt() / s.square().sum().sqrt().clamp_min(1e-300)
        ),
    }
    if k >= even:
        meta["note"] = (
            f"svd rank {k} of a {rows}x{cols} matrix saves no bytes: its factors hold "
            f"{k * (rows + cols)} numbers, the matrix {rows * cols} (break-even rank {even:.1f})"
        )
    elif tensor.element_size() < 4:
        meta["note"] = (
            f"svd factors are stored in fp32, the {dtype_name(tensor.dtype)} original in less"
        )
    return {"u": left, "v": right}, meta


def decode_svd(stored: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> torch.Tensor:
    shape, dtype = _meta_shape(meta)
    left, right = _need(stored, meta, "u", "v")
    if left.ndim != 2 or right.ndim != 2 or (left.shape[0], right.shape[1]) != tuple(shape):
        raise CrystalFormatError("svd: stored factors do not match the metadata's shape")
    return (left.float() @ right.float()).to(dtype)


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Codec:
    """A tensor codec: encode(tensor, **params) → (stored, meta); decode(stored, meta) → tensor.

    ``factor_parts``: stored parts that a later step of a combination encodes further.
    """

    name: str
    encode: Callable[..., tuple[Stored, Meta]]
    decode: Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], torch.Tensor]
    factor_parts: tuple[str, ...] = ()


CODECS: dict[str, Codec] = {
    "bf16": Codec("bf16", encode_bf16, decode_cast),
    "fp16": Codec("fp16", encode_fp16, decode_cast),
    "int8": Codec("int8", encode_int8, decode_int8),
    "int4": Codec("int4", encode_int4, decode_group_int),
    "int5": Codec("int5", encode_int5, decode_group_int),
    "int6": Codec("int6", encode_int6, decode_group_int),
    "svd": Codec("svd", encode_svd, decode_svd, factor_parts=("u", "v")),
}


def relative_error(original: torch.Tensor, decoded: torch.Tensor) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F in float64 (0 for an all-zero W decoded exactly)."""
    w, w_hat = original.detach().double(), decoded.detach().double()
    norm = float(w.norm())
    diff = float((w - w_hat).norm())
    return diff / norm if norm else (0.0 if diff == 0 else math.inf)
