"""The step program's common parts: :class:`StepProgram` (a decode-only forward over caches
preallocated for the whole context), attention of new positions over the cache, layer norm,
GELU and the residual blocks' pre-hooks. The programs of each model family are in
:mod:`~h2q_tui.generation.steps_transformer` and :mod:`~h2q_tui.generation.steps_hamiltonian`;
:mod:`~h2q_tui.generation.decoder` picks one for a model.

A step program reads the model's own weights and writes keys, values and the other
per-position tensors into its caches, so a token costs an indexed copy instead of a
``torch.cat`` of the cache. It calls torch functions directly (no module dispatch, no dropout
or reshapes that are no-ops at batch 1), fuses the q/k/v projections of HamLinear attention
into one matrix product (the concatenation of the frozen W, built once per decoder: no new
parameters, checkpoints load unchanged) and computes the head for the last position only.

Dimension legend: V vocabulary, C hidden width, T new positions, nh heads, hs head size,
Tk cached positions, K context positions (the cache length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from h2q_tui.models.common import cached_causal_mask


def layer_norm_args(module: nn.Module) -> tuple | None:
    """A LayerNorm's arguments for torch.layer_norm, read once; None for nn.Identity."""
    if isinstance(module, nn.Identity):
        return None
    return module.normalized_shape, module.weight, module.bias, module.eps


def layer_norm(x: torch.Tensor, args: tuple | None) -> torch.Tensor:
    return x if args is None else torch.layer_norm(x, *args)


def pre_hooks(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the block's forward pre-hooks (steering) on its input x (T, C), as a call would."""
    for hook in list(block._forward_pre_hooks.values()):
        result = hook(block, (x[None],))
        if result is not None:
            x = (result[0] if isinstance(result, tuple) else result)[0]
    return x


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU, x · Φ(x), as ``torch.special.ndtr`` and one in-place product.

    The same function as ``F.gelu`` (within 2e-6 of it and as close to float64; tested), but
    cheaper on the (1, 4C) rows of batch-1 decoding, where F.gelu's fixed cost per call
    dominated: 1.04-1.06x on whole generations (``python benchmarks/generation.py --levers``,
    column "both, F.gelu" against "both").
    """
    return torch.special.ndtr(x).mul_(x)


GELU = exact_gelu  # read at each call as steps.GELU: benchmarks/generation.py --levers sets F.gelu


def one_query_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(hs) + bias) v for one query per head: (nh, 1, hs) -> (nh, 1, hs).

    Three batched products instead of scaled_dot_product_attention, whose general path
    rescales every cached key on each call.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    if bias is None:
        scores = torch.bmm(q, keys.transpose(1, 2)).mul_(scale)
    else:
        scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=scale)
    return torch.bmm(torch.softmax(scores, dim=-1), values)


def causal_attention(
    qkv: torch.Tensor, kv: torch.Tensor, offset: int, n_heads: int
) -> torch.Tensor:
    """Causal attention of T new positions at ``offset`` over the cache; qkv (T, 3C) -> (T, C).

    The new keys and values are written into ``kv`` (2, nh, K, hs) at [offset, offset + T).
    """
    time, width = qkv.shape[0], qkv.shape[1] // 3
    end = offset + time
    if time == 1:
        parts = qkv.view(3, n_heads, 1, width // n_heads)  # (3, nh, 1, hs)
        kv[:, :, offset:end] = parts[1:]
        cache = kv[:, :, :end]  # (2, nh, Tk, hs)
        return one_query_attention(parts[0], cache[0], cache[1]).view(1, width)
    parts = qkv.view(time, 3, n_heads, width // n_heads).permute(1, 2, 0, 3)  # (3, nh, T, hs)
    kv[:, :, offset:end] = parts[1:]
    keys, values = kv[0, :, :end], kv[1, :, :end]  # (nh, Tk, hs)
    if offset == 0:
        out = F.scaled_dot_product_attention(parts[0], keys, values, is_causal=True)
    else:
        mask = cached_causal_mask(time, end, qkv.device)
        out = F.scaled_dot_product_attention(parts[0], keys, values, attn_mask=mask)
    return out.transpose(0, 1).reshape(time, width)  # (nh, T, hs) -> (T, C)


class StepProgram:
    """A decode-only forward of one model: ``run(ids, offset)`` -> logits (V,), hidden (C,).

    ``ids`` are the tokens at positions offset … offset+T−1; everything the cache holds
    past ``offset`` is overwritten, so branching needs no truncation.
    """

    def __init__(self, model: nn.Module) -> None:
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.context = model.config.context
        self.blocks = list(model.residual_blocks())

    def kv_cache(self, n_heads: int, width: int) -> torch.Tensor:
        """Keys and values of one attention layer, (2, nh, K, hs), preallocated."""
        shape = (2, n_heads, self.context, width // n_heads)
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def ids(self, tokens: list[int]) -> torch.Tensor:
        return torch.tensor(tokens, device=self.device)

    def rows(self, table: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """The embedding rows (T, C) of the tokens; one token is a slice, not a lookup."""
        if len(tokens) == 1:
            return table[tokens[0] : tokens[0] + 1]
        return F.embedding(self.ids(tokens), table)

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
