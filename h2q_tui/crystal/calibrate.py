"""Calibration for ``cal`` methods: the second moments of each linear weight's inputs.

Forward hooks on every ``nn.Linear`` record, over the calibration windows, H = mean of x xᵀ
over positions (its diagonal: the mean x² of each input, llama.cpp's importance matrix). The
int encoders then round to lower the layer's output error Σ e H eᵀ
(:mod:`h2q_tui.codecs.gptq`). Weights no linear layer reads alone get nothing and keep plain
rounding: embedding lookups, position tables, HamLinear factor stacks, and a tied matrix
(GPT's head = embedding) — H covers only its head role, and rounding it for the head's
outputs alone made the embedding worse (measured: int4-g32+cal had a 26 % higher KLD than
int4-g32 when the tied matrix was calibrated).

The calibration text is the last ``n_bytes`` of the held-out data the sweep measures on,
apart from the measured windows when the file is long enough (a note says when it is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from h2q_tui.codecs.policy import tied_names
from h2q_tui.crystal.measure import HeldOut
from h2q_tui.data.streams import heldout_batches
from h2q_tui.errors import UserError

FLOOR = 1e-6  # × mean diag H added to H's diagonal: an input never seen still weighs a little


@dataclass
class Calibration:
    """Importances by stored tensor name, and where they came from."""

    importance: dict[str, torch.Tensor]
    tokens: int
    windows: int
    overlap: bool  # the calibration tokens include some of the measured windows'

    def describe(self, heldout: HeldOut) -> str:
        unit = "bytes" if heldout.bytes_per_token == 1.0 else "tokens"
        where = (
            "overlapping the measured windows"
            if self.overlap
            else "apart from the measured windows"
        )
        return (
            f"calibration: last {self.tokens:,} {unit} of {heldout.source} ({self.windows} "
            f"windows, {where}), {len(self.importance)} weights weighted"
        )

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "windows": self.windows,
            "overlap": self.overlap,
            "weights": sorted(self.importance),
        }


def calibration_tokens(heldout: HeldOut, n_bytes: int) -> tuple[torch.Tensor, bool]:
    """The last ``n_bytes`` (in tokens) of the held-out data, and whether they overlap the
    measured windows; a one-line UserError when there are too few."""
    context = heldout.context
    count = math.ceil(n_bytes / heldout.bytes_per_token)
    if count < context + 1:
        raise UserError(
            f"--calibrate {n_bytes}: calibration needs at least one window, {context + 1} bytes"
        )
    available = heldout.tokens.numel()
    if count > available:
        raise UserError(
            f"--calibrate {n_bytes}: the held-out data {heldout.source} has only "
            f"{heldout.n_bytes:,} bytes"
        )
    return heldout.tokens[available - count :], available - count < heldout.max_tokens


@torch.no_grad()
def collect(
    model: nn.Module,
    heldout: HeldOut,
    n_bytes: int,
    device: torch.device | str = "cpu",
    batch: int = 32,
) -> Calibration:
    """Mean x² per input column of every linear weight over the calibration windows."""
    tokens, overlap = calibration_tokens(heldout, n_bytes)
    aliases = tied_names(model.state_dict())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, inputs: tuple, _output) -> None:
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1]).cpu()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    tied = set(aliases) | set(aliases.values())
    handles = [
        module.register_forward_hook(hook_for(f"{prefix}.weight"))
        for prefix, module in model.named_modules()
        if isinstance(module, nn.Linear) and f"{prefix}.weight" not in tied
    ]
    mode, windows = model.training, 0
    model.eval()
    try:
        for x, y in heldout_batches(tokens, heldout.context, batch, tokens.numel()):
            model(x.to(device), y.to(device))
            windows += x.shape[0]
    finally:
        model.train(mode)
        for handle in handles:
            handle.remove()
    importance = {}
    for name, total in sums.items():
        moments = total / max(1, counts[name])
        floor = FLOOR * float(moments.diagonal().mean())
        importance[name] = (
            moments + floor * torch.eye(moments.shape[0], dtype=moments.dtype)
        ).float()
    return Calibration(importance, tokens.numel(), windows, overlap)
