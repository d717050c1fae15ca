"""Pieces shared by the model families: decode state (KV cache), causal attention core,
phase rotation, the CE loss.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# Attention for bf16 training on the CPU: "matmul" (two bf16 matmuls around an fp32
# softmax, written out here), "math" (PyTorch's math SDPA backend) or "flash" (PyTorch's CPU
# flash-attention kernel). Measured by ``python benchmarks/mfu.py --lever attention``
# (docs/performance.md, "MFU"): the flash kernel's bf16 backward took 46 % of a
# source-shaped MicroStream step on an Intel AMX CPU; the math path was 1.2x faster, and
# "matmul" 1.15-1.28x faster than the math path; its error against fp32 is that of the flash
# kernel (tests/test_mfu.py). fp32 keeps flash (the math path was 0.9x). A module attribute
# so that the benchmark can set it per run.
CPU_BF16_TRAINING_ATTENTION = "matmul"


class DecodeState:
    """What incremental decoding keeps between forward calls: per-module sequences along time.

    A model called with ``state`` treats its input as positions ``state.length ...`` of a
    sequence whose earlier positions are cached here (keys and values, or any other
    per-position tensor a family needs), appends the new positions, and leaves its final
    normalised hidden states in ``state.hidden``. The caller advances ``length``.
    ``truncate(n)`` forgets everything after position n, so a decoder can branch (lookahead).
    """

    def __init__(self) -> None:
        self.length = 0
        self.hidden: torch.Tensor | None = None  # (B, T, C) of the last call
        self._seqs: dict[tuple[int, str], tuple[torch.Tensor, int]] = {}

    def extend(self, module: nn.Module, name: str, new: torch.Tensor, dim: int) -> torch.Tensor:
        """Append ``new`` to the module's cached ``name`` along ``dim``; returns the whole."""
        key = (id(module), name)
        if key in self._seqs:
            new = torch.cat([self._seqs[key][0], new], dim=dim)
        self._seqs[key] = (new, dim)
        return new

    def cached(self, module: nn.Module, name: str) -> torch.Tensor | None:
        entry = self._seqs.get((id(module), name))
        return entry[0] if entry is not None else None

    def truncate(self, length: int) -> None:
        """Keep positions [0, length) only."""
        self.length = min(self.length, length)
        for key, (seq, dim) in list(self._seqs.items()):
            self._seqs[key] = (seq.narrow(dim, 0, self.length), dim)


def offset_of(state: DecodeState | None) -> int:
    return state.length if state is not None else 0


