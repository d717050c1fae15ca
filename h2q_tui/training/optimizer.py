"""The optimizer and the learning-rate schedule every run trains with."""

from __future__ import annotations

import math

import torch
from torch import nn

from h2q_tui.config import RunConfig

# AdamW's fused kernel (one pass per tensor on CPU and GPU) instead of PyTorch's default on a
# CPU, a loop of small ops per tensor: the optimizer step 2.3-2.7x faster for the presets
# (benchmarks/mfu.py --lever adamw measures it side by side); False keeps the default form
FUSED_ADAMW = True
FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (no decay on biases, norms, 1-D tables), fused
    where every parameter is a float tensor on a CPU or GPU.

    A resumed run keeps the form its checkpoint was trained with (the flag is part of the
    saved param groups), so an older run resumes exactly."""
    t = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = FUSED_ADAMW and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params
    )
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused or None)


def scheduled_lr(config: RunConfig, step: int, elapsed_s: float) -> float:
    """Linear warm-up, then constant or cosine decay to min_lr over max_steps (else max_seconds)."""
    t = config.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    if t.max_steps > 0:
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    elif t.max_seconds > 0:
        progress = elapsed_s / t.max_seconds
    else:
        return t.lr
    progress = min(1.0, max(0.0, progress))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))
