"""Next-token logits and final hidden state for a token sequence, with or without a KV cache.

The visible window: all tokens while they fit in the model's context; past that, the window
start jumps forward in steps of half the context (learned position tables cannot slide by
one). The cached and the recomputing decoder use the same window, so they give the same
logits; the cached one feeds only the tokens its cache has not seen, and can branch: a call
with a sequence that shares only a prefix with the cached one truncates the cache there
(the lookahead and flow modes try several continuations this way).

Dimension legend: V vocabulary, C final hidden width.
"""

from __future__ import annotations

import torch
from torch import nn

from h2q_tui.generation.steering import Steering
from h2q_tui.models.common import DecodeState


def window_start(n_tokens: int, context: int) -> int:
    """First visible token of a sequence of ``n_tokens`` for a model of ``context`` positions."""
    if n_tokens <= context:
        return 0
    jump = max(1, context // 2)
    return -(-(n_tokens - context) // jump) * jump  # ceil to a multiple of the jump


def supports_cache(model: nn.Module) -> bool:
    """Every family caches, except h2q-transformer's opt-in source attention layout."""
    return getattr(model.config, "attention_layout", "heads") != "source"


class Decoder:
    """Logits (V,) and hidden state (C,) after the last token of a sequence."""

    def __init__(
        self, model: nn.Module, use_cache: bool = True, steering: Steering | None = None
    ) -> None:
        self.model, self.steering = model, steering
        self.context = model.config.context
        self.device = next(model.parameters()).device
        self.use_cache = use_cache and supports_cache(model)
        self.forward_tokens = 0  # positions computed so far (a cost readout)
        self._start = 0
        self._seen: list[int] = []  # window tokens the cache holds
        self._state = DecodeState()
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not tokens:
            raise ValueError("the decoder needs at least one token")
        start = window_start(len(tokens), self.context)
        window = tokens[start:]
        if not self.use_cache:
            return self._forward(window, DecodeState())
        if start != self._start:
            self._start, self._seen, self._state, self._last = start, [], DecodeState(), None
        if window == self._seen and self._last is not None:
            return self._last
        common = 0
        limit = min(len(self._seen), len(window) - 1)  # at least one token is fed
        while common < limit and self._seen[common] == window[common]:
            common += 1
        self._state.truncate(common)
        self._last = self._forward(window[common:], self._state)
        self._seen = window
        return self._last

    def _forward(self, new: list[int], state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        if self.steering is not None:
            self.steering.start = state.length
        idx = torch.tensor([new], device=self.device)  # (1, T)
        logits, _ = self.model(idx, state=state)
        state.length += len(new)
        self.forward_tokens += len(new)
        return logits[0, -1].float(), state.hidden[0, -1].float()
