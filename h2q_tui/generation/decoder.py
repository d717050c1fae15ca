"""Next-token logits and final hidden state for a token sequence, with or without a KV cache.

The visible window: all tokens while they fit in the model's context; past that, the window
start jumps forward in steps of half the context (learned position tables cannot slide by
one). The cached and the recomputing decoder use the same window, so they give the same
logits; the cached one feeds only the tokens its cache has not seen, and can branch: a call
with a sequence that shares only a prefix with the cached one truncates the cache there
(the lookahead and flow modes try several continuations this way).

Two cached forms compute the same thing:

- the *step program* (the default): a decode-only forward per family
  (:mod:`~h2q_tui.generation.steps` and the family modules beside it) over caches
  preallocated for the whole context. It is used in eval mode, with every HamLinear frozen
  (``frozen_weights``), and when no hooks other than forward pre-hooks on the residual
  blocks are installed; it runs those pre-hooks itself (steering), so they act as before.
  It runs under ``torch.inference_mode`` (no autograd or version-counter bookkeeping).
- the *model path*: ``model(idx, state=DecodeState())``, the training forward with the
  cache; used otherwise, and on request (``fast=False`` or :func:`reference_decoding`),
  as the reference the step programs are tested against (tests/test_decode_speed.py).

Here: the window, the cache and the choice between the two forms (:func:`step_program`).

Dimension legend: V vocabulary, C final hidden width, T new positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from h2q_kernels.hamiltonian import HamLinear
from torch import nn

from h2q_tui.errors import UserError
from h2q_tui.generation import sampling
from h2q_tui.generation.steering import Steering
from h2q_tui.generation.steps import StepProgram
from h2q_tui.generation.steps_hamiltonian import HamiltonianStep
from h2q_tui.generation.steps_transformer import GPTStep, QRLMStep, ReversibleStep
from h2q_tui.models.common import DecodeState
from h2q_tui.models.gpt import GPT
from h2q_tui.models.hamiltonian_llm import HamiltonianLLM
from h2q_tui.models.microstream import MicroStream
from h2q_tui.models.qrlm import QRLM

FAST_DECODING = True  # the default for new decoders; reference_decoding() turns it off


@contextmanager
def reference_decoding() -> Iterator[None]:
    """Within the block new decoders use the model path and sampling its reference form.

    Today's form before the step programs, kept for the tests and benchmarks/generation.py.
    """
    global FAST_DECODING
    before = FAST_DECODING, sampling.FAST_SAMPLING
    FAST_DECODING, sampling.FAST_SAMPLING = False, False
    try:
        yield
    finally:
        FAST_DECODING, sampling.FAST_SAMPLING = before


def window_start(n_tokens: int, context: int) -> int:
    """First visible token of a sequence of ``n_tokens`` for a model of ``context`` positions."""
    if n_tokens <= context:
        return 0
    jump = max(1, context // 2)
    return -(-(n_tokens - context) // jump) * jump  # ceil to a multiple of the jump


def supports_cache(model: nn.Module) -> bool:
    """Every family caches, except h2q-transformer's opt-in source attention layout."""
    return getattr(model.config, "attention_layout", "heads") != "source"


STEP_PROGRAMS: dict[type[nn.Module], type[StepProgram]] = {
    GPT: GPTStep,
    MicroStream: ReversibleStep,
    QRLM: QRLMStep,
    HamiltonianLLM: HamiltonianStep,
}


def step_program(model: nn.Module) -> StepProgram | None:
    """The model's step program, or None where the model path must run (see the module doc)."""
    program = STEP_PROGRAMS.get(type(model))
    if program is None or model.training or not supports_cache(model):
        return None
    blocks = {id(block) for block in model.residual_blocks()}
    for module in model.modules():
        if module._forward_hooks or getattr(module, "_forward_hooks_with_kwargs", None):
            return None
        if module._forward_pre_hooks and (
            id(module) not in blocks or getattr(module, "_forward_pre_hooks_with_kwargs", None)
        ):
            return None  # the program runs plain pre-hooks of the residual blocks only
        if isinstance(module, HamLinear) and module.frozen_weight is None:
            return None
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return None
    return program(model)


# ----------------------------------------------------------------------------- the decoder
class NonFiniteOutput(UserError):
    """The model's first logits hold NaN or Inf: nothing can be sampled from them."""

    def __init__(self, steered: bool) -> None:
        cause = "the steering or the weights" if steered else "its weights"
        super().__init__(
            f"the model's output is NaN or Inf: {cause} are too large to compute with "
            "(or damaged); nothing was generated"
        )


def check_output(model: nn.Module) -> None:
    """Raise :class:`NonFiniteOutput` when the model's logits for one token are NaN or Inf:
    a loader's check, one forward pass of a single token (finite weights so large that
    they overflow pass the checksum pass's NaN/Inf scan)."""
    Decoder(model, use_cache=False, fast=False)([0])


class Decoder:
    """Logits (V,) and hidden state (C,) after the last token of a sequence.

    ``fast`` (default: the module's FAST_DECODING) lets the cached decoder use the model's
    step program where it has one; ``fast=False`` keeps the model path.
    """

    def __init__(
        self,
        model: nn.Module,
        use_cache: bool = True,
        steering: Steering | None = None,
        fast: bool | None = None,
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
        self._checked = False  # whether the first logits were checked for NaN/Inf
        fast = FAST_DECODING if fast is None else fast
        self.program: StepProgram | None = None
        if fast and self.use_cache:
            with torch.inference_mode():  # its caches are inference tensors: no version counts
                self.program = step_program(model)

    def __call__(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (V,) and hidden state (C,) after ``tokens``.

        With the step program they are inference tensors (``torch.inference_mode``: no
        autograd or version-counter bookkeeping per op): read them, or clone before an
        in-place change.
        """
        if self.program is not None:
            with torch.inference_mode():
                out = self._call(tokens)
        else:
            with torch.no_grad():
                out = self._call(tokens)
        if not self._checked:  # once: weights that overflow do so on every input
            self._checked = True
            if not bool(torch.isfinite(out[0]).all()):
                raise NonFiniteOutput(self.steering is not None)
        return out

    def _call(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not tokens:
            raise ValueError("the decoder needs at least one token")
        start = window_start(len(tokens), self.context)
        window = tokens[start:] if start else list(tokens)
        if not self.use_cache:
            return self._forward(window, DecodeState())
        if start != self._start:
            self._start, self._seen, self._state, self._last = start, [], DecodeState(), None
        seen = self._seen
        if len(window) > len(seen) and window[: len(seen)] == seen:
            common = len(seen)  # the usual case: the window grew by new tokens
        elif window == seen and self._last is not None:
            return self._last
        else:
            common = 0
            limit = min(len(seen), len(window) - 1)  # at least one token is fed
            while common < limit and seen[common] == window[common]:
                common += 1
        if self.program is not None:
            self._last = self._step(window[common:], common)
        else:
            self._state.truncate(common)
            self._last = self._forward(window[common:], self._state)
        self._seen = window
        return self._last

    def _step(self, new: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.steering is not None:
            self.steering.start = offset
        logits, hidden = self.program.run(new, offset)
        self.forward_tokens += len(new)
        return logits.float(), hidden.float()

    def _forward(self, new: list[int], state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        if self.steering is not None:
            self.steering.start = state.length
        idx = torch.tensor([new], device=self.device)  # (1, T)
        logits, _ = self.model(idx, state=state)
        state.length += len(new)
        self.forward_tokens += len(new)
        return logits[0, -1].float(), state.hidden[0, -1].float()
