"""Importance-weighted rounding for the int codecs: the same stored parts, better chosen.

``importance`` holds one non-negative number per input column of a weight (its last
dimension): the mean of x² of that input over calibration text (collected by
:mod:`h2q_tui.crystal.calibrate`). A matrix product's output error is Σ_j x_j (w_j − ŵ_j), so
columns fed large inputs matter more; per row (int8) or group (int4/5/6) the encoders below
choose the scale (and min) from a small set of candidates that minimises
Σ importance·(w − ŵ)², instead of taking absmax / min–max as the plain encoders do.

The candidates always include the plain encoder's own scale and min, so the weighted error
is never above plain rounding's, group by group. Codes stay within the codec's bound
(int8: −127..127; intB: 0..2^B − 1) and the parts are exactly those the plain codec stores
(``q`` + fp16 ``scale``; ``packed`` + fp16 ``scale`` + fp16 ``min``), so decoding is
unchanged: :func:`h2q_tui.codecs.tensor.decode_int8` / ``decode_group_int`` read them.
"""

from __future__ import annotations

import torch

from h2q_tui.codecs.tensor import (
    GROUP_BITS,
    INT4_GROUPS,
    Meta,
    Stored,
    _base_meta,
    _check_float,
    _fp16_rounded,
    _rows,
    pack_bits,
)

SHRINKS = (0.0, 0.03, 0.07, 0.12, 0.18)  # share of the range cut off at each end
INT8_FACTORS = tuple(1.0 - 0.04 * i for i in range(11))  # absmax/127 times 1.0 … 0.6
FP16_TINY = 2.0**-24  # the smallest positive fp16


