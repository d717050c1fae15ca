"""The honest baseline: a plain pre-LN GPT (nanoGPT-style) on the same bytes and budget.

Dimension legend: B batch, T time, C width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from h2q_tui.config import ModelConfig
from h2q_tui.models.common import DecodeState, causal_attention, cross_entropy, offset_of


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        q, k, v = self.c_attn(x).chunk(3, dim=-1)  # (B, T, C) each
        return self.drop(
            self.c_proj(causal_attention(q, k, v, self.n_heads, state=state, owner=self))
        )


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.d_model
        self.c_fc = nn.Linear(config.d_model, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.d_model, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn, self.mlp = SelfAttention(config), MLP(config)

    def forward(self, x: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), state)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.context, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.energy = torch.zeros(())

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def penalty(self) -> torch.Tensor:
        return torch.zeros((), device=self.wte.weight.device)

    def input_embedding(self) -> nn.Embedding:
        return self.wte

    def residual_blocks(self) -> nn.ModuleList:
        return self.blocks

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        state: DecodeState | None = None,
    ):
        time, start = idx.shape[1], offset_of(state)
        pos = torch.arange(start, start + time, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, state)
        x = self.ln_f(x)
        if state is not None:
            state.hidden = x
        self.energy = x.detach().float().norm(dim=-1).mean()
        logits = self.lm_head(x)  # (B, T, V)
        return logits, cross_entropy(logits, targets)
