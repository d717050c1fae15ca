"""GPTQ-style rounding for the int codecs, from a layer's input second moments H = E[x xᵀ].

A linear layer's output error over calibration inputs x is Σ_rows e H eᵀ (e = w − ŵ, one
row). Rounding the columns one at a time and spreading each column's rounding error over the
columns not yet rounded, through the Cholesky factor of H⁻¹ (Frantar et al., GPTQ, 2022),
lowers that error far below rounding each value to its nearest code; each group's scale and
min come from its values as they stand when the group is reached (min–max, as the plain
codec).

:func:`encode_calibrated` then keeps, row by row, whichever of plain rounding, the
importance-weighted rounding of :mod:`h2q_tui.codecs.calibrated` (importance = diag H) and
GPTQ gives the smallest e H eᵀ — so it is never worse than plain rounding in that error. The
stored parts, their dtypes and bounds are the plain codec's, so decoding is unchanged.
"""

from __future__ import annotations

import torch

from h2q_tui.codecs.calibrated import encode_weighted
from h2q_tui.codecs.tensor import CODECS, Meta, Stored, _fp16_rounded, pack_bits, unpack_bits

DAMPING = (0.01, 0.1, 1.0)  # × mean diag H added to the diagonal, tried in turn


def output_error(
    tensor: torch.Tensor, decoded: torch.Tensor, hessian: torch.Tensor
) -> torch.Tensor:
    """e H eᵀ per row (e = one row of w − ŵ), float64."""
    diff = (tensor.double() - decoded.double()).reshape(-1, hessian.shape[0])
    return ((diff @ hessian.double()) * diff).sum(1)


def inverse_factor(hessian: torch.Tensor) -> torch.Tensor | None:
    """The upper Cholesky factor of (H + damping)⁻¹, or None when H is not usable."""
    h = hessian.double()
    mean = float(h.diagonal().mean())
    if not mean > 0 or not bool(torch.isfinite(h).all()):
        return None
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    for damp in DAMPING:
        factor, info = torch.linalg.cholesky_ex(h + damp * mean * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    return None


def _gptq_int8(w: torch.Tensor, factor: torch.Tensor) -> Stored:
    """int8 parts: each row's scale from its absmax (as plain), codes with error feedback."""
    w = w.double().clone()
    scale = _fp16_rounded(w.abs().amax(1).float() / 127.0, up=True, codec="int8")
    s = scale.float().clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.zeros(w.shape, dtype=torch.int8)
    for i in range(w.shape[1]):
        code = torch.round(w[:, i].float() / s).clamp_(-127, 127)
        q[:, i] = code.to(torch.int8)
        err = (w[:, i] - (code * scale.float()).double()) / factor[i, i]
        w[:, i + 1 :] -= err[:, None] * factor[i, i + 1 :][None, :]
    return {"q": q, "scale": scale}


def _gptq_group(w: torch.Tensor, factor: torch.Tensor, bits: int, group: int) -> Stored:
    """intB-gG parts: a group's min and scale from its values when reached, codes with feedback."""
    w = w.double().clone()
    rows, cols = w.shape
    top, codec = (1 << bits) - 1, f"int{bits}"
    codes = torch.zeros(rows, cols, dtype=torch.uint8)
    mins = torch.zeros(rows, cols // group, dtype=torch.float16)
    scales = torch.zeros_like(mins)
    for i in range(cols):
        if i % group == 0:
            block = w[:, i : i + group].float()
            mins[:, i // group] = _fp16_rounded(block.amin(1), up=False, codec=codec)
            spread = block.amax(1) - mins[:, i // group].float()
            scales[:, i // group] = _fp16_rounded(spread / top, up=True, codec=codec)
            m, s = mins[:, i // group].float(), scales[:, i // group].float()
        code = torch.round((w[:, i].float() - m) / s.clamp_min(1e-38)).clamp_(0, top)
        codes[:, i] = code.to(torch.uint8)
        err = (w[:, i] - (m + code * s).double()) / factor[i, i]
        w[:, i + 1 :] -= err[:, None] * factor[i, i + 1 :][None, :]
    packed = pack_bits(codes.reshape(-1), bits)
    return {"packed": packed, "scale": scales.reshape(-1), "min": mins.reshape(-1)}


def _rows_of(stored: Stored, name: str, rows: int, bits: int) -> list[torch.Tensor]:
    """The parts as per-row tensors (codes unpacked), to pick rows from."""
    if name == "int8":
        return [stored["q"].reshape(rows, -1), stored["scale"].reshape(rows)]
    codes = unpack_bits(stored["packed"], bits).to(torch.uint8).reshape(rows, -1)
    return [codes, stored["scale"].reshape(rows, -1), stored["min"].reshape(rows, -1)]


def encode_calibrated(
    name: str, tensor: torch.Tensor, params: dict, importance: torch.Tensor
) -> tuple[Stored, Meta]:
    """Calibrated parts of int codec ``name``: ``importance`` a vector (one per column: the
    weighted rounding) or a matrix H (its columns' second moments: the best of plain, weighted
    and GPTQ per row)."""
    if importance.ndim != 2:
        return encode_weighted(name, tensor, params, importance)
    group = int(params.get("group", 1))
    factor = inverse_factor(importance) if tensor.ndim == 2 else None
    if factor is None or tensor.shape[1] != importance.shape[0] or tensor.shape[1] % group:
        return encode_weighted(name, tensor, params, importance.diagonal())
    codec = CODECS[name]
    plain, meta = codec.encode(tensor, **params)
    weighted, _ = encode_weighted(name, tensor, params, importance.diagonal())
    bits = 8 if name == "int8" else int(name[3:])
    w = tensor.detach().to(torch.float32)
    gptq = _gptq_int8(w, factor) if name == "int8" else _gptq_group(w, factor, bits, group)
    candidates = [plain, weighted, gptq]
    errors = torch.stack(
        [output_error(w, codec.decode(parts, meta), importance) for parts in candidates]
    )
    best = errors.argmin(0)  # the first (plain) on ties
    rows = tensor.shape[0]
    picked = [_rows_of(parts, name, rows, bits) for parts in candidates]
    chosen = list(picked[0])
    for index in (1, 2):
        mask = best == index
        chosen = [
            torch.where(_expand(mask, c), p, c) for c, p in zip(chosen, picked[index], strict=True)
        ]
    if name == "int8":
        return {"q": chosen[0].contiguous(), "scale": chosen[1].contiguous()}, meta
    packed = pack_bits(chosen[0].reshape(-1), bits)
    return {
        "packed": packed,
        "scale": chosen[1].reshape(-1).contiguous(),
        "min": chosen[2].reshape(-1).contiguous(),
    }, meta


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row mask shaped to broadcast over ``like``'s rows."""
    return mask.reshape(-1, *([1] * (like.ndim - 1)))