def weights_for(tensor: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """The importance of each value of ``tensor`` (its column's), fp32, same shape."""
    last = tensor.shape[-1] if tensor.ndim else 1
    imp = importance.detach().to(torch.float32).reshape(-1)
    if imp.numel() != last:
        raise ValueError(
            f"calibration: {imp.numel()} importances for a tensor whose last dimension is {last}"
        )
    if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
        raise ValueError("calibration: importances must be finite and non-negative")
    return imp.expand(tensor.shape).contiguous() if tensor.ndim else imp.reshape(())


def weighted_error(
    tensor: torch.Tensor, decoded: torch.Tensor, importance: torch.Tensor
) -> torch.Tensor:
    """Σ importance·(w − ŵ)² per row of the last dimension, float64 (what the encoders minimise
    for int8; summed over a group's rows for int4/5/6)."""
    diff = (tensor.double() - decoded.double()).square()
    return (diff * weights_for(tensor, importance).double()).reshape(-1, diff.shape[-1]).sum(1)


def _fp16_nearest(values: torch.Tensor, positive: bool = False) -> torch.Tensor:
    """fp16 nearest to ``values`` (clamped into the finite range; ``positive``: ≥ FP16_TINY)."""
    clamped = values.clamp(-65504.0, 65504.0)
    if positive:
        clamped = clamped.clamp_min(FP16_TINY)
    return clamped.to(torch.float16)


# ----------------------------------------------------------------------------- int8
def _int8_error(rows, weights, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, Σ weight·(w − ŵ)² per row) for fp16 ``scale`` per row."""
    s = scale.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    q = torch.round(rows / s).clamp_(-127, 127)
    decoded = q * scale.float()[:, None]
    return q, ((rows.double() - decoded.double()).square() * weights).sum(1)


def encode_int8_weighted(tensor: torch.Tensor, importance: torch.Tensor) -> tuple[Stored, Meta]:
    """int8's parts (q, fp16 scale per row) with each row's scale minimising the weighted error."""
    values = _check_float(tensor, "int8")
    rows = _rows(values)
    weights = _rows(weights_for(values, importance)).double()
    absmax = rows.abs().amax(dim=1) if rows.numel() else torch.zeros(rows.shape[0])
    best = _fp16_rounded(absmax / 127.0, up=True, codec="int8")  # the plain encoder's scale
    _, best_error = _int8_error(rows, weights, best)
    for factor in INT8_FACTORS[1:]:
        scale = _fp16_nearest(absmax * (factor / 127.0), positive=True)
        for candidate in (scale, _refit_scale(rows, weights, scale)):
            _, error = _int8_error(rows, weights, candidate)
            better = error < best_error
            best = torch.where(better, candidate, best)
            best_error = torch.where(better, error, best_error)
    q, _ = _int8_error(rows, weights, best)
    stored = {"q": q.to(torch.int8).contiguous(), "scale": best.contiguous()}
    return stored, _base_meta("int8", tensor)


def _refit_scale(rows, weights, scale) -> torch.Tensor:
    """The weighted least-squares scale for the codes ``scale`` gives, as fp16."""
    s = scale.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    q = torch.round(rows / s).clamp_(-127, 127).double()
    top = (weights * q * rows.double()).sum(1)
    bottom = (weights * q * q).sum(1)
    fitted = torch.where(bottom > 0, top / bottom.clamp_min(1e-300), scale.double())
    return _fp16_nearest(fitted.float(), positive=True)


# ----------------------------------------------------------------------------- int4/5/6
def _group_error(groups, weights, minimum, scale, top) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, Σ weight·(w − ŵ)² per group) for fp16 ``minimum`` and ``scale`` per group."""
    s = scale.float().clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    q = torch.round((groups - minimum.float()[:, None]) / s).clamp_(0, top)
    decoded = minimum.float()[:, None] + q * scale.float()[:, None]
    return q, ((groups.double() - decoded.double()).square() * weights).sum(1)


def _refit(groups, weights, minimum, scale, top) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares (min, scale) for the codes (min, scale) give, as fp16."""
    q, _ = _group_error(groups, weights, minimum, scale, top)
    q, w, x = q.double(), weights, groups.double()
    sw, sq, sx = w.sum(1), (w * q).sum(1), (w * x).sum(1)
    sqq, sqx = (w * q * q).sum(1), (w * q * x).sum(1)
    det = sw * sqq - sq * sq
    ok = det > 1e-12 * sw.clamp_min(1e-300) * sqq.clamp_min(1e-300)
    safe = torch.where(ok, det, torch.ones_like(det))
    fitted_scale = torch.where(ok, (sw * sqx - sq * sx) / safe, scale.double())
    fitted_min = torch.where(ok, (sqq * sx - sq * sqx) / safe, minimum.double())
    return _fp16_nearest(fitted_min.float()), _fp16_nearest(fitted_scale.float(), positive=True)


def encode_group_weighted(
    tensor: torch.Tensor, bits: int, group: int, importance: torch.Tensor
) -> tuple[Stored, Meta]:
    """intB-gG's parts (packed codes, fp16 scale and min per group), each group's scale and
    min minimising the weighted error (the plain min–max pair among the candidates)."""
    codec = f"int{bits}"
    if bits not in GROUP_BITS or group not in INT4_GROUPS:
        raise ValueError(f"{codec}-g{group}: bits must be 4, 5 or 6 and the group 32, 64 or 128")
    values = _check_float(tensor, codec)
    flat, weights = values.reshape(-1), weights_for(values, importance).reshape(-1)
    pad = (-flat.numel()) % group
    if flat.numel() and pad:  # as the plain encoder: the last value repeated, here weighing 0
        flat = torch.cat([flat, flat[-1:].expand(pad)])
        weights = torch.cat([weights, torch.zeros(pad)])
    groups, weights = flat.reshape(-1, group), weights.reshape(-1, group).double()
    top = (1 << bits) - 1
    low = groups.amin(dim=1) if groups.shape[0] else torch.zeros(0)
    high = groups.amax(dim=1) if groups.shape[0] else torch.zeros(0)
    best_min = _fp16_rounded(low, up=False, codec=codec)  # the plain encoder's pair first
    best_scale = _fp16_rounded((high - best_min.float()) / float(top), up=True, codec=codec)
    _, best_error = _group_error(groups, weights, best_min, best_scale, top)
    spread = high - low
    for cut_low in SHRINKS:
        for cut_high in SHRINKS:
            lo, hi = low + cut_low * spread, high - cut_high * spread
            minimum = _fp16_nearest(lo)
            scale = _fp16_nearest((hi - minimum.float()) / float(top), positive=True)
            for m, s in ((minimum, scale), _refit(groups, weights, minimum, scale, top)):
                _, error = _group_error(groups, weights, m, s, top)
                better = error < best_error
                best_min = torch.where(better, m, best_min)
                best_scale = torch.where(better, s, best_scale)
                best_error = torch.where(better, error, best_error)
    q, _ = _group_error(groups, weights, best_min, best_scale, top)
    meta = {**_base_meta(codec, tensor), "group": group}
    stored = {
        "packed": pack_bits(q.to(torch.uint8).reshape(-1), bits),
        "scale": best_scale.contiguous(),
        "min": best_min.contiguous(),
    }
    return stored, meta


def encode_weighted(
    name: str, tensor: torch.Tensor, params: dict, importance: torch.Tensor
) -> tuple[Stored, Meta]:
    """The weighted encoder of int codec ``name`` (int8, int4, int5, int6)."""
    if name == "int8":
        return encode_int8_weighted(tensor, importance)
    return encode_group_weighted(tensor, int(name[3:]), int(params["group"]), importance)
