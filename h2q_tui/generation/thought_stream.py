"""The Thought Stream: a short plain sample from the model being trained, between two steps.

It runs on the training thread, so it must be quick: it uses the KV-cached decoder and
HamLinear weights materialised once (see generation/decoder.py), and its own generator, so
sampling never disturbs the training RNG (a resumed run stays exact).
"""

from __future__ import annotations

import torch
from h2q_kernels.hamiltonian import frozen_weights
from torch import nn

from h2q_tui.generation.decoder import Decoder


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    prompt: list[int],
    n_tokens: int,
    temperature: float,
    generator: torch.Generator,
) -> list[int]:
    """Sample ``n_tokens`` token ids after ``prompt`` at ``temperature`` (no other filtering)."""
    was_training = model.training
    model.eval()
    tokens = list(prompt) or [ord("\n")]
    out = []
    try:
        with frozen_weights(model):
            decoder = Decoder(model)
            for _ in range(n_tokens):
                logits, _ = decoder(tokens)
                probs = torch.softmax(logits.cpu() / max(temperature, 1e-5), dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
                tokens.append(token)
                out.append(token)
    finally:
        model.train(was_training)
    return out
