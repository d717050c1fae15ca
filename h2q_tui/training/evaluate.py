"""Held-out cross-entropy of a model over byte windows, in nats and bits per byte."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from h2q_tui.data.streams import heldout_batches


@torch.no_grad()
def mean_cross_entropy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Token-weighted mean CE (nats) of the model over (inputs, targets) batches, in eval mode."""
    was_training = model.training
    model.eval()
    total_nats, total_tokens = 0.0, 0
    for x, y in batches:
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            _, loss = model(x.to(device), y.to(device))
        total_nats += float(loss) * y.numel()
        total_tokens += y.numel()
    model.train(was_training)
    return total_nats / max(1, total_tokens)


def heldout_cross_entropy(
    model: nn.Module,
    data: torch.Tensor,
    context: int,
    device: torch.device,
    max_bytes: int | None = None,
    batch: int = 32,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Mean CE (nats/byte) over non-overlapping context windows of ``data``."""
    return mean_cross_entropy(
        model, heldout_batches(data, context, batch, max_bytes), device, autocast_dtype
    )
