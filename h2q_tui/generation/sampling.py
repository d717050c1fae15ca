"""Next-token choice from logits: repetition penalty (CTRL's, multiplicative), frequency and
presence penalties (OpenAI's, additive), over all generated tokens or the last
``penalty_window``; temperature, top-k, top-p, min-p, seeded draw.

Dimension legend: V vocabulary.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from h2q_tui.units import format_number

FAST_SAMPLING = True  # decoder.reference_decoding() turns it off (today's form)


# ---------------------------------------------------------------- limits
# One rule, one place: the values every entry point (generate, steer-eval, the Generate
# pane, serve) accepts. Each names a setting as its users know it (--top-p, top_p) through
# ``names``. The bounds keep every draw finite: logits ÷ (temperature × penalty) stays far
# inside float32 for any model with finite weights, and torch seeds are 64-bit.
TEMPERATURE_RANGE = (1e-3, 1e3)  # or exactly 0: greedy
PENALTY_RANGE = (1e-3, 1e3)  # the repetition penalty; 1 = off
SEED_MAX = 2**64 - 1
ADDITIVE_PENALTY_RANGE = (-2.0, 2.0)  # frequency and presence penalties, as OpenAI allows
STRENGTH_MAX = 1e3  # |steering strength|, in residual norms; useful values are below ~10


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


# field -> (is it in range?, what the range is)
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (
        lambda t: t == 0 or _within(t, TEMPERATURE_RANGE),
        f"0 (greedy) or in {TEMPERATURE_RANGE[0]:g}..{TEMPERATURE_RANGE[1]:g}",
    ),
    "top_k": (lambda k: k >= 0, ">= 0 (0 = off)"),
    "top_p": (lambda p: 0 < p <= 1, "in (0, 1] (1 = off)"),
    "repetition_penalty": (
        lambda p: _within(p, PENALTY_RANGE),
        f"in {PENALTY_RANGE[0]:g}..{PENALTY_RANGE[1]:g} (1 = off)",
    ),
    "frequency_penalty": (
        lambda p: _within(p, ADDITIVE_PENALTY_RANGE),
        f"in {ADDITIVE_PENALTY_RANGE[0]:g}..{ADDITIVE_PENALTY_RANGE[1]:g} (0 = off)",
    ),
    "presence_penalty": (
        lambda p: _within(p, ADDITIVE_PENALTY_RANGE),
        f"in {ADDITIVE_PENALTY_RANGE[0]:g}..{ADDITIVE_PENALTY_RANGE[1]:g} (0 = off)",
    ),
    "max_new_tokens": (lambda n: n >= 0, ">= 0"),
    "min_p": (lambda p: 0 <= p <= 1, "in 0..1 (0 = off)"),
    "penalty_window": (lambda n: n >= 0, ">= 0 (0 = every generated token)"),
    "seed": (lambda s: 0 <= s <= SEED_MAX, "in 0..2**64-1"),
    "strength": (lambda s: abs(s) <= STRENGTH_MAX, f"in -{STRENGTH_MAX:g}..{STRENGTH_MAX:g}"),
}
NAMES = {
    "top_k": "top-k",
    "top_p": "top-p",
    "repetition_penalty": "repetition penalty",
    "max_new_tokens": "max new tokens",
    "frequency_penalty": "frequency penalty",
    "presence_penalty": "presence penalty",
    "min_p": "min-p",
    "penalty_window": "penalty window",
}


def limit_problem(field: str, value: Any, names: Mapping[str, str] = NAMES) -> str | None:
    """Why ``value`` is not allowed for the setting ``field`` (one line naming it as ``names``
    does), or None when it is; a non-finite number is never allowed."""
    ok, allowed = LIMITS[field]
    name = names.get(field, field)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if ok(value):
        return None
    return f"{name} must be {allowed}, got {format_number(value)}"


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
    # OpenAI's: logit − count × frequency_penalty − (count > 0) × presence_penalty, over
    # the generated tokens; 0 = off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # tokens below min_p × the likeliest one's probability (after temperature, top-k and
    # top-p) are not drawn; 0 = off
    min_p: float = 0.0
    penalty_window: int = 0  # the three penalties read the last n generated tokens; 0 = all

    def check(self, names: Mapping[str, str] = NAMES) -> None:
        """ValueError naming the first setting outside :data:`LIMITS`."""
        fields = (
            "temperature",
            "top_k",
            "top_p",
            "repetition_penalty",
            "frequency_penalty",
            "presence_penalty",
            "max_new_tokens",
            "seed",
            "min_p",
            "penalty_window",
        )
        for field in fields:
            problem = limit_problem(field, getattr(self, field), names)
            if problem:
                raise ValueError(problem)


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


def apply_additive_penalties(
    logits: torch.Tensor, previous: list[int], frequency: float, presence: float
) -> torch.Tensor:
    """OpenAI's penalties: each generated token's logit − count × frequency − presence."""
    if (frequency == 0 and presence == 0) or not previous:
        return logits
    counts = torch.bincount(torch.tensor(previous), minlength=logits.numel()).to(logits.dtype)
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


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
        outside[0] = False  # the likeliest stays, whatever the rounding of a tiny top_p
        logits[order[outside]] = float("-inf")
    return logits


def penalised_tokens(generated: list[int], window: int) -> list[int]:
    """The generated tokens the penalties read: the last ``window`` (0: all of them)."""
    return generated[-window:] if 0 < window < len(generated) else generated


def filter_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Set logits whose probability is below ``min_p`` × the likeliest one's to −inf."""
    if min_p <= 0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.max(), float("-inf"))


