"""Kronecker-rank truncation of HamLinear layers (``rank:K`` and ``rank-shared:K``).

A HamLinear layer has W = Σ_r H(A_r) ⊗ B_r (h2q_kernels.hamiltonian.materialise_weight:
W[(p,f),(q,g)] = Σ_r H_r[p,q]·B_r[f,g], H(A_r) (4S, 4S) the *outer* factor, B_r (F, F) the
inner one). Dimension legend: R rank, S sub-blocks, F factor size, D = 4S·F.

**Optimal (``rank:K``)**. The Van Loan–Pitsianis rearrangement R(W) (rows (p,q), columns
(f,g)) is Σ_r vec H(A_r) vec(B_r)ᵀ, and its best rank-K approximation is the best
Kronecker-rank-K approximation of W in Frobenius norm. H is linear in A: vec H(A) = M vec A
with M (16S², 4S²) of ±1 entries and MᵀM = 4I (each entry of a, b, c, d appears four times, in
disjoint places), so ‖H(A)‖_F = 2‖A‖_F and R(W) = M·C with C = Σ_r vec(A_r) vec(B_r)ᵀ
(4S², F²). Since M/2 is an isometry, the SVD of R(W) is M/2 times the SVD of 2C: truncating
C = U Σ Vᵀ to K terms and setting A'_k = U_k √σ_k (reshaped (4, S, S)), B'_k = √σ_k V_kᵀ
((F, F)) gives Σ_k H(A'_k) ⊗ B'_k = the optimum exactly, still quaternion-structured. Its error
is ‖W − W_K‖_F = 2·sqrt(Σ_{k>K} σ_k²), relative sqrt(Σ_{k>K} σ_k²)/‖σ‖. C has rank at most
min(R, 4S², F²): with S = 1 (microstream-cpu: F 64, half width 256) any K ≥ 4 is exact even
though R = 8. Each layer gets its own K-term bank, so a shared bank is un-shared.

**Shared (``rank-shared:K``, SPEC §7's rule)**. Keep the K terms r with the largest
Σ_layers ‖H(A_r)‖_F·‖B_r‖_F = 2 Σ_layers ‖A_r‖_F‖B_r‖_F over the layers sharing the bank (ties:
lower r); the bank stays shared, each layer keeps the same terms. Never better than optimal.

**State-dict layout** (found by :func:`ham_groups` from key names alone):

- a structure bank is ``<P>bank.A`` (R0, 4, S, S) plus grown terms ``<P>bank.extra.<n>``
  (1, 4, S, S); P = "" for the bank a model shares (microstream, h2q-transformer, qrlm with
  ``shared_bank = true``: key ``bank.A``), P = the layer's prefix for a bank of its own
  (``shared_bank = false``: ``blocks.0.attn.q.bank.A``);
- a HamLinear at prefix L (``blocks.0.attn.q.``, ``blocks.0.fc1.``, …) has ``<L>B``
  (R0, F, F), grown factors ``<L>B_extra.<n>`` (1, F, F) (qrlm rank growth), ``<L>bias`` (D);
  it uses the first rank(L) = R0 + #extras terms of its bank (its own, else the one whose
  prefix is the longest prefix of L); a layer with fewer terms than its bank (qrlm attention
  after growth) is treated as having zero B for the others.

After truncation every layer has exactly K terms (zero terms pad a layer whose C has rank < K)
and no extras: the model to load it into is built with ``model.rank = K``, ``shared_bank`` as
in :attr:`RankTruncation.overrides`, and no rank growth.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

VARIANTS = {"rank": "optimal", "rank-shared": "shared"}  # method name → variant

_BANK = re.compile(r"^(?P<prefix>(?:.*\.)?)bank\.A$")
_BANK_EXTRA = re.compile(r"^(?P<prefix>(?:.*\.)?)bank\.extra\.(?P<n>\d+)$")
_FACTOR = re.compile(r"^(?P<prefix>(?:.*\.)?)B$")
_FACTOR_EXTRA = re.compile(r"^(?P<prefix>(?:.*\.)?)B_extra\.(?P<n>\d+)$")


# ----------------------------------------------------------------------------- plain tensors
def rearranged(bank: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """C = Σ_r vec(A_r) vec(B_r)ᵀ (4S², F²) in float64; R(W) = M·C (see the module docstring).

    Args:
        bank: A, (R_b, 4, S, S); the first R of its terms are used.
        factors: B, (R, F, F), R ≤ R_b.
    """
    rank = factors.shape[0]
    if bank.shape[0] < rank:
        raise ValueError(f"the bank has {bank.shape[0]} terms, the layer {rank}")
    left = bank[:rank].detach().double().reshape(rank, -1)  # (R, 4S²)
    right = factors.detach().double().reshape(rank, -1)  # (R, F²)
    return left.T @ right


@dataclass(frozen=True)
class OptimalTruncation:
    bank: torch.Tensor  # A', (K, 4, S, S): this layer's own
    factors: torch.Tensor  # B', (K, F, F)
    singular_values: torch.Tensor  # all of C's, descending (float64)
    relative_error: float  # ‖W − W_K‖_F / ‖W‖_F


def truncate_optimal(bank: torch.Tensor, factors: torch.Tensor, k: int) -> OptimalTruncation:
    """Frobenius-optimal Kronecker-rank-k approximation of Σ_r H(A_r) ⊗ B_r as K quaternion terms.

    Any k ≥ 1 works; k ≥ rank(C) is exact, and terms beyond C's rank are zero. Outputs keep
    the dtypes of ``bank`` and ``factors``.
    """
    if k < 1:
        raise ValueError(f"rank:{k}: K must be at least 1")
    sub_blocks, factor = bank.shape[-1], factors.shape[-1]
    u, s, vh = torch.linalg.svd(rearranged(bank, factors), full_matrices=False)
    kept = min(k, s.shape[0])
    root = s[:kept].sqrt()
    left = torch.zeros(k, 4 * sub_blocks * sub_blocks, dtype=torch.float64)
    right = torch.zeros(k, factor * factor, dtype=torch.float64)
    left[:kept] = (u[:, :kept] * root).T
    right[:kept] = root[:, None] * vh[:kept]
    total = float(s.square().sum())
    error = (float(s[kept:].square().sum()) / total) ** 0.5 if total else 0.0
    return OptimalTruncation(
        bank=left.reshape(k, 4, sub_blocks, sub_blocks).to(bank.dtype),
        factors=right.reshape(k, factor, factor).to(factors.dtype),
        singular_values=s,
        relative_error=error,
    )


def term_scores(bank: torch.Tensor, factors_per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_layers ‖H(A_r)‖_F·‖B_r‖_F per bank term r, (R_b,) float64 (‖H(A)‖_F = 2‖A‖_F).

    A layer with fewer terms than the bank contributes nothing to the terms it does not use.
    """
    norms = 2.0 * bank.detach().double().reshape(bank.shape[0], -1).norm(dim=1)  # (R_b,)
    scores = torch.zeros(bank.shape[0], dtype=torch.float64)
    for factors in factors_per_layer:
        rank = factors.shape[0]
        scores[:rank] += norms[:rank] * factors.detach().double().reshape(rank, -1).norm(dim=1)
    return scores


