"""Next-token choice from logits: repetition penalty, temperature, top-k, top-p, seeded draw.

Dimension legend: V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    """How plain sampling picks a token; the defaults are the Hamiltonian-LLM source's mode 1."""

    temperature: float = 0.7  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.2  # CTRL-style over generated tokens; 1 = off
    max_new_tokens: int = 200
    seed: int = 0
    stop: tuple[str, ...] = ()

    def check(self) -> None:
        """ValueError naming the first bad setting."""
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be ≥ 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max new tokens must be ≥ 0, got {self.max_new_tokens}")


def apply_repetition_penalty(
    logits: torch.Tensor, previous: Iterable[int], penalty: float
) -> torch.Tensor:
    """CTRL (Keskar et al. 2019): for tokens already generated, positive logits ÷ p, negative × p."""
    ids = sorted(set(previous))
    if penalty == 1.0 or not ids:
        return logits
    logits = logits.clone()
    index = torch.tensor(ids, device=logits.device)
    chosen = logits[index]
    logits[index] = torch.where(chosen > 0, chosen / penalty, chosen * penalty)
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top k, and outside the smallest set with mass ≥ top_p, to −inf."""
    logits = logits.clone()
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        outside = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # mass before ≥ p
        logits[order[outside]] = float("-inf")
    return logits


def choose_token(
    logits: torch.Tensor,
    generated: list[int],
    config: SamplingConfig,
    generator: torch.Generator,
) -> int:
    """One token id from next-token logits (V,) under ``config``."""
    logits = apply_repetition_penalty(logits.float().cpu(), generated, config.repetition_penalty)
    if config.temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_top_k_top_p(logits / config.temperature, config.top_k, config.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
