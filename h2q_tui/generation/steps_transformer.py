"""The step programs of the transformer families: the GPT baseline, the reversible blocks
of MicroStream and h2q-transformer, and QRLM (see :mod:`~h2q_tui.generation.steps`).

Dimension legend: V vocabulary, C hidden width, T new positions, H half the width.
"""

from __future__ import annotations

import torch
from h2q_kernels.hamiltonian import HamLinear
from h2q_kernels.quantized import step

from h2q_tui.codecs.packed import PackedLinear, PackedWeight, concatenate, kernel_matrix, linear
from h2q_tui.generation import steps
from h2q_tui.generation.steps import (
    StepProgram,
    causal_attention,
    layer_norm,
    layer_norm_args,
    pre_hooks,
)
from h2q_tui.models.gpt import GPT
from h2q_tui.models.microstream import MicroStream
from h2q_tui.models.qrlm import QRLM

FUSED = True  # read at each step: benchmarks/generation.py --levers turns the C step off


def fused_step(program: StepProgram, head: tuple) -> step.PreLNStep | None:
    """The whole token step of a pre-LN program (GPT, QRLM) as one C call, over the program's
    own weights and caches; None where the kernels cannot take it (another device or dtype,
    no compiler): the torch step runs then."""
    if program.device.type != "cpu":
        return None
    try:
        blocks = [
            step.Block(
                ln_1,
                kernel_matrix(*qkv),
                kernel_matrix(*out),
                ln_2,
                kernel_matrix(*fc_1),
                kernel_matrix(*fc_2),
                kv,
            )  # fmt: skip
            for (ln_1, qkv, out, ln_2, fc_1, fc_2), kv in zip(
                program.layers, program.kv, strict=True
            )
        ]
        return step.PreLNStep(
            program.embedding, program.positions, blocks, program.final, kernel_matrix(*head),
            program.n_heads,
        )  # fmt: skip
    except ValueError:
        return None


def run_pre_ln(program: StepProgram, tokens: list[int], offset: int, head: tuple):
    """(logits (V,), hidden (C,)): one new token in one C call where the program has the fused
    step and no block is steered, else through :func:`pre_ln_blocks` in torch."""
    if (
        FUSED and program.fused is not None and len(tokens) == 1
        and not any(block._forward_pre_hooks for block in program.blocks)
    ):  # fmt: skip
        return program.fused(tokens[0], offset, torch.get_num_threads())
    hidden = pre_ln_blocks(program, tokens, offset)
    return linear(hidden, *head), hidden


def pre_ln_blocks(program: StepProgram, tokens: list[int], offset: int) -> torch.Tensor:
    """The last position's final hidden state through pre-LN attention + GELU-MLP blocks whose
    weights ``program.layers`` holds as (ln 1, qkv, out, ln 2, fc 1, fc 2): GPT and QRLM alike."""
    time = len(tokens)
    x = program.rows(program.embedding, tokens) + program.positions[offset : offset + time]
    for block, layer, kv in zip(program.blocks, program.layers, program.kv, strict=True):
        if block._forward_pre_hooks:
            x = pre_hooks(block, x)
        ln_1, qkv, out, ln_2, fc_1, fc_2 = layer
        y = causal_attention(linear(layer_norm(x, ln_1), *qkv), kv, offset, program.n_heads)
        x = x + linear(y, *out)
        x = x + linear(steps.GELU(linear(layer_norm(x, ln_2), *fc_1)), *fc_2)
    return layer_norm(x[-1], program.final)


class GPTStep(StepProgram):
    """The GPT baseline: pre-LN blocks, the fused c_attn as it is."""

    def __init__(self, model: GPT) -> None:
        super().__init__(model)
        self.n_heads = model.config.n_heads
        self.embedding, self.positions = model.wte.weight, model.wpe.weight
        self.layers = [
            (
                layer_norm_args(b.ln_1),
                (b.attn.c_attn.weight, b.attn.c_attn.bias),
                (b.attn.c_proj.weight, b.attn.c_proj.bias),
                layer_norm_args(b.ln_2),
                (b.mlp.c_fc.weight, b.mlp.c_fc.bias),
                (b.mlp.c_proj.weight, b.mlp.c_proj.bias),
            )
            for b in self.blocks
        ]
        self.kv = [self.kv_cache(self.n_heads, model.config.d_model) for _ in self.blocks]
        self.final, self.head = layer_norm_args(model.ln_f), (model.lm_head.weight,)
        self.fused = fused_step(self, self.head)

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        return run_pre_ln(self, tokens, offset, self.head)


