"""H2Q-MicroStream: reversible half-split blocks whose every linear map is a HamLinear.

Dimension legend: B batch, T time, D model width, H = D/2 half width, V vocabulary,
F factor size, R rank. SPEC §3.1: 1,127,968 parameters at D 768, depth 12, F 32, R 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from h2q_kernels.hamiltonian import (
    HamLinear,
    StructureBank,
    fused_weight,
    orthogonality_penalty,
    step_weights,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from h2q_tui.config import ModelConfig
from h2q_tui.models.common import (
    DecodeState,
    causal_attention,
    cross_entropy,
    offset_of,
    phase_rotation,
)


@torch.no_grad()
def unit_gain_init(
    layers: list[HamLinear], residual_outputs: list[HamLinear], n_blocks: int
) -> None:
    """Rescale each B so ‖W‖_F = sqrt(D) (an orthogonal map's), residual outputs by 1/sqrt(2L).

    The source init (orthogonal blocks, 1/sqrt(r+1) per rank) gives ‖W‖_F/sqrt(D) ≈ 2.5 at F 32,
    R 8, so the residual stream grows block after block (benchmarks/init_gain.py measures it).
    """
    output_ids = {id(layer) for layer in residual_outputs}
    for layer in layers:
        weight = layer.materialised()
        target = weight.shape[0] ** 0.5
        if id(layer) in output_ids:
            target /= (2 * n_blocks) ** 0.5
        layer.B.mul_(target / weight.norm())


def init_embedding_and_head(tok_emb: nn.Embedding, head: nn.Linear) -> None:
    """N(0, 0.02) embedding and head, zero head bias: start near uniform (CE ≈ ln V, not ~10 nats)."""
    nn.init.normal_(tok_emb.weight, std=0.02)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)


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


def project_qkv(
    x: torch.Tensor, q: HamLinear, k: HamLinear, v: HamLinear
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(x), k(x), v(x): one matmul on their stacked weights within ``step_weights``."""
    weight = fused_weight(q, k, v)
    if weight is None:
        return q(x), k(x), v(x)
    bias = torch.cat([q.bias, k.bias, v.bias])
    return F.linear(x, weight, bias).split(q.bias.shape[0], dim=-1)


class HamAttention(nn.Module):
    """Causal multi-head attention with q, k, v, o each a HamLinear(H).

    ``quaternion=True`` (h2q-transformer) applies the phase-rotation feedback to the attention
    output before the o projection.
    """

    def __init__(
        self,
        width: int,
        n_heads: int,
        ham: HamFactory,
        quaternion: bool = False,
        layout: str = "heads",
    ) -> None:
        super().__init__()
        self.n_heads, self.quaternion, self.layout = n_heads, quaternion, layout
        self.q, self.k, self.v, self.o = ham(width), ham(width), ham(width), ham(width)

    def forward(self, x: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        # (B, T, H) -> (B, T, H)
        q, k, v = project_qkv(x, self.q, self.k, self.v)
        out = causal_attention(q, k, v, self.n_heads, self.layout, state, owner=self)
        return self.o(phase_rotation(out) if self.quaternion else out)


class HamFFN(nn.Module):
    """HamLinear → GELU → HamLinear, no expansion."""

    def __init__(self, width: int, ham: HamFactory) -> None:
        super().__init__()
        self.fc1, self.fc2 = ham(width), ham(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ReversibleBlock(nn.Module):
    """y1 = h1 + Attn(LN1(h2)); y2 = h2 + FFN(LN2(y1)); returns [y1 | y2]."""

    def __init__(self, config: ModelConfig, ham: HamFactory) -> None:
        super().__init__()
        half = config.d_model // 2
        self.ln1, self.ln2 = nn.LayerNorm(half), nn.LayerNorm(half)
        quaternion = config.family == "h2q-transformer"
        self.attn = HamAttention(half, config.n_heads, ham, quaternion, config.attention_layout)
        self.ffn = HamFFN(half, ham)
        self.use_checkpointing = config.checkpointing

    def _branch(self, fn, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(lambda t: fn(norm(t)), x, use_reentrant=False)
        return fn(norm(x))

    def forward(self, h: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        h1, h2 = h.chunk(2, dim=-1)  # (B, T, H) each
        attend = self.attn if state is None else (lambda t: self.attn(t, state))
        y1 = h1 + self._branch(attend, self.ln1, h2)
        y2 = h2 + self._branch(self.ffn, self.ln2, y1)
        return torch.cat([y1, y2], dim=-1)


class MicroStream(nn.Module):
    """Byte LM: Emb + learned positions → reversible HamLinear blocks → Linear head.

    With ``family = "h2q-transformer"`` the attention is quaternion attention (SPEC §3.2).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        half = config.d_model // 2
        ham = HamFactory(config, half)
        self.bank = ham.bank  # registered once here; the layers only reference it
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Parameter(torch.randn(config.context, config.d_model) * 0.02)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(ReversibleBlock(config, ham) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model) if config.final_norm else nn.Identity()
        self.head = nn.Linear(config.d_model, config.vocab_size)
        init_embedding_and_head(self.tok_emb, self.head)
        if config.ham_init == "unit":
            outputs = [layer for b in self.blocks for layer in (b.attn.o, b.ffn.fc2)]
            unit_gain_init(self.ham_layers(), outputs, len(self.blocks))
        self.energy = torch.zeros(())

    def ham_layers(self) -> list[HamLinear]:
        return [m for m in self.modules() if isinstance(m, HamLinear)]

    def penalty(self) -> torch.Tensor:
        return orthogonality_penalty(self.ham_layers())

    def input_embedding(self) -> nn.Embedding:
        return self.tok_emb

    def residual_blocks(self) -> nn.ModuleList:
        return self.blocks

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        state: DecodeState | None = None,
    ):
        time, start = idx.shape[1], offset_of(state)
        h = self.drop(self.tok_emb(idx) + self.pos_emb[start : start + time])  # (B, T, D)
        # every W in one batched product; not under activation checkpointing, whose
        # recomputation in backward runs outside this block
        checkpointed = self.config.checkpointing and self.training and torch.is_grad_enabled()
        with step_weights([] if checkpointed else self.ham_layers()):
            for block in self.blocks:
                h = block(h, state)
        self.energy = h.detach().float().norm(dim=-1).mean()
        h = self.norm(h)
        if state is not None:
            state.hidden = h
        logits = self.head(h)  # (B, T, V)
        return logits, cross_entropy(logits, targets)