class _GeneratedMask:
    """A (V,) bool mask of the tokens in a growing ``generated`` list, updated by appends.

    Kept per thread for the last list seen; any change other than an append rebuilds it.
    """

    def __init__(self) -> None:
        self.tokens: list[int] | None = None  # the caller's list (held, so its id stays)
        self.prefix: list[int] = []  # what the mask holds
        self.mask: torch.Tensor | None = None

    def of(self, generated: list[int], size: int) -> torch.Tensor:
        seen = len(self.prefix)
        reuse = (
            self.tokens is generated
            and self.mask is not None
            and self.mask.numel() == size
            and len(generated) >= seen
            and generated[:seen] == self.prefix
        )
        if not reuse:
            self.tokens, self.prefix = generated, []
            self.mask, seen = torch.zeros(size, dtype=torch.bool), 0
        for token in generated[seen:]:
            self.mask[token] = True
        self.prefix.extend(generated[seen:])
        return self.mask


_masks = threading.local()


def _generated_mask(generated: list[int], size: int) -> torch.Tensor:
    if not hasattr(_masks, "mask"):
        _masks.mask = _GeneratedMask()
    return _masks.mask.of(generated, size)


def choose_token(
    logits: torch.Tensor,
    generated: list[int],
    config: SamplingConfig,
    generator: torch.Generator,
) -> int:
    """One token id from next-token logits (V,) under ``config``.

    The same draw as :func:`choose_token_reference` (the same probabilities over all V
    tokens, hence the same generator state), with fewer small ops: the repetition penalty
    reads a mask of the generated tokens that grows by one entry per token (instead of a
    tensor built from the whole list each time), the fills are out of place on tensors that
    are new anyway, and it all runs under ``torch.inference_mode``. The top-k cut stays a
    full-vocabulary mask: a draw among the k survivors alone would consume the generator
    differently.
    """
    if not FAST_SAMPLING:
        return choose_token_reference(logits, generated, config, generator)
    with torch.inference_mode():  # no autograd or version-counter bookkeeping per op
        return _choose(logits, generated, config, generator)


def _choose(
    logits: torch.Tensor, generated: list[int], config: SamplingConfig, generator: torch.Generator
) -> int:
    """choose_token's fast form (inside inference mode)."""
    logits = logits.float().cpu()
    penalty = config.repetition_penalty
    recent = penalised_tokens(generated, config.penalty_window)
    if penalty != 1.0 and recent:
        if recent is generated:  # the mask grows by one entry per token
            mask = _generated_mask(generated, logits.numel())
        else:  # a window: its tokens change at both ends
            mask = torch.zeros(logits.numel(), dtype=torch.bool)
            mask[torch.tensor(recent)] = True
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(mask, penalised, logits)
    logits = apply_additive_penalties(
        logits, recent, config.frequency_penalty, config.presence_penalty
    )
    if config.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / config.temperature
    if 0 < config.top_k < logits.numel():
        kth = torch.topk(logits, config.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        logits = filter_top_k_top_p(logits, 0, config.top_p)
    logits = filter_min_p(logits, config.min_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def choose_token_reference(
    logits: torch.Tensor,
    generated: list[int],
    config: SamplingConfig,
    generator: torch.Generator,
) -> int:
    """choose_token in today's form (copies, boolean index puts): the reference of the tests."""
    recent = penalised_tokens(generated, config.penalty_window)
    logits = apply_repetition_penalty(logits.float().cpu(), recent, config.repetition_penalty)
    logits = apply_additive_penalties(
        logits, recent, config.frequency_penalty, config.presence_penalty
    )
    if config.temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_top_k_top_p(logits / config.temperature, config.top_k, config.top_p)
    logits = filter_min_p(logits, config.min_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
