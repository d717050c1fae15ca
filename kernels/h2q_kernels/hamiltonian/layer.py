"""HamLinear as an nn.Module, and the orthogonality penalty on its B factors.

Dimension legend: D width, F factor size, S = D / (4F) sub-blocks, R rank.
"Rank" is a Kronecker rank: W = Σ_r H(A_r) ⊗ B_r is generally of full matrix rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from h2q_kernels.hamiltonian.bank import StructureBank, rank_scaled_orthogonal_
from h2q_kernels.hamiltonian.fast import ham_linear_fast, materialise_weight
from h2q_kernels.hamiltonian.reference import ham_linear_reference
from h2q_kernels.hamiltonian.structured import ham_linear_structured

IMPLEMENTATIONS = {
    "fast": ham_linear_fast,
    "reference": ham_linear_reference,
    "structured": ham_linear_structured,
}


class HamLinear(nn.Module):
    """y = W x + b with W = Σ_r H(A_r) ⊗ B_r; R·F² + D parameters of its own.

    Args:
        width: D, a multiple of 4·factor_size.
        factor_size: F.
        rank: R.
        bank: a shared StructureBank (not registered here, so a checkpoint stores it once);
            None gives this layer a bank of its own.
        implementation: "fast" (materialised W), "structured" (Σ_r H_r X B_rᵀ as two
            products, never W) or "reference" (the einsum form).
    """

    def __init__(
        self,
        width: int,
        factor_size: int = 32,
        rank: int = 8,
        bank: StructureBank | None = None,
        implementation: str = "fast",
    ) -> None:
        super().__init__()
        if width % (4 * factor_size):
            raise ValueError(f"width {width} is not a multiple of 4 x factor_size {factor_size}")
        sub_blocks = width // (4 * factor_size)
        if bank is None:
            self.bank = StructureBank(sub_blocks, rank)
        else:
            if bank.sub_blocks != sub_blocks or bank.rank < rank:
                raise ValueError("shared bank shape does not match this layer")
            self._shared_bank = (bank,)  # a tuple hides it from nn.Module registration
        self.B = nn.Parameter(rank_scaled_orthogonal_(torch.empty(rank, factor_size, factor_size)))
        self.B_extra = nn.ParameterList()  # factors added by rank growth, each (1, F, F)
        self.bias = nn.Parameter(torch.zeros(width))
        self.implementation = implementation
        self.frozen_weight: torch.Tensor | None = None  # set by ``frozen_weights`` (inference)
        # set by ``batched.step_weights`` for one forward: W as a view of a batched stack
        self.step_weight: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.B.shape[0] + len(self.B_extra)

    def factors(self) -> torch.Tensor:
        """All B_r, shape (R, F, F)."""
        return torch.cat([self.B, *self.B_extra]) if len(self.B_extra) else self.B

    def grow_rank(self) -> list[nn.Parameter]:
        """Add one Kronecker term (and a bank term if the bank is short); returns the new parameters.

        The new B is orthogonal scaled by (rank+1)^-1/2, like the initial ones.
        """
        factor = self.B.shape[-1]
        fresh = rank_scaled_orthogonal_(
            torch.empty(self.rank + 1, factor, factor, device=self.B.device)
        )
        new = [nn.Parameter(fresh[-1:].clone().to(self.B.dtype))]
        self.B_extra.append(new[0])
        if self.structure_bank.rank < self.rank:
            new.append(self.structure_bank.grow())
        return new

    @property
    def structure_bank(self) -> StructureBank:
        own = self._modules.get("bank")
        return own if own is not None else self._shared_bank[0]  # type: ignore[return-value]

    def materialised(self) -> torch.Tensor:
        """W as a dense (D, D) matrix."""
        return materialise_weight(self.structure_bank.block_matrices(self.rank), self.factors())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen_weight is not None:
            return F.linear(x, self.frozen_weight, self.bias)
        if self.step_weight is not None:
            return F.linear(x, self.step_weight, self.bias)
        kernel = IMPLEMENTATIONS[self.implementation]
        return kernel(x, self.structure_bank.block_matrices(self.rank), self.factors(), self.bias)

    def extra_repr(self) -> str:
        factor = self.B.shape[-1]
        return f"width={self.bias.shape[0]}, factor_size={factor}, rank={self.rank}, {self.implementation}"


@contextmanager
def frozen_weights(module: nn.Module) -> Iterator[None]:
    """Within the block every HamLinear in ``module`` uses W materialised once, not per call.

    For inference only (no gradients reach A or B through a frozen W). Generation calls the
    model once per token, so building W once instead of every token saves R·D² per layer
    and token. A nested block reuses the outer block's W and leaves it in place on exit.
    """
    layers = [m for m in module.modules() if isinstance(m, HamLinear)]
    fresh = [layer for layer in layers if layer.frozen_weight is None]
    with torch.no_grad():
        for layer in fresh:
            layer.frozen_weight = layer.materialised()
    try:
        yield
    finally:
        for layer in fresh:
            layer.frozen_weight = None


def orthogonality_penalty(layers: Iterable[HamLinear]) -> torch.Tensor:
    """Σ_layers Σ_r ‖B_rᵀB_r − I_F‖_F in fp32 (Frobenius norm, not squared; B only, never the bank)."""
    total = torch.zeros(())
    for layer in layers:
        factors = layer.factors().float()
        eye = torch.eye(factors.shape[-1], device=factors.device)
        gram = factors.transpose(-1, -2) @ factors  # (R, F, F)
        total = total.to(factors.device) + torch.linalg.matrix_norm(gram - eye).sum()
    return total
