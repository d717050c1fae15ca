"""Hamiltonian-LLM: momentum embeddings, gravity-biased rotary attention, a causal conv reflex.

Dimension legend: B batch, T time, C model width, V vocabulary, nh heads, hs head size,
L scan block, N blocks of the scan. SPEC §3.4.

Parameter count of the released source model (d 640, 12 layers, 10 heads, V 50304; no
position table, so the 1024 context adds nothing), LayerNorms with bias, conv with bias:
  q_emb + p_emb                 2 · 50304 · 640            = 64,389,120  (lm_head tied to q_emb)
  per block: c_attn 640·1920    = 1,228,800;  c_proj 640·640 = 409,600
             gravity_net 640·10 + 10 = 6,410;  reflex 640·1·3 + 640 = 2,560
             mlp 640·2560 + 2560·640 = 3,276,800;  ln1 + ln2 2 · 1,280 = 2,560
             → 4,926,730, times 12    = 59,120,760
  ln_f 2 · 640                  = 1,280
  total                         = 123,511,160
Any other choice misses: bias-free LayerNorms give 123,495,160, a bias-free conv 123,503,480.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from h2q_tui.config import ModelConfig
from h2q_tui.models.common import (
    DecodeState,
    cross_entropy,
    eager_under_compile,
    matmul_attention,
    offset_of,
    use_matmul_attention,
)

SCAN_BLOCK = 32  # products of at most 32 retentions per level: no division, no overflow


# ----------------------------------------------------------------------------- momentum scan
def _scan_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve m_t = a_t·m_{t-1} + b_t (m_{-1} = 0) on short sequences by one matmul.

    transfer[t, s] = Π_{s<u≤t} a_u is built with a cumulative product of masked factors, so a
    zero a_u (a full reset) just zeroes the entries that cross it; nothing is divided.
    """
    length = a.shape[-1]
    steps = torch.arange(length, device=a.device)
    after_source = steps[None, :] > steps[:, None]  # [s, u]: u > s
    factors = torch.where(after_source, a[..., None, :], 1.0)  # (..., L_s, L_u)
    transfer = factors.cumprod(dim=-1).transpose(-1, -2).tril()  # (..., L_t, L_s)
    return transfer @ b  # (..., L, C)


def linear_scan(a: torch.Tensor, b: torch.Tensor, block: int = SCAN_BLOCK) -> torch.Tensor:
    """All states of m_t = a_t·m_{t-1} + b_t with m_{-1} = 0, without a loop over time.

    Blocked two-level scan: each block of ``block`` steps is solved locally from a zero state,
    the carries between blocks obey the same recurrence (solved recursively), and each block
    adds its carry-in times the running product of its retentions. Products that underflow
    become 0, which is the right limit; a_t = 0 is an exact reset.

    Args:
        a: retention per step, (B, T), values in [0, 1].
        b: input per step, (B, T, C).
        block: scan block length L.

    Returns:
        m, (B, T, C), in the dtype of ``b``.
    """
    batch, time, width = b.shape
    if time <= block:
        return _scan_block(a, b)
    n_blocks = math.ceil(time / block)
    pad = n_blocks * block - time  # trailing steps with a = 1, b = 0 change no real state
    a = F.pad(a, (0, pad), value=1.0).view(batch, n_blocks, block)  # (B, N, L)
    b = F.pad(b, (0, 0, 0, pad)).view(batch, n_blocks, block, width)  # (B, N, L, C)
    local = _scan_block(a, b)  # (B, N, L, C) states from a zero carry-in
    decay = a.cumprod(dim=-1)  # (B, N, L): Π a from the block start to t
    carry_out = linear_scan(decay[..., -1], local[:, :, -1], block)  # (B, N, C)
    carry_in = F.pad(carry_out[:, :-1], (0, 0, 1, 0))  # (B, N, C): zero into the first block
    m = local + decay[..., None] * carry_in[:, :, None, :]  # (B, N, L, C)
    return m.reshape(batch, n_blocks * block, width)[:, :time]


