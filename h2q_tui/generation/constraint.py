"""What a decoding constraint is to the generator, and the log-probabilities it records.

A :class:`Constraint` (structured output: JSON, a JSON schema; built by
:mod:`h2q_tui.generation.grammar`) says before each token which ids may come next and is told
which one came; the generator sets the others' logits to −inf before sampling, and stops
(reason ``stop``) once the constraint is finished. :class:`TokenLogprob` is one generated
token's log-probability under the model's own distribution (the raw logits' log-softmax:
before the repetition, frequency and presence penalties, temperature, top-k/top-p and any
constraint), with the likeliest alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class Constraint(Protocol):
    def allowed(self) -> torch.Tensor:
        """A (V,) bool mask of the ids that may come next (at least one is True)."""
        ...

    def advance(self, token: int) -> None:
        """The id that came (always one ``allowed`` permitted)."""
        ...

    @property
    def finished(self) -> bool:
        """True once the text is complete and nothing more may follow."""
        ...


MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI allows


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), likeliest first


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s log-probability under ``logits`` (V,), with the ``top`` likeliest ids."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    best: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(log_probs, min(top, log_probs.numel()))
        best = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(log_probs[token]), best)
