"""What a decoding constraint is to the generator, and the log-probabilities it records.

A :class:`Constraint` (structured output: JSON, a JSON schema; built by
:mod:`h2q_tui.generation.grammar`) says before each token which ids may come next and is told
which one came; the generator sets the others' logits to −inf before sampling. Once the text
may end there, ending is one more choice, weighted by the model's whole probability of ids
the constraint forbids (what the model would write that cannot continue the text; a byte
model has no end token of its own); the generator stops (reason ``stop``) when ending is
chosen or is the only way on. :class:`TokenLogprob` is one generated
token's log-probability under the model's own distribution (the raw logits' log-softmax:
before the repetition, frequency and presence penalties, temperature, top-k/top-p and any
constraint), with the likeliest alternatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


class Constraint(Protocol):
    def allowed(self) -> torch.Tensor:
        """A (V,) bool mask of the ids that may come next (none once finished)."""
        ...

    def advance(self, token: int) -> None:
        """The id that came (always one ``allowed`` permitted)."""
        ...

    @property
    def can_end(self) -> bool:
        """True when the text is complete as it stands (more may still follow)."""
        ...

    @property
    def finished(self) -> bool:
        """True once the text is complete and nothing more may follow."""
        ...


def constrained_logits(logits: torch.Tensor, constraint: Constraint) -> torch.Tensor:
    """``logits`` (V,) with the ids ``constraint`` forbids at −inf, and one more entry (id V:
    end here): when it may end, the forbidden ids' log-sum-exp (so ending draws exactly
    their summed probability), else −inf.

    On the CPU in numpy (sampling happens there anyway): a token's few small torch ops
    cost more than the model's step on a tiny model."""
    forbidden = ~constraint.allowed().cpu().numpy()
    values = logits.detach().float().cpu().numpy()
    out = np.empty(values.size + 1, dtype=np.float32)
    out[:-1] = values
    out[:-1][forbidden] = -np.inf
    out[-1] = -np.inf
    if constraint.can_end and forbidden.any():
        others = values[forbidden]
        top = float(others.max())
        out[-1] = top + math.log(float(np.exp(others - top).sum()))  # their log-sum-exp
    return torch.from_numpy(out)


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