def cached_causal_mask(query_len: int, key_len: int, device: torch.device) -> torch.Tensor | None:
    """Boolean (Tq, Tk) mask for queries that are the last Tq of Tk positions; None when Tq = 1."""
    if query_len == 1:
        return None
    rows = torch.arange(key_len - query_len, key_len, device=device)[:, None]
    return torch.arange(key_len, device=device)[None, :] <= rows


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    layout: str = "heads",
    state: DecodeState | None = None,
    owner: nn.Module | None = None,
) -> torch.Tensor:
    """Multi-head causal attention on (B, T, C) projections; returns (B, T, C).

    With ``state`` (incremental decoding) k and v are appended to the keys and values cached
    under ``owner`` and the queries attend to every cached position before them.

    ``layout="source"`` reproduces the h2q-transformer source's reshape without a transpose:
    (B, T, C) viewed as (B, nh, T, hs) puts T/nh consecutive tokens (each cut into nh pieces)
    in each "head", so attention is confined to fixed windows of T/nh tokens. Opt-in only, and
    it cannot be cached (the windows depend on the whole length).
    """
    batch, time, width = q.shape
    head = width // n_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        if layout == "source":
            return t.reshape(batch, n_heads, time, head)  # the source's bug: no transpose
        return t.view(batch, time, n_heads, head).transpose(1, 2)  # (B, nh, T, hs)

    q, k, v = split(q), split(k), split(v)
    if state is not None and layout == "source":
        if state.length:
            raise ValueError("the source attention layout cannot use a KV cache")
    elif state is not None:
        k = state.extend(owner, "k", k, dim=2)  # (B, nh, Tk, hs): the cached keys, then these
        v = state.extend(owner, "v", v, dim=2)
    if k.shape[2] == time and use_matmul_attention(q):
        out = matmul_attention(q, k, v)
    elif k.shape[2] == time:
        with _training_backend(q):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:  # queries are the last T of Tk positions
        mask = cached_causal_mask(time, k.shape[2], q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if layout == "source":
        return out.reshape(batch, time, width)
    return out.transpose(1, 2).reshape(batch, time, width)  # (B, nh, T, hs) -> (B, T, C)


def _bf16_cpu_training(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled()


def use_matmul_attention(q: torch.Tensor) -> bool:
    """Whether this attention call takes ``matmul_attention`` (bf16 CPU training)."""
    return CPU_BF16_TRAINING_ATTENTION == "matmul" and _bf16_cpu_training(q)


def _training_backend(q: torch.Tensor):
    """sdpa_kernel([MATH]) for bf16 training on the CPU when CPU_BF16_TRAINING_ATTENTION is
    "math", else a no-op context: every other case keeps PyTorch's own choice."""
    if CPU_BF16_TRAINING_ATTENTION == "math" and _bf16_cpu_training(q):
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


_EAGER_UNDER_COMPILE: list[Callable] = []  # the functions eager_under_compile marked


def eager_under_compile(fn: Callable) -> Callable:
    """``fn``, which a ``torch.compile``d model calls eagerly (a graph break around it).

    The mark takes effect in :func:`run_marked_eagerly`, which
    h2q_tui/training/compiled.py calls before compiling: ``torch.compiler.disable`` imports
    ``torch._dynamo``, which took 0.8 s at import time (every ``h2q-tui`` start and a
    server's first model load paid it). Until then the call goes straight to ``fn``.
    """
    target = [fn]

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return target[0](*args, **kwargs)

    call.target = target  # [fn], or [fn made eager]
    call.make_eager = lambda: target.__setitem__(0, torch.compiler.disable(fn))
    _EAGER_UNDER_COMPILE.append(call)
    return call


def run_marked_eagerly() -> None:
    """Have every :func:`eager_under_compile` function run eagerly inside compiled code."""
    for call in _EAGER_UNDER_COMPILE:
        call.make_eager()


def _new_causal_bias(length: int, device: torch.device) -> torch.Tensor:
    """(T, T) fp32: 0 on and below the diagonal, -inf above."""
    return torch.full((length, length), float("-inf"), device=device).triu(1)


_cached_causal_bias = functools.lru_cache(maxsize=8)(_new_causal_bias)


def _causal_bias(length: int, device: torch.device) -> torch.Tensor:
    """The causal bias, cached per length; built in the graph under torch.compile (which
    would trace through the cache and warn)."""
    if torch.compiler.is_compiling():
        return _new_causal_bias(length, device)
    return _cached_causal_bias(length, device)


def matmul_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention on (B, nh, T, hs): softmax(q kᵀ / sqrt(hs) + bias) v, the bias causal unless
    given (any shape broadcasting to (B, nh, T, Tk)), with both products in q's dtype (bf16:
    AMX) and the scaling, bias and softmax in fp32."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (B, nh, T, Tk)
    bias = _causal_bias(q.shape[2], q.device) if bias is None else bias.float()
    weights = torch.softmax(scores + bias, dim=-1)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights.to(v.dtype) @ v


def phase_rotation(y: torch.Tensor) -> torch.Tensor:
    """h2q-transformer's feedback: each quaternion y = (r, i, j, k) -> y · r / sqrt(|y|² + 1e-6).

    Component-major layout: component c of quaternion n is dim c·C/4 + n.
    """
    batch, time, width = y.shape
    quats = y.view(batch, time, 4, width // 4)  # (B, T, 4, C/4)
    real = quats[:, :, 0:1]  # (B, T, 1, C/4)
    scale = real / torch.sqrt(quats.pow(2).sum(dim=2, keepdim=True) + 1e-6)
    return (quats * scale).reshape(batch, time, width)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean next-token cross-entropy in nats (fp32), or None without targets."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