class MomentumEmbedding(nn.Module):
    """x_t = E_q[x_t] + m_t, m the damped running mean of the E_p differences v_t."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.q_emb = nn.Embedding(config.vocab_size, config.d_model)  # "position", tied to the head
        self.p_emb = nn.Embedding(config.vocab_size, config.d_model)  # "momentum"
        self.beta = config.momentum_beta
        self.separator_token = config.separator_token
        self.separator_damping = config.separator_damping

    def separator_mask(self, idx: torch.Tensor) -> torch.Tensor:
        """True where the input token is the document separator (never when there is none)."""
        if self.separator_token < 0:
            return torch.zeros_like(idx, dtype=torch.bool)
        return idx == self.separator_token

    def momentum(self, idx: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        """m for a whole window (B, T) → (B, T, C); the scan runs in fp32 or wider.

        With ``state`` the window continues the cached sequence: v_0 is taken against the
        cached last E_p row and the scan starts from the cached last m.
        """
        p = self.p_emb(idx)  # (B, T, C)
        dtype = p.dtype
        if dtype in (torch.float16, torch.bfloat16):
            p = p.float()
        cached_p = state.cached(self, "p") if state is not None and state.length else None
        before = p[:, :1] if cached_p is None else cached_p[:, -1:].to(p.dtype)
        v = p - torch.cat([before, p[:, :-1]], dim=1)  # v_0 = 0 at the start of a sequence
        keep = 1.0 - self.separator_damping * self.separator_mask(idx).to(p.dtype)  # (B, T)
        retention = self.beta * keep
        with torch.autocast(device_type=p.device.type, enabled=False):
            m = linear_scan(retention, (1.0 - self.beta) * keep[..., None] * v)
            if cached_p is not None:  # carry the cached m_{-1} through the retentions
                carry = state.cached(self, "m")[:, -1:]  # (B, 1, C)
                m = m + retention.cumprod(dim=1)[..., None] * carry
        if state is not None:
            state.extend(self, "p", p, dim=1)
            state.extend(self, "m", m, dim=1)
        return m.to(dtype)

    def momentum_step(
        self,
        m_prev: torch.Tensor,
        prev_token_emb: torch.Tensor,
        token_emb: torch.Tensor,
        is_separator: torch.Tensor,
    ) -> torch.Tensor:
        """One step of the recurrence for incremental decoding.

        Args:
            m_prev: m_{t-1}, (B, C); zeros before the first token.
            prev_token_emb: E_p[x_{t-1}], (B, C); pass ``token_emb`` itself at t = 0 (v_0 = 0).
            token_emb: E_p[x_t], (B, C).
            is_separator: (B,) bool, from ``separator_mask`` of x_t.

        Returns:
            m_t, (B, C).
        """
        keep = 1.0 - self.separator_damping * is_separator.to(m_prev.dtype)[..., None]  # (B, 1)
        return (self.beta * m_prev + (1.0 - self.beta) * (token_emb - prev_token_emb)) * keep

    def forward(self, idx: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        return self.q_emb(idx) + self.momentum(idx, state)  # (B, T) -> (B, T, C)


# ----------------------------------------------------------------------------- attention
def rotary_cos_sin(
    positions: torch.Tensor, head_size: int, base: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (T, hs) for rotate-half rotary embeddings, fp32."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, device=positions.device) / head_size)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + hs/2) of x (B, nh, T, hs) by position-dependent angles."""
    first, second = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    rotated = torch.cat([-second, first], dim=-1)  # (B, nh, T, hs)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


