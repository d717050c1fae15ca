"""Generation in the four modes of the Hamiltonian-LLM source (SPEC §6), streamed token by token.

1. sample — temperature / top-k / top-p / repetition penalty (SamplingConfig);
2. steer — sample with a steering vector (steering.py);
3. lookahead L — least action: for each of the top candidates, action = −log p(c) + a
   repeat penalty when c is among the recent tokens, plus the same terms along L greedy
   steps after it; the candidate with the smallest action / (1 + L) wins;
4. flow w — for each top candidate, potential = −log p(c) + a repeat penalty, kinetic =
   w · (1 − cos(h_now, h_after_c)) on the final hidden state; the argmin wins.

Lookahead and flow are deterministic and score raw log-probabilities (temperature 1); the
steering vector, when set, acts in every mode. A constraint (structured output) and
log-probabilities work in the sampling modes (sample, steer).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from h2q_kernels.hamiltonian import frozen_weights
from torch import nn

from h2q_tui.generation.constraint import (
    MAX_TOP_LOGPROBS,
    Constraint,
    TokenLogprob,
    constrained_logits,
    token_logprob,
)
from h2q_tui.generation.decoder import Decoder
from h2q_tui.generation.sampling import SamplingConfig, choose_token
from h2q_tui.generation.steering import SteerConfig, Steering, build_steering
from h2q_tui.generation.text import Codec, TextStream
from h2q_tui.system.thread_choice import ThreadChoice, decoding_choice

MODES = ("sample", "steer", "lookahead", "flow")


@dataclass
class ModeConfig:
    """Mode choice and the source's constants (lookahead L and flow w are the user's)."""

    mode: str = "sample"
    candidates: int = 5  # top-k candidates scored by lookahead and flow
    lookahead: int = 3  # L, greedy roll-out steps
    lookahead_penalty: float = 10.0  # added when a token is among the last ...
    lookahead_window: int = 15  # ... 15 tokens
    flow_weight: float = 0.5  # w, weight of the kinetic term
    flow_penalty: float = 5.0  # added when a candidate is among the last ...
    flow_window: int = 32  # ... 32 tokens

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be ≥ 1, got {self.candidates}")
        if self.lookahead < 0:
            raise ValueError(f"lookahead L must be ≥ 0, got {self.lookahead}")


def _repeat_cost(token: int, tokens: list[int], window: int, penalty: float) -> float:
    return penalty if token in tokens[-window:] else 0.0


def _candidates(decoder: Decoder, tokens: list[int], mode: ModeConfig):
    """Next-token log-probs (V,), the top ``mode.candidates`` ids, and the hidden state now."""
    logits, hidden = decoder(tokens)
    log_probs = F.log_softmax(logits, dim=-1)
    top = torch.topk(log_probs, min(mode.candidates, log_probs.numel())).indices.tolist()
    return log_probs, top, hidden


def lookahead_choice(decoder: Decoder, tokens: list[int], mode: ModeConfig) -> int:
    """The least-action candidate after ``tokens`` (mode 3)."""
    log_probs, top, _ = _candidates(decoder, tokens, mode)
    best, best_action = top[0], float("inf")
    for candidate in top:
        path = tokens + [candidate]
        action = -log_probs[candidate].item()
        action += _repeat_cost(candidate, tokens, mode.lookahead_window, mode.lookahead_penalty)
        for _ in range(mode.lookahead):
            step_log_probs = F.log_softmax(decoder(path)[0], dim=-1)
            greedy = int(torch.argmax(step_log_probs))
            action += -step_log_probs[greedy].item()
            action += _repeat_cost(greedy, path, mode.lookahead_window, mode.lookahead_penalty)
            path = path + [greedy]
        if action / (1 + mode.lookahead) < best_action:
            best, best_action = candidate, action / (1 + mode.lookahead)
    return best


def flow_choice(decoder: Decoder, tokens: list[int], mode: ModeConfig) -> int:
    """The candidate of least potential + kinetic energy after ``tokens`` (mode 4)."""
    log_probs, top, hidden_now = _candidates(decoder, tokens, mode)
    best, best_energy = top[0], float("inf")
    for candidate in top:
        potential = -log_probs[candidate].item()
        potential += _repeat_cost(candidate, tokens, mode.flow_window, mode.flow_penalty)
        _, hidden_after = decoder(tokens + [candidate])
        cosine = F.cosine_similarity(hidden_now, hidden_after, dim=0).item()
        energy = potential + mode.flow_weight * (1.0 - cosine)
        if energy < best_energy:
            best, best_energy = candidate, energy
    return best


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float = 0.0  # from the start (steering setup + prompt) to the first token
    seconds: float = 0.0
    forward_tokens: int = 0  # positions the model computed
    stop_reason: str = ""  # "length", "stop" or "cancelled"
    residual_norm: float = 0.0  # steering scale reference (0 when unsteered)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Generation:
    """One generation request; iterate to stream text pieces, read ``stats``/``text`` after.

    ``cancel()`` (from any thread) stops it before the next token. ``logprobs`` (a count of
    alternatives, 0..20; None: off) records each token's :class:`TokenLogprob` in
    ``token_logprobs``; ``constraint`` limits each token to what it allows and stops the
    generation when it may end and ending is drawn, or once it is finished.
    """

    model: nn.Module
    codec: Codec
    prompt: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    mode: ModeConfig = field(default_factory=ModeConfig)
    steer: SteerConfig = field(default_factory=SteerConfig)
    use_cache: bool = True
    logprobs: int | None = None
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        self.sampling.check()
        self.mode.check()
        sampled = self.mode.mode in ("sample", "steer")
        if not sampled and (self.constraint is not None or self.logprobs is not None):
            raise ValueError("a format constraint and logprobs need mode sample or steer")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {self.logprobs}")
        if self.mode.mode == "steer" and not self.steer.active:
            raise ValueError("mode steer needs a target word and a non-zero strength")
        self.steer.check(len(self.model.residual_blocks()))
        self.prompt_ids = self.codec.encode(self.prompt) or self.codec.encode("\n")
        self.tokens: list[int] = []  # generated ids
        self.token_logprobs: list[TokenLogprob] = []  # one per generated id, when asked
        self.stream = TextStream(self.codec, self.sampling.stop)
        self.stats = GenerationStats(prompt_tokens=len(self.prompt_ids))
        self.steering: Steering | None = None
        self._cancelled = False

    @property
    def text(self) -> str:
        return self.stream.output

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __iter__(self) -> Iterator[str]:
        was_training = self.model.training
        self.model.eval()
        started = time.perf_counter()
        try:
            with torch.no_grad(), frozen_weights(self.model):
                self.steering = build_steering(
                    self.model, self.steer, self.codec.encode, self.prompt_ids
                )
                if self.steering is not None:
                    self.steering.attach(self.model)
                    self.stats.residual_norm = self.steering.residual_norm
                decoder = Decoder(self.model, self.use_cache, self.steering)
                yield from self._loop(decoder, started)
                self.stats.forward_tokens = decoder.forward_tokens
        finally:
            if self.steering is not None:
                self.steering.detach()
            self.model.train(was_training)
            self.stats.seconds = time.perf_counter() - started

    def _loop(self, decoder: Decoder, started: float) -> Iterator[str]:
        generator = torch.Generator().manual_seed(self.sampling.seed)
        self.stats.stop_reason = "length"
        while len(self.tokens) < self.sampling.max_new_tokens:
            if self._cancelled:
                self.stats.stop_reason = "cancelled"
                break
            token = self._next_token(decoder, generator)
            if token is None:  # the constraint's text is complete and ending was chosen
                self.stats.stop_reason = "stop"
                break
            self.tokens.append(token)
            if len(self.tokens) == 1:
                self.stats.first_token_s = time.perf_counter() - started
            self.stats.new_tokens = len(self.tokens)
            piece = self.stream.push(token)
            if piece:
                yield piece
            if self.stream.stopped:
                self.stats.stop_reason = "stop"
                return
            if self.constraint is not None and self.constraint.finished:
                self.stats.stop_reason = "stop"
                break
        tail = self.stream.finish()
        if tail:
            yield tail

    def _next_token(self, decoder: Decoder, generator: torch.Generator) -> int | None:
        context = self.prompt_ids + self.tokens
        if self.mode.mode == "lookahead":
            return lookahead_choice(decoder, context, self.mode)
        if self.mode.mode == "flow":
            return flow_choice(decoder, context, self.mode)
        logits, _ = decoder(context)
        if self.constraint is None:
            token = choose_token(logits, self.tokens, self.sampling, generator)
        else:
            masked = constrained_logits(logits, self.constraint)
            token = choose_token(masked, self.tokens, self.sampling, generator)
            if token == logits.numel():  # the end entry
                return None
            self.constraint.advance(token)
        if self.logprobs is not None:
            self.token_logprobs.append(token_logprob(logits, token, self.logprobs))
        return token


def use_decoding_threads(threads: int | None = None) -> ThreadChoice:
    """Set torch's intra-op threads for decoding on the calling thread: ``threads`` (the
    user's), else the batch-1 rule (one); returns the count and why.

    Torch keeps one process-wide default beside each thread's own setting, so a trainer on
    another thread re-asserts its count every step (Trainer.train_step).
    """
    choice = decoding_choice(threads)
    torch.set_num_threads(choice.threads)
    return choice


def generate_text(model: nn.Module, codec: Codec, prompt: str, **kwargs) -> str:
    """The whole continuation at once (tests, evaluation)."""
    generation = Generation(model, codec, prompt, **kwargs)
    for _ in generation:
        pass
    return generation.text
