"""The step program of Hamiltonian-LLM (see :mod:`~h2q_tui.generation.steps`): momentum
embedding, gravity-biased rotary attention and the reflex convolution, with its rotary,
distance and mask tables built once per decoder.

Dimension legend: V vocabulary, C hidden width, T new positions, nh heads, hs head size,
Tk cached positions, K context positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from h2q_tui.codecs.packed import linear
from h2q_tui.generation import steps
from h2q_tui.generation.steps import (
    StepProgram,
    layer_norm,
    layer_norm_args,
    one_query_attention,
    pre_hooks,
)
from h2q_tui.models.hamiltonian_llm import HamiltonianLLM, linear_scan, rotary_cos_sin


class HamiltonianStep(StepProgram):
    """Hamiltonian-LLM: momentum embedding, gravity-biased rotary attention, reflex conv.

    Per position it caches E_p and m (the momentum recurrence), keys and values, and each
    block's input (the reflex conv reads the last k−1 of them; the first k−1 rows of that
    cache stay zero, the conv's left padding). Rotary position p is applied to one query and
    key as a product with a (hs, hs) rotation matrix built once per position.
    """

    def __init__(self, model: HamiltonianLLM) -> None:
        super().__init__(model)
        c = model.config
        self.n_heads, self.width = c.n_heads, c.d_model
        head = c.d_model // c.n_heads
        self.embedding = model.transformer.wte
        self.history = c.reflex_kernel - 1
        wide = torch.float32 if self.dtype in (torch.float16, torch.bfloat16) else self.dtype
        self.p = torch.zeros(self.context, c.d_model, device=self.device, dtype=wide)
        self.m = torch.zeros_like(self.p)
        rows = self.history + self.context
        self.x = [self.zeros(rows, c.d_model) for _ in self.blocks]
        self.layers = [
            (
                layer_norm_args(b.ln1),
                b.attn.c_attn.weight,
                (b.attn.gravity_net.weight, b.attn.gravity_net.bias),
                b.attn.gravity_strength,
                b.attn.c_proj.weight,
                (b.reflex[0].weight.detach()[:, 0, :].t().contiguous(), b.reflex[0]),
                layer_norm_args(b.ln2),
                b.mlp[0].weight,
                b.mlp[2].weight,
            )
            for b in self.blocks
        ]
        self.q_table = self.embedding.q_emb.weight
        self.final, self.head = layer_norm_args(model.transformer.ln_f), model.lm_head.weight
        self.kv = [self.kv_cache(c.n_heads, c.d_model) for _ in self.blocks]
        positions = torch.arange(self.context, device=self.device)
        self.cos, self.sin = rotary_cos_sin(positions, head, c.rope_base)  # (K, hs) each
        self.rotation = rotation_matrices(self.cos, self.sin).to(self.dtype)  # (K, hs, hs)
        gap = (positions[:, None] - positions[None, :]).abs()  # (K, K)
        self.distance = gap.clamp(max=c.gravity_max_distance).float()
        future = positions[None, :] > positions[:, None]
        self.causal = torch.zeros(self.context, self.context, device=self.device).masked_fill(
            future, float("-inf")
        )

    def zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def momentum(self, tokens: list[int], offset: int) -> torch.Tensor:
        """m at the new positions (T, C), as MomentumEmbedding.momentum with a cache."""
        e, end = self.embedding, offset + len(tokens)
        if len(tokens) == 1:  # m = (1 − β)·keep·(p − p_prev) + β·keep·m_prev, on scalars
            token = tokens[0]
            p = e.p_emb.weight[token : token + 1].to(self.p.dtype)  # (1, C)
            keep = 1.0 - e.separator_damping if token == e.separator_token else 1.0
            if offset == 0:
                m = (1.0 - e.beta) * keep * (p - p)
            else:
                m = (1.0 - e.beta) * keep * (p - self.p[offset - 1 : offset])
                m = m + e.beta * keep * self.m[offset - 1 : offset]
        else:
            ids = self.ids(tokens)
            p = F.embedding(ids, e.p_emb.weight).to(self.p.dtype)  # (T, C)
            before = p[:1] if offset == 0 else self.p[offset - 1 : offset]
            keep = 1.0 - e.separator_damping * (ids == e.separator_token).to(p.dtype)  # (T,)
            if e.separator_token < 0:  # never a separator: keep = 1 exactly
                keep = torch.ones_like(keep)
            retention = e.beta * keep
            b = (1.0 - e.beta) * keep[:, None] * (p - torch.cat([before, p[:-1]]))
            m = linear_scan(retention[None], b[None])[0]
            if offset:
                m = m + retention.cumprod(dim=0)[:, None] * self.m[offset - 1 : offset]
        self.p[offset:end], self.m[offset:end] = p, m
        return m.to(self.dtype)

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        time, end, nh, width = len(tokens), offset + len(tokens), self.n_heads, self.width
        x = self.rows(self.q_table, tokens) + self.momentum(tokens, offset)
        distance = self.distance[offset:end, :end]  # (T, Tk)
        for block, layer, kv, inputs in zip(self.blocks, self.layers, self.kv, self.x, strict=True):
            if block._forward_pre_hooks:
                x = pre_hooks(block, x)
            ln1, qkv, gravity_net, strength, proj, reflex, ln2, fc, fc_proj = layer
            h = layer_norm(x, ln1)
            parts = linear(h, qkv).view(time, 3, nh, width // nh)
            gravity = F.softplus(linear(h, *gravity_net))  # (T, nh)
            bias = -strength * gravity.t()[..., None] * distance  # (nh, T, Tk)
            if time == 1:
                qk = torch.mm(parts[0, :2].reshape(2 * nh, -1), self.rotation[offset])
                qk = qk.view(2, nh, 1, -1)  # rotated queries and keys
                kv[0, :, offset], kv[1, :, offset] = qk[1, :, 0], parts[0, 2]
                y = one_query_attention(qk[0], kv[0, :, :end], kv[1, :, :end], bias)
            else:
                parts = parts.permute(1, 2, 0, 3)  # (3, nh, T, hs)
                cos, sin = self.cos[offset:end], self.sin[offset:end]
                qk = apply_rotary_pairs(parts[:2], cos, sin)  # (2, nh, T, hs)
                kv[0, :, offset:end], kv[1, :, offset:end] = qk[1], parts[2]
                bias = bias + self.causal[offset:end, :end]
                y = F.scaled_dot_product_attention(
                    qk[0], kv[0, :, :end], kv[1, :, :end], attn_mask=bias.to(qk.dtype)
                )  # (nh, T, hs)
            y = linear(y.transpose(0, 1).reshape(time, width), proj)
            x = x + y + self.reflex(reflex, inputs, x, offset)
            x = x + linear(steps.GELU(linear(layer_norm(x, ln2), fc)), fc_proj)
        hidden = layer_norm(x[-1], self.final)
        return linear(hidden, self.head), hidden

    def reflex(
        self, conv: tuple, inputs: torch.Tensor, x: torch.Tensor, offset: int
    ) -> torch.Tensor:
        """SiLU(causal depthwise conv) over the block inputs; caches x (T, C) at ``offset``.

        ``inputs`` row history + p holds position p; ``conv`` is (taps (k, C), the Conv1d).
        """
        taps, module = conv
        time, row = x.shape[0], offset + self.history  # the row of position offset
        inputs[row : row + time] = x
        if time == 1:  # one output: Σ_j taps[j] · x_{offset − k + 1 + j}
            out = (inputs[offset : row + 1] * taps).sum(dim=0, keepdim=True)
            return F.silu(out + module.bias) if module.bias is not None else F.silu(out)
        seen = inputs[offset : row + time].t()[None]  # (1, C, T + k − 1)
        out = F.conv1d(seen, module.weight, module.bias, groups=module.groups)  # (1, C, T)
        return F.silu(out)[0].t()


def rotation_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(K, hs, hs) matrices M_p with x M_p = apply_rotary(x) at position p (rotate-half pairs)."""
    positions, head = cos.shape
    half = head // 2
    index = torch.arange(head, device=cos.device)
    partner = torch.cat([index[half:], index[:half]])  # x[partner[i]] enters out[i]
    sign = torch.cat([-torch.ones(half), torch.ones(head - half)]).to(cos.device)
    matrices = torch.zeros(positions, head, head, device=cos.device, dtype=cos.dtype)
    matrices[:, index, index] = cos
    matrices[:, partner, index] = sign * sin
    return matrices


def apply_rotary_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """hamiltonian_llm.apply_rotary on any leading dims: pairs (i, i + hs/2) rotated."""
    first, second = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-second, first], dim=-1) * sin.to(x.dtype)
