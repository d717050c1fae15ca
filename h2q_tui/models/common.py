"""Pieces shared by the model families: causal attention core, phase rotation, the CE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, layout: str = "heads"
) -> torch.Tensor:
    """Multi-head causal attention on (B, T, C) projections; returns (B, T, C).

    ``layout="source"`` reproduces the h2q-transformer source's reshape without a transpose:
    (B, T, C) viewed as (B, nh, T, hs) puts T/nh consecutive tokens (each cut into nh pieces)
    in each "head", so attention is confined to fixed windows of T/nh tokens. Opt-in only.
    """
    batch, time, width = q.shape
    head = width // n_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        if layout == "source":
            return t.reshape(batch, n_heads, time, head)  # the source's bug: no transpose
        return t.view(batch, time, n_heads, head).transpose(1, 2)  # (B, nh, T, hs)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
    if layout == "source":
        return out.reshape(batch, time, width)
    return out.transpose(1, 2).reshape(batch, time, width)  # (B, nh, T, hs) -> (B, T, C)


def phase_rotation(y: torch.Tensor) -> torch.Tensor:
    """h2q-transformer's feedback: each quaternion y = (r, i, j, k) -> y · r / sqrt(|y|² + 1e-6).

    Component-major layout: component c of quaternion n is dim c·C/4 + n.
    """
    batch, time, width = y.shape
    quats = y.view(batch, time, 4, width // 4)  # (B, T, 4, C/4)
    real = quats[:, :, 0:1]  # (B, T, 1, C/4)
    scale = real / torch.sqrt(quats.pow(2).sum(dim=2, keepdim=True) + 1e-6)
    return (quats * scale).reshape(batch, time, width)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean next-token cross-entropy in nats (fp32), or None without targets."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
