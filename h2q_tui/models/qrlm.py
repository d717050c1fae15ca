"""QRLM: a pre-LN transformer whose every linear map is a HamLinear, with dynamic rank growth.

Dimension legend: B batch, T time, D width, V vocabulary, F factor size, R rank.
SPEC §3.3. Rank growth adds one Kronecker term to every FFN layer (see
h2q_tui/training/growth.py for the rule); the new parameters are returned so the trainer
registers them with its optimizer (the source left them frozen).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from h2q_kernels.hamiltonian import HamLinear, orthogonality_penalty, step_weights
from torch import nn

from h2q_tui.config import ModelConfig
from h2q_tui.models.common import DecodeState, causal_attention, cross_entropy, offset_of
from h2q_tui.models.microstream import (
    HamFactory,
    init_embedding_and_head,
    project_qkv,
    unit_gain_init,
)


class QRLMAttention(nn.Module):
    def __init__(self, config: ModelConfig, ham: HamFactory) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        width = config.d_model
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            ham(width),
            ham(width),
            ham(width),
            ham(width),
        )

    def forward(self, x: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        q, k, v = project_qkv(x, self.q_proj, self.k_proj, self.v_proj)  # (B, T, D) each
        return self.o_proj(causal_attention(q, k, v, self.n_heads, state=state, owner=self))


class QRLMBlock(nn.Module):
    """x = x + Attn(LN1 x); x = x + fc2(GELU(fc1(LN2 x)))."""

    def __init__(self, config: ModelConfig, ham: HamFactory) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = QRLMAttention(config, ham)
        self.fc1, self.fc2 = ham(config.d_model), ham(config.d_model)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), state))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class QRLM(nn.Module):
    """Byte LM: Emb + learned positions → pre-LN HamLinear blocks → Linear head (no final LN
    unless ``final_norm``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        ham = HamFactory(config, config.d_model)
        self.bank = ham.bank  # registered once here; the layers only reference it
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Parameter(torch.randn(config.context, config.d_model) * 0.02)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(QRLMBlock(config, ham) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model) if config.final_norm else nn.Identity()
        self.head = nn.Linear(config.d_model, config.vocab_size)
        init_embedding_and_head(self.tok_emb, self.head)
        if config.ham_init == "unit":
            outputs = [layer for b in self.blocks for layer in (b.attn.o_proj, b.fc2)]
            unit_gain_init(self.ham_layers(), outputs, len(self.blocks))
        self.energy = torch.zeros(())

    def ham_layers(self) -> list[HamLinear]:
        return [m for m in self.modules() if isinstance(m, HamLinear)]

    def ffn_layers(self) -> list[HamLinear]:
        return [layer for block in self.blocks for layer in (block.fc1, block.fc2)]

    @property
    def ffn_rank(self) -> int:
        return self.blocks[0].fc1.rank

    def grow_ffn_rank(self) -> list[nn.Parameter]:
        """One more Kronecker term in every FFN layer; returns the new parameters."""
        return [p for layer in self.ffn_layers() for p in layer.grow_rank()]

    def penalty(self) -> torch.Tensor:
        """The source's choice: q_proj and fc1 only."""
        return orthogonality_penalty(
            [layer for b in self.blocks for layer in (b.attn.q_proj, b.fc1)]
        )

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
        h = self.tok_emb(idx) + self.pos_emb[start : start + time]  # (B, T, D)
        self.energy = h.detach().float().norm(dim=-1).mean()  # QRLM: norm of the input embedding
        h = self.drop(h)
        with step_weights(self.ham_layers()):  # every W in one batched product
            for block in self.blocks:
                h = block(h, state)
        h = self.norm(h)
        if state is not None:
            state.hidden = h
        logits = self.head(h)  # (B, T, V)
        return logits, cross_entropy(logits, targets)