def _frozen(layer: HamLinear | PackedLinear) -> tuple[torch.Tensor | PackedWeight, torch.Tensor]:
    """A frozen HamLinear's W (or a crystallized layer's packed W) and bias, for linear()."""
    if isinstance(layer, PackedLinear):
        return layer.weight, layer.bias
    return layer.frozen_weight, layer.bias


def _fused(layers: list) -> tuple[torch.Tensor | PackedWeight, torch.Tensor]:
    """One (3D, D) weight and (3D,) bias from the frozen (or packed) W of the q, k, v layers."""
    bias = torch.cat([layer.bias.detach() for layer in layers])
    if all(isinstance(layer, PackedLinear) for layer in layers):
        return concatenate([layer.weight for layer in layers]), bias
    return torch.cat([_dense(layer) for layer in layers]), bias


def _dense(layer: HamLinear | PackedLinear) -> torch.Tensor:
    return layer.weight.decoded() if isinstance(layer, PackedLinear) else layer.frozen_weight


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
                layer_norm_args(b.ln1),
                _fused([b.attn.q, b.attn.k, b.attn.v]),
                _frozen(b.attn.o),
                layer_norm_args(b.ln2),
                _frozen(b.ffn.fc1),
                _frozen(b.ffn.fc2),
            )
            for b in self.blocks
        ]
        self.kv = [self.kv_cache(self.n_heads, model.config.d_model // 2) for _ in self.blocks]
        self.final, self.head = layer_norm_args(model.norm), (model.head.weight, model.head.bias)

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        time = len(tokens)
        h = self.rows(self.embedding, tokens) + self.positions[offset : offset + time]
        h1, h2 = h.chunk(2, dim=-1)  # (T, H) each; joined only where a hook or the head needs
        for block, layer, kv in zip(self.blocks, self.layers, self.kv, strict=True):
            if block._forward_pre_hooks:
                h1, h2 = pre_hooks(block, torch.cat([h1, h2], dim=-1)).chunk(2, dim=-1)
            ln1, qkv, o, ln2, fc1, fc2 = layer
            y = causal_attention(linear(layer_norm(h2, ln1), *qkv), kv, offset, self.n_heads)
            if self.quaternion:
                y = _quaternion_phase(y)
            h1 = h1 + linear(y, *o)
            h2 = h2 + linear(steps.GELU(linear(layer_norm(h1, ln2), *fc1)), *fc2)
        hidden = layer_norm(torch.cat([h1[-1], h2[-1]]), self.final)
        return linear(hidden, *self.head), hidden


class QRLMStep(StepProgram):
    """QRLM: pre-LN blocks of frozen HamLinears, q/k/v fused."""

    def __init__(self, model: QRLM) -> None:
        super().__init__(model)
        self.n_heads = model.config.n_heads
        self.embedding, self.positions = model.tok_emb.weight, model.pos_emb
        self.layers = [
            (
                layer_norm_args(b.ln1),
                _fused([b.attn.q_proj, b.attn.k_proj, b.attn.v_proj]),
                _frozen(b.attn.o_proj),
                layer_norm_args(b.ln2),
                _frozen(b.fc1),
                _frozen(b.fc2),
            )
            for b in self.blocks
        ]
        self.kv = [self.kv_cache(self.n_heads, model.config.d_model) for _ in self.blocks]
        self.final, self.head = layer_norm_args(model.norm), (model.head.weight, model.head.bias)
        self.fused = fused_step(self, self.head)

    def run(self, tokens: list[int], offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        return run_pre_ln(self, tokens, offset, self.head)