def largest_terms(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores (ties: lower index), ascending."""
    order = sorted(range(scores.shape[0]), key=lambda r: (-float(scores[r]), r))
    return sorted(order[:k])


def dropped_error(bank: torch.Tensor, factors: torch.Tensor, kept: Sequence[int]) -> float:
    """‖W − W_kept‖_F / ‖W‖_F when only the terms ``kept`` of this layer remain."""
    rank = factors.shape[0]
    drop = [r for r in range(rank) if r not in set(kept)]
    total = float(rearranged(bank, factors).norm())
    if not drop:
        return 0.0
    rest = float(rearranged(bank[drop], factors[drop]).norm())
    return rest / total if total else 0.0


@dataclass(frozen=True)
class SharedTruncation:
    kept: list[int]  # bank terms kept, ascending
    bank: torch.Tensor  # (K, 4, S, S), still shared
    factors: list[torch.Tensor]  # per layer (K, F, F)
    relative_errors: list[float]  # per layer ‖W − W_K‖_F / ‖W‖_F


def _padded(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    """``tensor`` (r, ...) with zero terms appended up to ``rank``."""
    if tensor.shape[0] >= rank:
        return tensor
    pad = tensor.new_zeros(rank - tensor.shape[0], *tensor.shape[1:])
    return torch.cat([tensor, pad])


def truncate_shared(
    bank: torch.Tensor, factors_per_layer: Sequence[torch.Tensor], k: int
) -> SharedTruncation:
    """SPEC's rule: keep the k terms with the largest Σ_layers ‖H(A_r)‖·‖B_r‖; the bank stays shared.

    Layers with fewer terms than the bank get zero factors for the others; k beyond the bank's
    rank keeps every term and pads zero terms.
    """
    if k < 1:
        raise ValueError(f"rank-shared:{k}: K must be at least 1")
    kept = largest_terms(term_scores(bank, factors_per_layer), k)
    new_bank = _padded(bank[kept], k)
    new_factors, errors = [], []
    for factors in factors_per_layer:
        full = _padded(factors, bank.shape[0])  # (R_b, F, F)
        new_factors.append(_padded(full[kept], k))
        errors.append(
            dropped_error(
                bank[: factors.shape[0]], factors, [r for r in kept if r < factors.shape[0]]
            )
        )
    return SharedTruncation(kept, new_bank, new_factors, errors)


# ----------------------------------------------------------------------------- state dicts
@dataclass(frozen=True)
class HamLayerKeys:
    prefix: str  # "blocks.0.attn.q."
    factor_keys: tuple[str, ...]  # <L>B, then <L>B_extra.0, 1, …
    rank: int

    @property
    def name(self) -> str:
        return self.prefix.rstrip(".")


@dataclass(frozen=True)
class HamGroup:
    """One structure bank and the HamLinear layers that use it."""

    prefix: str  # "" for the model's shared bank, else the owning layer's prefix
    bank_keys: tuple[str, ...]  # <P>bank.A, then <P>bank.extra.0, 1, …
    rank: int
    layers: tuple[HamLayerKeys, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return self.bank_keys + tuple(key for layer in self.layers for key in layer.factor_keys)


def _numbered(
    state_dict: Mapping[str, torch.Tensor], pattern: re.Pattern, prefix: str
) -> list[str]:
    found = []
    for key in state_dict:
        match = pattern.match(key)
        if match and match.group("prefix") == prefix:
            found.append((int(match.group("n")), key))
    return [key for _, key in sorted(found)]


def ham_groups(state_dict: Mapping[str, torch.Tensor]) -> list[HamGroup]:
    """The HamLinear layers of a state_dict, grouped by the structure bank they use.

    Raises ValueError when a layer's shapes do not fit its bank.
    """
    banks: dict[str, tuple[str, ...]] = {}
    for key, tensor in state_dict.items():
        match = _BANK.match(key)
        if (
            match
            and tensor.ndim == 4
            and tensor.shape[1] == 4
            and tensor.shape[2] == tensor.shape[3]
        ):
            prefix = match.group("prefix")
            banks[prefix] = (key, *_numbered(state_dict, _BANK_EXTRA, prefix))
    members: dict[str, list[HamLayerKeys]] = {prefix: [] for prefix in banks}
    for key, tensor in state_dict.items():
        match = _FACTOR.match(key)
        if not match or tensor.ndim != 3 or tensor.shape[1] != tensor.shape[2]:
            continue
        prefix = match.group("prefix")
        owners = [p for p in banks if prefix.startswith(p)]
        if not owners:
            continue  # a 3-D "B" without a bank is not a HamLinear
        owner = max(owners, key=len)
        keys = (key, *_numbered(state_dict, _FACTOR_EXTRA, prefix))
        rank = sum(state_dict[k].shape[0] for k in keys)
        bank_rank = sum(state_dict[k].shape[0] for k in banks[owner])
        sub_blocks, factor = state_dict[banks[owner][0]].shape[-1], tensor.shape[-1]
        bias = state_dict.get(f"{prefix}bias")
        if rank > bank_rank or (bias is not None and bias.shape != (4 * sub_blocks * factor,)):
            raise ValueError(
                f"HamLinear {prefix.rstrip('.')!r} (rank {rank}, factor {factor}) does not match "
                f"its bank {banks[owner][0]!r} (rank {bank_rank}, S {sub_blocks})"
            )
        members[owner].append(HamLayerKeys(prefix, keys, rank))
    return [
        HamGroup(
            prefix, banks[prefix], sum(state_dict[k].shape[0] for k in banks[prefix]), tuple(layers)
        )
        for prefix, layers in members.items()
        if layers
    ]


def _cat(state_dict: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    parts = [state_dict[key] for key in keys]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@dataclass
class RankTruncation:
    state_dict: dict[str, torch.Tensor]  # the truncated model's (new HamLinear keys, rest as given)
    outputs: list[str]  # the new HamLinear tensors' names (banks and factors)
    removed: list[str]  # names of the source's HamLinear tensors no longer present
    overrides: dict[str, object]  # rank, shared_bank (ModelConfig), rank_growths (checkpoint)
    # per layer: its name, rank and both variants' relative W errors
    layers: list[dict[str, object]] = field(default_factory=list)
    kept: dict[str, list[int]] = field(default_factory=dict)  # rank-shared: bank prefix → terms


def model_rank(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """The largest Kronecker rank of any HamLinear bank; None without HamLinear layers."""
    groups = ham_groups(state_dict)
    return max(group.rank for group in groups) if groups else None


def truncate_state_dict(
    state_dict: Mapping[str, torch.Tensor], k: int, variant: str = "optimal"
) -> RankTruncation:
    """Truncate every HamLinear of a state_dict to k Kronecker terms (``optimal`` or ``shared``).

    Tensors other than the HamLinear banks and factors pass through unchanged (biases too).
    Raises a one-line ValueError when the model has no HamLinear or k is not in [1, R).
    """
    method = "rank" if variant == "optimal" else "rank-shared"
    if variant not in ("optimal", "shared"):
        raise ValueError(f"unknown rank variant {variant!r} (optimal or shared)")
    groups = ham_groups(state_dict)
    if not groups:
        raise ValueError(
            f"{method}:{k} does not apply to this model: it has no HamLinear layers "
            "(rank truncation is for microstream, h2q-transformer and qrlm)"
        )
    top = max(group.rank for group in groups)
    if not 1 <= k < top:
        raise ValueError(
            f"{method}:{k}: K must be below the Kronecker rank R = {top} (1 <= K < {top})"
        )
    new: dict[str, dict[str, torch.Tensor]] = {}  # first replaced key → its replacements
    result = RankTruncation({}, [], [], {})
    for group in groups:
        bank = _cat(state_dict, group.bank_keys)  # (R_b, 4, S, S)
        factors = [_cat(state_dict, layer.factor_keys) for layer in group.layers]
        shared = truncate_shared(bank, factors, k)
        result.kept[group.prefix.rstrip(".")] = shared.kept
        if variant == "shared":
            new[group.bank_keys[0]] = {f"{group.prefix}bank.A": shared.bank}
        for layer, layer_factors, factors_k, shared_error in zip(
            group.layers, factors, shared.factors, shared.relative_errors, strict=True
        ):
            best = truncate_optimal(bank, layer_factors, k)
            result.layers.append(
                {
                    "layer": layer.name,
                    "rank": layer.rank,
                    "error_optimal": best.relative_error,
                    "error_shared": shared_error,
                }
            )
            if variant == "optimal":
                new[layer.factor_keys[0]] = {
                    f"{layer.prefix}bank.A": best.bank,
                    f"{layer.prefix}B": best.factors,
                }
            else:
                new[layer.factor_keys[0]] = {f"{layer.prefix}B": factors_k}
        result.removed.extend(group.keys)
    replaced = {key for group in groups for key in group.keys}
    for key, tensor in state_dict.items():
        if key in new:
            for name, value in new[key].items():
                result.state_dict[name] = value.contiguous()
                result.outputs.append(name)
        elif key not in replaced:
            result.state_dict[key] = tensor
    result.removed = [key for key in result.removed if key not in result.state_dict]
    own_banks = all(group.prefix in {layer.prefix for layer in group.layers} for group in groups)
    result.overrides = {
        "rank": k,
        "shared_bank": variant == "shared" and not own_banks,
        "rank_growths": 0,
    }
    return result
