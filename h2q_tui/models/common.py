"""Pieces shared by the model families: causal attention core and the CE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int
) -> torch.Tensor:
    """Multi-head causal attention on (B, T, C) projections; returns (B, T, C)."""
    batch, time, width = q.shape
    head = width // n_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, time, n_heads, head).transpose(1, 2)  # (B, nh, T, hs)

    out = F.scaled_dot_product_attention(
        split(q), split(k), split(v), is_causal=True
    )  # (B, nh, T, hs)
    return out.transpose(1, 2).reshape(batch, time, width)  # (B, T, C)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean next-token cross-entropy in nats (fp32), or None without targets."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
