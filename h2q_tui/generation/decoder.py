"""Next-token logits and final hidden state for a token sequence, with or without a KV cache.

The visible window: all tokens while they fit in the model's context; past that, the window
start jumps forward in steps of half the context (learned position tables cannot slide by
one). The cached and the recomputing decoder use the same window, so they give the same
logits; the cached one feeds only the tokens its cache has not seen, and can branch: a call
with a sequence that shares only a prefix with the cached one truncates the cache there
(the lookahead and flow modes try several continuations this way).

Two cached forms compute the same thing:

- the *step program* (the default, issue 15 item 4): a decode-only forward per family
  (:class:`GPTStep`, :class:`ReversibleStep`, :class:`QRLMStep`, :class:`HamiltonianStep`)
  that reads the model's own weights and writes keys, values and the other per-position
  tensors into caches preallocated for the whole context, so a token costs an indexed copy
  instead of a ``torch.cat`` of the cache. It calls torch functions directly (no module
  dispatch, no dropout or reshapes that are no-ops at batch 1), fuses the q/k/v projections
  of HamLinear attention into one matrix product (the concatenation of the frozen W, built
  once per decoder: no new parameters, checkpoints load unchanged), computes the head for
  the last position only, and takes the rotary, distance and mask tables of Hamiltonian-LLM
  from tables built once. It is used in eval mode, with every HamLinear frozen
  (``frozen_weights``), and when no hooks other than forward pre-hooks on the residual
  blocks are installed; it runs those pre-hooks itself (steering), so they act as before.
  It runs under ``torch.inference_mode`` (no autograd or version-counter bookkeeping).
- the *model path*: ``model(idx, state=DecodeState())``, the training forward with the
  cache; used otherwise, and on request (``fast=False`` or :func:`reference_decoding`),
  as the reference the step programs are tested against (tests/test_decode_speed.py).

Dimension legend: V vocabulary, C final hidden width, T new positions, nh heads,
hs head size, K context positions (the cache length).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from h2q_kernels.hamiltonian import HamLinear
from torch import nn

from h2q_tui.errors import UserError
from h2q_tui.generation.steering import Steering
from h2q_tui.models.common import DecodeState, cached_causal_mask
from h2q_tui.models.gpt import GPT
from h2q_tui.models.hamiltonian_llm import HamiltonianLLM, linear_scan, rotary_cos_sin
from h2q_tui.models.microstream import MicroStream
from h2q_tui.models.qrlm import QRLM

FAST_DECODING = True  # the default for new decoders; reference_decoding() turns it off


@contextmanager
def reference_decoding() -> Iterator[None]:
    """Within the block new decoders use the model path and sampling its reference form.

    Today's form before the step programs, kept for the tests and benchmarks/generation.py.
    """
    from h2q_tui.generation import sampling

    global FAST_DECODING
    before = FAST_DECODING, sampling.FAST_SAMPLING
    FAST_DECODING, sampling.FAST_SAMPLING = False, False
    try:
        yield
    finally:
        FAST_DECODING, sampling.FAST_SAMPLING = before


def window_start(n_tokens: int, context: int) -> int:
    """First visible token of a sequence of ``n_tokens`` for a model of ``context`` positions."""
    if n_tokens <= context:
        return 0
    jump = max(1, context // 2)
    return -(-(n_tokens - context) // jump) * jump  # ceil to a multiple of the jump


def supports_cache(model: nn.Module) -> bool:
    """Every family caches, except h2q-transformer's opt-in source attention layout."""
    return getattr(model.config, "attention_layout", "heads") != "source"


# ----------------------------------------------------------------------------- step programs
def _norm_of(norm: nn.Module) -> tuple | None:
    """A LayerNorm's arguments for torch.layer_norm, read once; None for nn.Identity."""
    if isinstance(norm, nn.Identity):
        return None
    return norm.normalized_shape, norm.weight, norm.bias, norm.eps


def _norm(x: torch.Tensor, norm: tuple | None) -> torch.Tensor:
    return x if norm is None else torch.layer_norm(x, *norm)


