"""The structure bank A (R, 4, S, S) and its quaternion block matrices H(A_r) (R, 4S, 4S).

Dimension legend: R rank, S sub-blocks per quaternion component.
"""

from __future__ import annotations

import torch
from torch import nn


def rank_scaled_orthogonal_(tensor: torch.Tensor) -> torch.Tensor:
    """Fill each trailing square matrix with an orthogonal one, slice r scaled by (r+1)^-1/2.

    Args:
        tensor: shape (R, ..., n, n); modified in place.

    Returns:
        The same tensor.
    """
    with torch.no_grad():
        for r in range(tensor.shape[0]):
            for square in tensor[r].reshape(-1, *tensor.shape[-2:]):
                nn.init.orthogonal_(square)
            tensor[r].mul_((r + 1) ** -0.5)
    return tensor


def quaternion_block_matrix(bank: torch.Tensor) -> torch.Tensor:
    """Real form of left Hamilton multiplication by each quaternion A_r = (a, b, c, d).

    Args:
        bank: shape (R, 4, S, S), the components a, b, c, d of each A_r.

    Returns:
        H of shape (R, 4S, 4S) with blocks [[a,-b,-c,-d],[b,a,-d,c],[c,d,a,-b],[d,-c,b,a]].
    """
    a, b, c, d = bank.unbind(dim=1)  # each (R, S, S)
    rows = (
        (a, -b, -c, -d),
        (b, a, -d, c),
        (c, d, a, -b),
        (d, -c, b, a),
    )
    return torch.cat([torch.cat(row, dim=-1) for row in rows], dim=-2)  # (R, 4S, 4S)


class StructureBank(nn.Module):
    """The parameter A of shape (R, 4, S, S), shared by every HamLinear of a model by default.

    ``grow`` appends one more quaternion term (QRLM rank growth) as a new parameter, so an
    optimizer can adopt it without touching the state of the existing ones.
    """

    def __init__(self, sub_blocks: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(rank_scaled_orthogonal_(torch.empty(rank, 4, sub_blocks, sub_blocks)))
        self.extra = nn.ParameterList()  # grown terms, each (1, 4, S, S)

    @property
    def rank(self) -> int:
        return self.A.shape[0] + len(self.extra)

    @property
    def sub_blocks(self) -> int:
        return self.A.shape[-1]

    def terms(self, rank: int | None = None) -> torch.Tensor:
        """The first ``rank`` quaternions, shape (rank, 4, S, S)."""
        full = torch.cat([self.A, *self.extra]) if len(self.extra) else self.A
        return full if rank is None else full[:rank]

    def block_matrices(self, rank: int | None = None) -> torch.Tensor:
        """H(A_r) for the first ``rank`` terms (all by default), shape (rank, 4S, 4S)."""
        return quaternion_block_matrix(self.terms(rank))

    def grow(self) -> nn.Parameter:
        """Append term r = rank: orthogonal components scaled by (r+1)^-1/2."""
        term = torch.empty(self.rank + 1, 4, self.sub_blocks, self.sub_blocks, device=self.A.device)
        new = nn.Parameter(rank_scaled_orthogonal_(term)[-1:].clone().to(self.A.dtype))
        self.extra.append(new)
        return new
