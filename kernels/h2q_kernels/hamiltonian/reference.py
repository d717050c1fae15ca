"""Readable reference HamLinear: the source systems' two-einsum form.

Dimension legend: N tokens, D = 4S·F width, F factor size, S sub-blocks, R rank.
It builds an (R, N, 4S, F) intermediate, so it is slow and memory-hungry; it is kept
because it reads like the maths, and every fast path is tested against it.
"""

from __future__ import annotations

import torch


def ham_linear_reference(
    x: torch.Tensor, block_matrices: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Y = Σ_r H(A_r) · X · B_rᵀ + bias for every token vector x.

    Args:
        x: (..., D) inputs; each D-vector is read as X (4S, F), row s = s-th block of F.
        block_matrices: H(A_r), shape (R, 4S, 4S).
        factors: B_r, shape (R, F, F).
        bias: (D,) or None.

    Returns:
        (..., D) outputs.
    """
    rank, four_s, _ = block_matrices.shape
    factor = factors.shape[-1]
    lead = x.shape[:-1]
    blocks = x.reshape(-1, four_s, factor)  # (N, 4S, F)
    right = torch.einsum("npg,rfg->rnpf", blocks, factors)  # (R, N, 4S, F): X · B_rᵀ
    out = torch.einsum("rqp,rnpf->nqf", block_matrices, right)  # (N, 4S, F): Σ_r H_r · (X B_rᵀ)
    out = out.reshape(*lead, four_s * factor)  # (..., D)
    return out if bias is None else out + bias
