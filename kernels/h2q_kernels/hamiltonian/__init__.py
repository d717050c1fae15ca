"""Hamiltonian (quaternion Kronecker) linear layer: structure bank, block matrix, HamLinear.

Dimension legend: N tokens, D width, F factor (block) size, S = D / (4F) sub-blocks per
quaternion component, R Kronecker rank.
"""

from h2q_kernels.hamiltonian.bank import StructureBank, quaternion_block_matrix
from h2q_kernels.hamiltonian.batched import fused_weight, step_weights
from h2q_kernels.hamiltonian.fast import ham_linear_fast, materialise_weight
from h2q_kernels.hamiltonian.layer import HamLinear, frozen_weights, orthogonality_penalty
from h2q_kernels.hamiltonian.reference import ham_linear_reference
from h2q_kernels.hamiltonian.structured import ham_linear_structured

__all__ = [
    "HamLinear",
    "StructureBank",
    "frozen_weights",
    "fused_weight",
    "ham_linear_fast",
    "ham_linear_reference",
    "ham_linear_structured",
    "materialise_weight",
    "orthogonality_penalty",
    "quaternion_block_matrix",
    "step_weights",
]
