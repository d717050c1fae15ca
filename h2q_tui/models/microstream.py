"""H2Q-MicroStream: reversible half-split blocks whose every linear map is a HamLinear.

Dimension legend: B batch, T time, D model width, H = D/2 half width, V vocabulary,
F factor size, R rank. SPEC §3.1: 1,127,968 parameters at D 768, depth 12, F 32, R 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from h2q_kernels.hamiltonian import HamLinear, StructureBank, materialise_weight, orthogonality_penalty
from torch import nn
from torch.utils.checkpoint import checkpoint

from h2q_tui.config import ModelConfig
from h2q_tui.models.common import causal_attention, cross_entropy


class HamFactory:
    """Builds HamLinear layers of one width that share a bank (or each own one)."""

    def __init__(self, config: ModelConfig, width: int) -> None:
        self.config = config
        sub_blocks = width // (4 * config.factor_size)
        self.bank = StructureBank(sub_blocks, config.rank) if config.shared_bank else None

    def __call__(self, width: int) -> HamLinear:
        c = self.config
        return HamLinear(
            width, c.factor_size, c.rank, bank=self.bank, implementation=c.ham_implementation
        )


class HamAttention(nn.Module):
    """Causal multi-head attention with q, k, v, o each a HamLinear(H)."""

    def __init__(self, width: int, n_heads: int, ham: HamFactory) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q, self.k, self.v, self.o = ham(width), ham(width), ham(width), ham(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        return self.o(causal_attention(self.q(x), self.k(x), self.v(x), self.n_heads))


class HamFFN(nn.Module):
    """HamLinear → GELU → HamLinear, no expansion."""

    def __init__(self, width: int, ham: HamFactory) -> None:
        super().__init__()
        self.fc1, self.fc2 = ham(width), ham(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ReversibleBlock(nn.Module):
    """y1 = h1 + Attn(LN1(h2)); y2 = h2 + FFN(LN2(y1)); returns [y1 | y2]."""

    def __init__(self, half: int, n_heads: int, ham: HamFactory, use_checkpointing: bool) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(half), nn.LayerNorm(half)
        self.attn = HamAttention(half, n_heads, ham)
        self.ffn = HamFFN(half, ham)
        self.use_checkpointing = use_checkpointing

    def _branch(self, fn: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(lambda t: fn(norm(t)), x, use_reentrant=False)
        return fn(norm(x))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        h1, h2 = h.chunk(2, dim=-1)  # (B, T, H) each
        y1 = h1 + self._branch(self.attn, self.ln1, h2)
        y2 = h2 + self._branch(self.ffn, self.ln2, y1)
        return torch.cat([y1, y2], dim=-1)


class MicroStream(nn.Module):
    """Byte LM: Emb + learned positions → reversible HamLinear blocks → Linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        half = config.d_model // 2
        ham = HamFactory(config, half)
        self.bank = ham.bank  # registered once here; the layers only reference it
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Parameter(torch.randn(config.context, config.d_model) * 0.02)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            ReversibleBlock(half, config.n_heads, ham, config.checkpointing)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model) if config.final_norm else nn.Identity()
        self.head = nn.Linear(config.d_model, config.vocab_size)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)  # start near uniform: CE ≈ ln V, not ~10 nats
        nn.init.zeros_(self.head.bias)
        if config.ham_init == "unit":
            self._unit_gain_init()
        self.energy = torch.zeros(())

    @torch.no_grad()
    def _unit_gain_init(self) -> None:
        """Rescale each B so ‖W‖_F = sqrt(D) (an orthogonal matrix's), residual outputs by 1/sqrt(2L).

        The source init (orthogonal blocks, 1/sqrt(r+1) per rank) gives W about 2.5x the RMS gain
        of an orthogonal map at F 32, R 8, so the residual stream grows block after block.
        """
        for block in self.blocks:
            for name, layer in (("q", block.attn.q), ("k", block.attn.k), ("v", block.attn.v),
                                ("o", block.attn.o), ("fc1", block.ffn.fc1), ("fc2", block.ffn.fc2)):
                weight = materialise_weight(layer.structure_bank.block_matrices(), layer.B)
                target = weight.shape[0] ** 0.5
                if name in ("o", "fc2"):
                    target /= (2 * len(self.blocks)) ** 0.5
                layer.B.mul_(target / weight.norm())

    def ham_layers(self) -> list[HamLinear]:
        return [m for m in self.modules() if isinstance(m, HamLinear)]

    def penalty(self) -> torch.Tensor:
        return orthogonality_penalty(self.ham_layers())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        time = idx.shape[1]
        h = self.drop(self.tok_emb(idx) + self.pos_emb[:time])  # (B, T, D)
        for block in self.blocks:
            h = block(h)
        self.energy = h.detach().float().norm(dim=-1).mean()
        logits = self.head(self.norm(h))  # (B, T, V)
        return logits, cross_entropy(logits, targets)