@eager_under_compile
def gravity_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout: float
) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(hs) + bias) v on (B, nh, T, hs), always run eagerly.

    Under train.compile Inductor laid the softmax of this (B, nh, T, Tk) bias out with the
    batch innermost, and each product then copied the 192 matrices of its batch one by one
    (the compiled step ran at 0.42× eager in fp32). Eager, the same kernels as without it.
    """
    if use_matmul_attention(q):  # bf16 CPU training (h2q_tui/models/common.py)
        return matmul_attention(q, k, v, bias, dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)


class GravityAttention(nn.Module):
    """Causal RoPE attention with scores − strength · g_{h,i} · min(|i−j|, max distance)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.gravity_strength = config.gravity_strength
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.gravity_net = nn.Linear(config.d_model, config.n_heads)  # g per token and head
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        distance: torch.Tensor,
        causal: torch.Tensor,
        state: DecodeState | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) already normalised; distance (T, Tk) clamped |i−j|; causal (T, Tk)
        0/−inf; Tk = T, or the cached length + T with ``state``."""
        batch, time, width = x.shape
        head_size = width // self.n_heads
        q, k, v = self.c_attn(x).split(width, dim=-1)  # (B, T, C) each
        q, k, v = (t.view(batch, time, self.n_heads, head_size).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)  # (B, nh, T, hs)
        if state is not None:
            k = state.extend(self, "k", k, dim=2)  # (B, nh, Tk, hs)
            v = state.extend(self, "v", v, dim=2)
        gravity = F.softplus(self.gravity_net(x)).transpose(1, 2)[..., None]  # (B, nh, T, 1)
        bias = -self.gravity_strength * gravity * distance + causal  # (B, nh, T, Tk)
        dropout = self.dropout if self.training else 0.0
        y = gravity_attention(q, k, v, bias, dropout)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(batch, time, width)  # (B, T, C)
        return self.drop(self.c_proj(y))


# ----------------------------------------------------------------------------- blocks, model
class Block(nn.Module):
    """x += Attn(LN1 x) + SiLU(causal depthwise conv(x)); x += MLP(LN2 x)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width, hidden = config.d_model, config.mlp_ratio * config.d_model
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = GravityAttention(config)
        self.reflex_kernel = config.reflex_kernel
        self.reflex = nn.Sequential(
            nn.Conv1d(width, width, config.reflex_kernel, groups=width)  # left-padded in forward
        )
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, width, bias=False)
        )
        self.drop = nn.Dropout(config.dropout)

    def _reflex(self, x: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        """Causal depthwise conv over the block inputs (B, T, C) -> (B, T, C)."""
        history = self.reflex_kernel - 1
        channels_first = x.transpose(1, 2)  # (B, C, T)
        if state is not None:
            before = state.cached(self, "x") if state.length else None
            state.extend(self, "x", x, dim=1)
            if before is not None:  # the last k-1 cached inputs stand in for the zero padding
                before = before[:, -history:].transpose(1, 2)
                channels_first = torch.cat([before, channels_first], dim=2)
        pad = history + x.shape[1] - channels_first.shape[2]
        channels_first = F.pad(channels_first, (pad, 0))  # (B, C, T+k-1)
        return F.silu(self.reflex(channels_first)).transpose(1, 2)  # (B, T, C)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        distance: torch.Tensor,
        causal: torch.Tensor,
        state: DecodeState | None = None,
    ) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln1(x), rope, distance, causal, state) + self._reflex(x, state)
        return x + self.drop(self.mlp(self.ln2(x)))


class HamiltonianLLM(nn.Module):
    """Momentum embeddings → gravity/reflex blocks → LayerNorm → head tied to E_q."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": MomentumEmbedding(config),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layers)),
                "ln_f": nn.LayerNorm(config.d_model),
            }
        )
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.q_emb.weight
        self.energy = torch.zeros(())

    @torch.no_grad()
    def _init_weights(self) -> None:
        """GPT-2 init (N(0, 0.02), residual outputs scaled by 1/sqrt(2L)); small reflex convs.

        The conv gets the same N(0, 0.02) as the linears: PyTorch's default (bound 1/sqrt(k))
        would add an O(1) copy of x to the residual in every block at init.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, (nn.Linear, nn.Conv1d)) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.transformer.h:
            nn.init.normal_(block.attn.c_proj.weight, std=residual_std)
            nn.init.normal_(block.mlp[2].weight, std=residual_std)
            nn.init.normal_(block.attn.gravity_net.weight, std=0.01)
            nn.init.constant_(block.attn.gravity_net.bias, 0.5)  # g = softplus(0.5) ≈ 0.97

    def penalty(self) -> torch.Tensor:
        return torch.zeros((), device=self.lm_head.weight.device)

    def input_embedding(self) -> nn.Embedding:
        return self.transformer.wte.q_emb  # E_q, the source's steering table

    def residual_blocks(self) -> nn.ModuleList:
        return self.transformer.h

    def attention_geometry(self, time: int, device: torch.device, start: int = 0):
        """Rotary tables, clamped distances and the causal mask shared by every block, for
        queries at positions start … start+T−1 over keys 0 … start+T−1."""
        positions = torch.arange(start, start + time, device=device)  # queries
        keys = torch.arange(start + time, device=device)
        head_size = self.config.d_model // self.config.n_heads
        rope = rotary_cos_sin(positions, head_size, self.config.rope_base)  # (T, hs) each
        gap = (positions[:, None] - keys[None, :]).abs()  # (T, Tk): |i - j|
        distance = gap.clamp(max=self.config.gravity_max_distance).float()
        future = keys[None, :] > positions[:, None]
        causal = torch.zeros(time, len(keys), device=device).masked_fill(future, float("-inf"))
        return rope, distance, causal

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        state: DecodeState | None = None,
    ):
        geometry = self.attention_geometry(idx.shape[1], idx.device, offset_of(state))
        x = self.transformer.drop(self.transformer.wte(idx, state))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, *geometry, state)
        self.energy = x.detach().float().norm(dim=-1).mean()  # before ln_f (SPEC §2)
        x = self.transformer.ln_f(x)
        if state is not None:
            state.hidden = x
        logits = self.lm_head(x)  # (B, T, V)
        return logits, cross_entropy(logits, targets)
