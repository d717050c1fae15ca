"""Structured HamLinear: Y = Σ_r H(A_r) · X · B_rᵀ as two large matrix products, never W.

Dimension legend: N tokens, D = 4S·F width, F factor size, S sub-blocks, R rank.
Each token vector is read as X (4S, F). First Z = X · [B_1ᵀ … B_Rᵀ] for all tokens at once,
one (N·4S, F) × (F, R·F) product; then every token's Σ_r H_r · Z_r as one (N·F, 4S·R) ×
(4S·R, 4S) product. Multiply-adds per token: R·4S·F·(F + 4S), against D² = 16S²F² for the
dense W (fast form), so it is cheaper only where R·(F + 4S) < 4S·F:

    microstream (D 384, F 32, S 3, R 8):   8 · 44 = 352 against 384   (0.92 of dense)
    microstream-cpu, h2q-transformer-cpu (D 256, F 64, S 1, R 8): 544 against 256 (2.1×)
    qrlm-cpu (D 256, F 32, S 2, R 8 → 16):  320 against 256 (1.25×, 2.5× at R 16)

and it moves an (N, 4S, R·F) intermediate, R times the activations, through memory twice.
``benchmarks/mfu.py --lever structured`` measures it against the fast form.
"""

from __future__ import annotations

import torch


def ham_linear_structured(
    x: torch.Tensor, block_matrices: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Same contract as ``ham_linear_reference``: Σ_r H_r · X · B_rᵀ + bias per token."""
    rank, four_s, _ = block_matrices.shape
    factor = factors.shape[-1]
    lead = x.shape[:-1]
    blocks = x.reshape(-1, factor)  # (N·4S, F): row (n, q)
    # right[(n, q), (r, f)] = Σ_g X_n[q, g] · B_r[f, g]
    right = blocks @ factors.reshape(rank * factor, factor).T  # (N·4S, R·F)
    # to rows (n, f) and columns (q, r), the contraction's index
    right = right.view(-1, four_s, rank, factor).permute(0, 3, 1, 2).reshape(-1, four_s * rank)
    # left[(q, r), p] = H_r[p, q]
    left = block_matrices.permute(2, 0, 1).reshape(four_s * rank, four_s)
    out = right @ left  # (N·F, 4S): row (n, f), column p
    out = out.view(-1, factor, four_s).transpose(1, 2).reshape(*lead, four_s * factor)
    return out if bias is None else out + bias


def structured_to_dense_flops(width: int, factor: int, rank: int) -> float:
    """Multiply-adds per token of the structured form over those of the dense W."""
    four_s = width // factor
    return rank * four_s * factor * (factor + four_s) / width**2
