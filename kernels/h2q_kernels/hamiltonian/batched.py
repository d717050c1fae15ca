"""Every HamLinear weight of a model built in one batched product per forward.

Dimension legend: L layers in a group, D = 4S·F width, F factor size, S sub-blocks, R rank.

Per layer, the fast form builds H(A_r) (a dozen small ops) and one Kronecker einsum, then
autocast casts W to bf16: six layers a block, each a handful of tiny ops. ``step_weights``
does it once for all layers of one shape: H once per shared bank (or once for all the
stacked banks), one einsum ``(R, 4S, 4S) × (L, R, F, F) → (L, D, D)``, and in bf16 autocast
one cast of the whole stack. Each layer then reads its W from the stack; q, k and v of one
block are applied as one (3D, D) projection (``fused_weight``).
Gradients flow through the stack to every A and B as through the per-layer form.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from h2q_kernels.hamiltonian.bank import quaternion_block_matrix
from h2q_kernels.hamiltonian.layer import HamLinear

# Off: every layer builds its own W, as before (benchmarks/mfu.py --lever batched sets it).
ENABLED = True


def _stacked_weights(group: Sequence[HamLinear]) -> torch.Tensor:
    """W of each layer in ``group`` (same width, factor size, rank), shape (L, D, D)."""
    rank = group[0].rank
    factors = torch.stack([layer.factors() for layer in group])  # (L, R, F, F)
    banks = {id(layer.structure_bank) for layer in group}
    if len(banks) == 1:  # one shared bank: H once
        blocks = group[0].structure_bank.block_matrices(rank)  # (R, 4S, 4S)
        weight = torch.einsum("rpq,lrfg->lpfqg", blocks, factors)
    else:
        terms = torch.stack([layer.structure_bank.terms(rank) for layer in group])
        blocks = quaternion_block_matrix(terms.flatten(0, 1)).unflatten(0, (len(group), rank))
        weight = torch.einsum("lrpq,lrfg->lpfqg", blocks, factors)  # (L, 4S, F, 4S, F)
    width = weight.shape[1] * weight.shape[2]
    return weight.reshape(len(group), width, width)


@contextmanager
def step_weights(layers: Sequence[HamLinear]) -> Iterator[None]:
    """Within the block each of ``layers`` (fast form, not frozen) uses its W from one batched
    product per group of equal shape; outside it every layer is as before."""
    groups: dict[tuple, list[HamLinear]] = {}
    for layer in layers if ENABLED else ():
        if layer.implementation == "fast" and layer.frozen_weight is None:
            key = (layer.bias.shape[0], layer.B.shape[-1], layer.rank, layer.B.dtype)
            groups.setdefault(key, []).append(layer)
    cast = None
    if torch.is_autocast_enabled("cpu"):
        cast = torch.get_autocast_dtype("cpu")
    taken: list[HamLinear] = []
    try:
        for group in groups.values():
            # built in the parameters' dtype: under autocast the einsum's bmm would run in
            # bf16, whose backward here (M 16, N 8, K 10^5) crashes oneDNN's AMX matmul on
            # one thread (SIGFPE, torch 2.13.0)
            with torch.autocast("cpu", enabled=False):
                stack = _stacked_weights(group)
            if cast is not None and stack.device.type == "cpu":
                stack = stack.to(cast)  # once, instead of once per layer and call
            # unbind, not stack[i]: its backward stacks the L gradients once, where each
            # select's would write a zero-filled (L, D, D) tensor
            for layer, weight in zip(group, stack.unbind(0), strict=True):
                layer.step_weight = weight
                taken.append(layer)
        yield
    finally:
        for layer in taken:
            layer.step_weight = None


def fused_weight(*layers: HamLinear) -> torch.Tensor | None:
    """The (n·D, D) weight of ``layers`` applied to one input (q, k, v of one block), when
    the step's batched product built all of them; else None (also for a layer that is no
    longer a HamLinear: a crystallized model's layer packed as integers has no step weight)."""
    if any(getattr(layer, "step_weight", None) is None for layer in layers):
        return None
    return torch.cat([layer.step_weight for layer in layers])  # (n·D, D)
