"""Steering: add a word's direction to the residual stream at one layer (SPEC §6).

The Hamiltonian-LLM source added α·E_q[first token of the word] to the input of every
position. Generalised here for every family: the direction is the mean of the word's
input-embedding rows, or the activation difference between the word and a contrast prompt
at the chosen layer (ActAdd / CAA style); it is added to the input of block ``layer`` at
every position or only the front ones; its length is ``strength`` times the typical
residual norm at that layer, measured on the prompt. Strength 0 installs no hook at all, so
the output is exactly the unsteered one.

Dimension legend: T time, C residual width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from h2q_tui.generation.sampling import limit_problem
from h2q_tui.units import format_number

DIRECTIONS = ("embedding", "contrast")
POSITIONS = ("all", "front")


@dataclass
class SteerConfig:
    word: str = ""
    strength: float = 0.0  # signed, in units of the residual norm at the layer
    layer: int = 0  # added to the input of this block (0 = the embedding output)
    direction: str = "embedding"  # or "contrast"
    contrast: str = " "  # the neutral prompt of direction = "contrast"
    positions: str = "all"  # or "front": only the first ``front_tokens`` positions
    front_tokens: int = 0  # 0 = the prompt's length

    @property
    def active(self) -> bool:
        return bool(self.word) and self.strength != 0.0

    def check(self, n_layers: int | None = None) -> None:
        """ValueError naming the first bad setting (the layer against ``n_layers`` when given:
        before a model is loaded, only its sign)."""
        problem = limit_problem("strength", self.strength)
        if problem:
            raise ValueError(problem)
        if n_layers is not None and not 0 <= self.layer < n_layers:
            raise ValueError(f"layer must be in 0..{n_layers - 1}, got {format_number(self.layer)}")
        if self.layer < 0:
            raise ValueError(f"layer must be ≥ 0, got {format_number(self.layer)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}")
        if self.strength != 0.0 and not self.word:
            raise ValueError("steering needs a target word")


@torch.no_grad()
def layer_inputs(model: nn.Module, ids: list[int], layer: int) -> torch.Tensor:
    """The residual stream (T, C) entering block ``layer`` for the token ids."""
    captured: list[torch.Tensor] = []
    block = model.residual_blocks()[layer]
    handle = block.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        device = next(model.parameters()).device
        model(torch.tensor([ids], device=device))
    finally:
        handle.remove()
    return captured[0][0].float()


@torch.no_grad()
def word_direction(model: nn.Module, config: SteerConfig, word_ids: list[int], contrast_ids):
    """Unit direction (C,) for the word: embedding rows, or word − contrast activations."""
    if config.direction == "embedding":
        rows = model.input_embedding().weight[torch.tensor(word_ids)].float()
        direction = rows.mean(dim=0)
    else:
        word = layer_inputs(model, word_ids, config.layer).mean(dim=0)
        neutral = layer_inputs(model, contrast_ids, config.layer).mean(dim=0)
        direction = word - neutral
    norm = direction.norm()
    if norm == 0:
        raise ValueError(f"the direction of {config.word!r} is zero (nothing to steer with)")
    return direction / norm


class Steering:
    """A forward pre-hook on one block that adds ``vector`` at the chosen positions.

    ``start`` is the absolute position of the first input of the next forward call (the
    decoder sets it); positions < ``front`` are the front when ``positions = "front"``.
    """

    def __init__(self, config: SteerConfig, vector: torch.Tensor, residual_norm: float, front: int):
        self.config, self.vector = config, vector
        self.residual_norm, self.front = residual_norm, front
        self.start = 0
        self._handle = None

    def attach(self, model: nn.Module) -> None:
        block = model.residual_blocks()[self.config.layer]
        self._handle = block.register_forward_pre_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: tuple):
        x = args[0]  # (B, T, C)
        vector = self.vector.to(x.dtype)
        if self.config.positions == "all":
            return (x + vector, *args[1:])
        positions = torch.arange(self.start, self.start + x.shape[1], device=x.device)
        weight = (positions < self.front).to(x.dtype)[None, :, None]  # (1, T, 1)
        return (x + weight * vector, *args[1:])


def build_steering(
    model: nn.Module, config: SteerConfig, encode, prompt_ids: list[int]
) -> Steering | None:
    """The Steering for ``config`` on ``model`` (None when inactive: strength 0 or no word)."""
    config.check(len(model.residual_blocks()))
    if not config.active:
        return None
    word_ids = encode(config.word)
    if not word_ids:
        raise ValueError("the steering word encodes to no tokens")
    contrast_ids = encode(config.contrast or " ")
    direction = word_direction(model, config, word_ids, contrast_ids)
    window = prompt_ids[-model.config.context :]
    residual = layer_inputs(model, window, config.layer).norm(dim=-1).mean().item()
    front = config.front_tokens or len(prompt_ids)
    return Steering(config, config.strength * residual * direction, residual, front)
