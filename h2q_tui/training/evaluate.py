"""Held-out cross-entropy of a model over byte windows, in nats and bits per byte."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized

import torch
from torch import nn

from h2q_tui.data.streams import heldout_batches


@torch.no_grad()
def mean_cross_entropy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
    total: int = 0,
) -> float:
    """Token-weighted mean CE (nats) of the model over (inputs, targets) batches, in eval mode.

    ``progress(done, total)`` is called after each batch; ``total`` is the number of batches
    (taken from ``len(batches)`` when it has one).
    """
    was_training = model.training
    model.eval()
    total_nats, total_tokens = 0.0, 0
    total = len(batches) if isinstance(batches, Sized) else total
    for done, (x, y) in enumerate(batches, 1):
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            _, loss = model(x.to(device), y.to(device))
        total_nats += float(loss) * y.numel()
        total_tokens += y.numel()
        if progress is not None:
            progress(done, max(total, done))
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
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Mean CE (nats/byte) over non-overlapping context windows of ``data``."""
    usable = data.numel() if max_bytes is None else min(data.numel(), max_bytes)
    total = -(-((usable - 1) // context) // batch)  # batches of `batch` windows, rounded up
    batches = heldout_batches(data, context, batch, max_bytes)
    return mean_cross_entropy(model, batches, device, autocast_dtype, progress, total)
