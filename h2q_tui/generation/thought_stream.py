"""The Thought Stream: a short plain sample from the model being trained (no KV cache).

Dimension legend: T context. It uses its own seeded generator, so sampling never disturbs
the training RNG (a resumed run stays exact).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    prompt: list[int],
    n_tokens: int,
    temperature: float,
    generator: torch.Generator,
    context: int,
    device: torch.device,
) -> list[int]:
    """Sample ``n_tokens`` token ids after ``prompt`` (cropped to the last ``context`` tokens)."""
    was_training = model.training
    model.eval()
    tokens = list(prompt) or [ord("\n")]
    out = []
    for _ in range(n_tokens):
        idx = torch.tensor([tokens[-context:]], device=device)  # (1, T)
        logits, _ = model(idx)
        probs = torch.softmax(logits[0, -1].float() / max(temperature, 1e-5), dim=-1).cpu()
        token = int(torch.multinomial(probs, 1, generator=generator))
        tokens.append(token)
        out.append(token)
    model.train(was_training)
    return out