def _pre_hooks(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the block's forward pre-hooks (steering) on its input x (T, C), as a call would."""
    for hook in list(block._forward_pre_hooks.values()):
        result = hook(block, (x[None],))
        if result is not None:
            x = (result[0] if isinstance(result, tuple) else result)[0]
    return x


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU, x · Φ(x), as ``torch.special.ndtr`` and one in-place product.

    The same function as ``F.gelu`` (within 2e-6 of it and as close to float64; tested), but
    cheaper on the (1, 4C) rows of batch-1 decoding, where F.gelu's fixed cost per call
    dominated: 1.04-1.06x on whole generations (``python benchmarks/generation.py --levers``,
    column "both, F.gelu" against "both").
    """
    return torch.special.ndtr(x).mul_(x)


GELU = exact_gelu  # the step programs' GELU (benchmarks/generation.py --levers sets F.gelu)


def _one_query_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(hs) + bias) v for one query per head: (nh, 1, hs) -> (nh, 1, hs).

    Three batched products instead of scaled_dot_product_attention, whose general path
    rescales every cached key on each call.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    if bias is None:
        scores = torch.bmm(q, keys.transpose(1, 2)).mul_(scale)
    else:
        scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=scale)
    return torch.bmm(torch.softmax(scores, dim=-1), values)


def _causal_attention(
    qkv: torch.Tensor, kv: torch.Tensor, offset: int, n_heads: int
) -> torch.Tensor:
    """Causal attention of T new positions at ``offset`` over the cache; qkv (T, 3C) -> (T, C).

    The new keys and values are written into ``kv`` (2, nh, K, hs) at [offset, offset + T).
    """
    time, width = qkv.shape[0], qkv.shape[1] // 3
    end = offset + time
    if time == 1:
        parts = qkv.view(3, n_heads, 1, width // n_heads)  # (3, nh, 1, hs)
        kv[:, :, offset:end] = parts[1:]
        cache = kv[:, :, :end]  # (2, nh, Tk, hs)
        return _one_query_attention(parts[0], cache[0], cache[1]).view(1, width)
    parts = qkv.view(time, 3, n_heads, width // n_heads).permute(1, 2, 0, 3)  # (3, nh, T, hs)
    kv[:, :, offset:end] = parts[1:]
    keys, values = kv[0, :, :end], kv[1, :, :end]  # (nh, Tk, hs)
    if offset == 0:
        out = F.scaled_dot_product_attention(parts[0], keys, values, is_causal=True)
    else:
        mask = cached_causal_mask(time, end, qkv.device)
        out = F.scaled_dot_product_attention(parts[0], keys, values, attn_mask=mask)
    return out.transpose(0, 1).reshape(time, width)  # (nh, T, hs) -> (T, C)


class StepProgram:
    """A decode-only forward of one model: ``run(ids, offset)`` -> logits (V,), hidden (C,).

    ``ids`` are the tokens at positions offset … offset+T−1; everything the cache holds
    past ``offset`` is overwritten, so branching needs no truncation.
    """

    def __init__(self, model: nn.Module) -> None:
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.context = model.config.context
        self.blocks = list(model.residual_blocks())

    def kv_cache(self, n_heads: int, width: int) -> torch.Tensor:
        """Keys and values of one attention layer, (2, nh, K, hs), preallocated."""
        shape = (2, n_heads, self.context, width // n_heads)
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def ids(self, tokens: list[int]) -> torch.Tensor:
        return torch.tensor(tokens, device=self.device)

    def rows(self, table: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """The embedding rows (T, C) of the tokens; one token is a slice, not a lookup."""
        if len(tokens) == 1:
            return table[tokens[0] : tokens[0] + 1]
        return F.embedding(self.ids(tokens), table)

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class GPTStep(StepProgram):
    """The GPT baseline: pre-LN blocks, the fused c_attn as it is."""

    def __init__(self, model: GPT) -> None:
        super().__init__(model)
        self.n_heads = model.config.n_heads
        self.embedding, self.positions = model.wte.weight, model.wpe.weight
        self.layers = [
            (
                _norm_of(b.ln_1),
                (b.attn.c_attn.weight, b.attn.c_attn.bias),
                (b.attn.c_proj.weight, b.attn.c_proj.bias),
                _norm_of(b.ln_2),
                (b.mlp.c_fc.weight, b.mlp.c_fc.bias),
                (b.mlp.c_proj.weight, b.mlp.c_proj.bias),
            )
            for b in self.blocks
        ]
        self.kv = [self.kv_cache(self.n_heads, model.config.d_model) for _ in self.blocks]
        self.final, self.head = _norm_of(model.ln_f), model.lm_head.weight

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        time = len(tokens)
        x = self.rows(self.embedding, tokens) + self.positions[offset : offset + time]
        for block, layer, kv in zip(self.blocks, self.layers, self.kv, strict=True):
            if block._forward_pre_hooks:
                x = _pre_hooks(block, x)
            ln_1, qkv, proj, ln_2, fc, fc_proj = layer
            y = _causal_attention(F.linear(_norm(x, ln_1), *qkv), kv, offset, self.n_heads)
            x = x + F.linear(y, *proj)
            x = x + F.linear(GELU(F.linear(_norm(x, ln_2), *fc)), *fc_proj)
        hidden = _norm(x[-1], self.final)
        return F.linear(hidden, self.head), hidden


def _frozen(layer: HamLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen HamLinear's W and bias, for F.linear."""
    return layer.frozen_weight, layer.bias


def _fused(layers: list[HamLinear]) -> tuple[torch.Tensor, torch.Tensor]:
    """One (3D, D) weight and (3D,) bias from the frozen W of the q, k, v HamLinears."""
    weight = torch.cat([layer.frozen_weight for layer in layers])
    return weight, torch.cat([layer.bias.detach() for layer in layers])


def _quaternion_phase(y: torch.Tensor) -> torch.Tensor:
    """common.phase_rotation on (T, C): each quaternion y -> y · r / sqrt(|y|² + 1e-6)."""
    time, width = y.shape
    quats = y.view(time, 4, width // 4)  # (T, 4, C/4)
    scale = quats[:, 0:1] / torch.sqrt(quats.pow(2).sum(dim=1, keepdim=True) + 1e-6)
    return (quats * scale).reshape(time, width)


class ReversibleStep(StepProgram):
    """MicroStream and h2q-transformer: reversible half-split blocks of frozen HamLinears."""

    def __init__(self, model: MicroStream) -> None:
        super().__init__(model)
        self.n_heads = model.config.n_heads
        self.quaternion = model.config.family == "h2q-transformer"
        self.embedding, self.positions = model.tok_emb.weight, model.pos_emb
        self.layers = [
            (
                _norm_of(b.ln1),
                _fused([b.attn.q, b.attn.k, b.attn.v]),
                _frozen(b.attn.o),
                _norm_of(b.ln2),
                _frozen(b.ffn.fc1),
                _frozen(b.ffn.fc2),
            )
            for b in self.blocks
        ]
        self.kv = [self.kv_cache(self.n_heads, model.config.d_model // 2) for _ in self.blocks]
        self.final, self.head = _norm_of(model.norm), (model.head.weight, model.head.bias)

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        time = len(tokens)
        h = self.rows(self.embedding, tokens) + self.positions[offset : offset + time]
        h1, h2 = h.chunk(2, dim=-1)  # (T, H) each; joined only where a hook or the head needs
        for block, layer, kv in zip(self.blocks, self.layers, self.kv, strict=True):
            if block._forward_pre_hooks:
                h1, h2 = _pre_hooks(block, torch.cat([h1, h2], dim=-1)).chunk(2, dim=-1)
            ln1, qkv, o, ln2, fc1, fc2 = layer
            y = _causal_attention(F.linear(_norm(h2, ln1), *qkv), kv, offset, self.n_heads)
            if self.quaternion:
                y = _quaternion_phase(y)
            h1 = h1 + F.linear(y, *o)
            h2 = h2 + F.linear(GELU(F.linear(_norm(h1, ln2), *fc1)), *fc2)
        hidden = _norm(torch.cat([h1[-1], h2[-1]]), self.final)
        return F.linear(hidden, *self.head), hidden


class QRLMStep(StepProgram):
    """QRLM: pre-LN blocks of frozen HamLinears, q/k/v fused."""

    def __init__(self, model: QRLM) -> None:
        super().__init__(model)
        self.n_heads = model.config.n_heads
        self.embedding, self.positions = model.tok_emb.weight, model.pos_emb
        self.layers = [
            (
                _norm_of(b.ln1),
                _fused([b.attn.q_proj, b.attn.k_proj, b.attn.v_proj]),
                _frozen(b.attn.o_proj),
                _norm_of(b.ln2),
                _frozen(b.fc1),
                _frozen(b.fc2),
            )
            for b in self.blocks
        ]
        self.kv = [self.kv_cache(self.n_heads, model.config.d_model) for _ in self.blocks]
        self.final, self.head = _norm_of(model.norm), (model.head.weight, model.head.bias)

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        time = len(tokens)
        x = self.rows(self.embedding, tokens) + self.positions[offset : offset + time]
        for block, layer, kv in zip(self.blocks, self.layers, self.kv, strict=True):
            if block._forward_pre_hooks:
                x = _pre_hooks(block, x)
            ln1, qkv, o, ln2, fc1, fc2 = layer
            y = _causal_attention(F.linear(_norm(x, ln1), *qkv), kv, offset, self.n_heads)
            x = x + F.linear(y, *o)
            x = x + F.linear(GELU(F.linear(_norm(x, ln2), *fc1)), *fc2)
        hidden = _norm(x[-1], self.final)
        return F.linear(hidden, *self.head), hidden


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
                _norm_of(b.ln1),
                b.attn.c_attn.weight,
                (b.attn.gravity_net.weight, b.attn.gravity_net.bias),
                b.attn.gravity_strength,
                b.attn.c_proj.weight,
                (b.reflex[0].weight.detach()[:, 0, :].t().contiguous(), b.reflex[0]),
                _norm_of(b.ln2),
                b.mlp[0].weight,
                b.mlp[2].weight,
            )
            for b in self.blocks
        ]
        self.q_table = self.embedding.q_emb.weight
        self.final, self.head = _norm_of(model.transformer.ln_f), model.lm_head.weight
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
                x = _pre_hooks(block, x)
            ln1, qkv, gravity_net, strength, proj, reflex, ln2, fc, fc_proj = layer
            h = _norm(x, ln1)
            parts = F.linear(h, qkv).view(time, 3, nh, width // nh)
            gravity = F.softplus(F.linear(h, *gravity_net))  # (T, nh)
            bias = -strength * gravity.t()[..., None] * distance  # (nh, T, Tk)
            if time == 1:
                qk = torch.mm(parts[0, :2].reshape(2 * nh, -1), self.rotation[offset])
                qk = qk.view(2, nh, 1, -1)  # rotated queries and keys
                kv[0, :, offset], kv[1, :, offset] = qk[1, :, 0], parts[0, 2]
                y = _one_query_attention(qk[0], kv[0, :, :end], kv[1, :, :end], bias)
            else:
                parts = parts.permute(1, 2, 0, 3)  # (3, nh, T, hs)
                cos, sin = self.cos[offset:end], self.sin[offset:end]
                qk = apply_rotary_pairs(parts[:2], cos, sin)  # (2, nh, T, hs)
                kv[0, :, offset:end], kv[1, :, offset:end] = qk[1], parts[2]
                bias = bias + self.causal[offset:end, :end]
                y = F.scaled_dot_product_attention(
                    qk[0], kv[0, :, :end], kv[1, :, :end], attn_mask=bias.to(qk.dtype)
                )  # (nh, T, hs)
            y = F.linear(y.transpose(0, 1).reshape(time, width), proj)
            x = x + y + self.reflex(reflex, inputs, x, offset)
            x = x + F.linear(GELU(F.linear(_norm(x, ln2), fc)), fc_proj)
        hidden = _norm(x[-1], self.final)
        return F.linear(hidden, self.head), hidden

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


STEP_PROGRAMS: dict[type[nn.Module], type[StepProgram]] = {
    GPT: GPTStep,
    MicroStream: ReversibleStep,
    QRLM: QRLMStep,
    HamiltonianLLM: HamiltonianStep,
}


def step_program(model: nn.Module) -> StepProgram | None:
    """The model's step program, or None where the model path must run (see the module doc)."""
    program = STEP_PROGRAMS.get(type(model))
    if program is None or model.training or not supports_cache(model):
        return None
    blocks = {id(block) for block in model.residual_blocks()}
    for module in model.modules():
        if module._forward_hooks or getattr(module, "_forward_hooks_with_kwargs", None):
            return None
        if module._forward_pre_hooks and (
            id(module) not in blocks or getattr(module, "_forward_pre_hooks_with_kwargs", None)
        ):
            return None  # the program runs plain pre-hooks of the residual blocks only
        if isinstance(module, HamLinear) and module.frozen_weight is None:
            return None
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return None
    return program(model)


# ----------------------------------------------------------------------------- the decoder
class NonFiniteOutput(UserError):
    """The model's first logits hold NaN or Inf: nothing can be sampled from them."""

    def __init__(self, steered: bool) -> None:
        cause = "the steering or the weights" if steered else "its weights"
        super().__init__(
            f"the model's output is NaN or Inf: {cause} are too large to compute with "
            "(or damaged); nothing was generated"
        )


def check_output(model: nn.Module) -> None:
    """Raise :class:`NonFiniteOutput` when the model's logits for one token are NaN or Inf:
    a loader's check, one forward pass of a single token (finite weights so large that
    they overflow pass the checksum pass's NaN/Inf scan)."""
    Decoder(model, use_cache=False, fast=False)([0])


class Decoder:
    """Logits (V,) and hidden state (C,) after the last token of a sequence.

    ``fast`` (default: the module's FAST_DECODING) lets the cached decoder use the model's
    step program where it has one; ``fast=False`` keeps the model path.
    """

    def __init__(
        self,
        model: nn.Module,
        use_cache: bool = True,
        steering: Steering | None = None,
        fast: bool | None = None,
    ) -> None:
        self.model, self.steering = model, steering
        self.context = model.config.context
        self.device = next(model.parameters()).device
        self.use_cache = use_cache and supports_cache(model)
        self.forward_tokens = 0  # positions computed so far (a cost readout)
        self._start = 0
        self._seen: list[int] = []  # window tokens the cache holds
        self._state = DecodeState()
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self._checked = False  # whether the first logits were checked for NaN/Inf
        fast = FAST_DECODING if fast is None else fast
        self.program: StepProgram | None = None
        if fast and self.use_cache:
            with torch.inference_mode():  # its caches are inference tensors: no version counts
                self.program = step_program(model)

    def __call__(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (V,) and hidden state (C,) after ``tokens``.

        With the step program they are inference tensors (``torch.inference_mode``: no
        autograd or version-counter bookkeeping per op): read them, or clone before an
        in-place change.
        """
        if self.program is not None:
            with torch.inference_mode():
                out = self._call(tokens)
        else:
            with torch.no_grad():
                out = self._call(tokens)
        if not self._checked:  # once: weights that overflow do so on every input
            self._checked = True
            if not bool(torch.isfinite(out[0]).all()):
                raise NonFiniteOutput(self.steering is not None)
        return out

    def _call(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if not tokens:
            raise ValueError("the decoder needs at least one token")
        start = window_start(len(tokens), self.context)
        window = tokens[start:] if start else list(tokens)
        if not self.use_cache:
            return self._forward(window, DecodeState())
        if start != self._start:
            self._start, self._seen, self._state, self._last = start, [], DecodeState(), None
        seen = self._seen
        if len(window) > len(seen) and window[: len(seen)] == seen:
            common = len(seen)  # the usual case: the window grew by new tokens
        elif window == seen and self._last is not None:
            return self._last
        else:
            common = 0
            limit = min(len(seen), len(window) - 1)  # at least one token is fed
            while common < limit and seen[common] == window[common]:
                common += 1
        if self.program is not None:
            self._last = self._step(window[common:], common)
        else:
            self._state.truncate(common)
            self._last = self._forward(window[common:], self._state)
        self._seen = window
        return self._last

    def _step(self, new: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.steering is not None:
            self.steering.start = offset
        logits, hidden = self.program.run(new, offset)
        self.forward_tokens += len(new)
        return logits.float(), hidden.float()

    def _forward(self, new: list[int], state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        if self.steering is not None:
            self.steering.start = state.length
        idx = torch.tensor([new], device=self.device)  # (1, T)
        logits, _ = self.model(idx, state=state)
        state.length += len(new)
        self.forward_tokens += len(new)
        return logits[0, -1].float(), state.hidden[0, -1].float()
