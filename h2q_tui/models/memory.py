"""Will a model fit? Estimates of training and inference memory, checked before allocating.

The parameter count is exact and free: the model is built on ``torch.device("meta")`` (shapes
only, no storage) with one and with two layers, and the per-layer difference is extrapolated
to ``n_layers`` (every family repeats identical blocks; a shared structure bank is outside
them). The first meta build in a process takes ~2 s (torch imports its meta kernels and
torch._dynamo, which training imports anyway); later ones take milliseconds. Training needs,
in fp32:

    params x (4 weights + 4 gradients + 8 AdamW moments) bytes
    + batch x context x (n_layers x d_model x ACTIVATION_FLOATS + 3 x vocab_size) x 4 bytes

``ACTIVATION_FLOATS`` (12) is the number of d_model-wide floats per token and layer that the
backward pass keeps, kept at the low end of what one fp32 step measured (peak RSS over the
steady state, batch 16, context 256: microstream/h2q-transformer 13-16, gpt and qrlm ~25,
hamiltonian-llm ~64), so the check refuses only runs that cannot fit; ``3 x vocab`` is the
logits, their softmax and gradient. With activation checkpointing (MicroStream and
h2q-transformer, ``model.checkpointing``) each block keeps only its input,
``CHECKPOINTED_FLOATS`` (3) a layer, plus one block's ``ACTIVATION_FLOATS`` while it is
recomputed: ``benchmarks/mfu.py --lever checkpointing`` measured 185 against 682 MiB kept for
the backward by the source-shaped microstream step, 0.27 of it, at ~0.78x the speed. A run
is refused when the estimate exceeds the memory available now
(``psutil.virtual_memory().available``, or the free memory of the CUDA device); one that
would fit only with checkpointing is told so.
"""

from __future__ import annotations

import dataclasses

import psutil
import torch

from h2q_tui.config import ModelConfig, RunConfig
from h2q_tui.errors import UserError
from h2q_tui.models import build_model, count_parameters
from h2q_tui.units import first_line, format_size

ACTIVATION_FLOATS = 12
CHECKPOINTED_FLOATS = 3  # a layer's kept floats under activation checkpointing (see above)
CHECKPOINTING_FAMILIES = ("microstream", "h2q-transformer")  # model.checkpointing applies
TRAIN_BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weights, gradients, AdamW exp_avg + exp_avg_sq
WEIGHT_BYTES_PER_PARAM = 4


class ModelBuildError(UserError):
    """The model builder refused the config (its reason is the message)."""


def _meta_parameters(config: ModelConfig, rank_growths: int = 0) -> int:
    with torch.device("meta"):
        model = build_model(config)
        for _ in range(rank_growths):
            model.grow_ffn_rank()
    return count_parameters(model)


def parameter_count(config: ModelConfig, rank_growths: int = 0) -> int:
    """Trainable parameters of ``config``'s model, without allocating any of them.

    Raises:
        UserError: the model cannot be built from this config (the builder's reason).
    """
    try:
        if config.n_layers <= 2:
            return _meta_parameters(config, rank_growths)
        one = _meta_parameters(dataclasses.replace(config, n_layers=1), rank_growths)
        two = _meta_parameters(dataclasses.replace(config, n_layers=2), rank_growths)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any builder failure is a config problem here
        raise ModelBuildError(
            f"model.* config cannot be built ({config.family}): {first_line(exc)}"
        ) from None
    return one + (two - one) * (config.n_layers - 1)


def parameter_bound(config: ModelConfig, rank_growths: int = 0) -> int:
    """A quick upper bound of ``parameter_count`` for every family (arithmetic only).

    Per layer: dense attention + MLP ((4 + 2 x mlp_ratio) d^2), six HamLinear layers with
    their own factors and banks (R x (F^2 + 4 S^2) + d each, S = d / 4F), and small per-width
    terms; outside the layers: three vocab x d tables, the position table and a shared bank.
    """
    d, rank = config.d_model, config.rank + rank_growths
    bank = rank * 4 * (d // (4 * config.factor_size)) ** 2
    ham = 6 * (rank * config.factor_size**2 + bank + d)
    dense = (4 + 2 * config.mlp_ratio) * d * d
    per_layer = dense + ham + d * (config.n_heads + config.reflex_kernel + 16)
    return config.n_layers * per_layer + 3 * config.vocab_size * d + config.context * d + bank


def _surely_fits(need_bound: int, have: int) -> bool:
    """True when even the upper bound uses at most half the memory: skip the exact count."""
    return need_bound <= have // 2


def training_bytes(config: RunConfig, params: int | None = None) -> int:
    """Estimated peak bytes of one training step (see the module docstring)."""
    m, t = config.model, config.train
    params = parameter_count(m) if params is None else params
    if m.checkpointing and m.family in CHECKPOINTING_FAMILIES:
        kept = m.n_layers * m.d_model * CHECKPOINTED_FLOATS + m.d_model * ACTIVATION_FLOATS
    else:
        kept = m.n_layers * m.d_model * ACTIVATION_FLOATS
    per_token = kept + 3 * m.vocab_size
    return params * TRAIN_BYTES_PER_PARAM + t.batch_size * m.context * per_token * 4


def available_bytes(device: torch.device | str = "cpu") -> tuple[int, str]:
    """(bytes free now, where): the machine's available RAM, or a CUDA device's free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"{torch.cuda.get_device_name(device)} has"
    return int(psutil.virtual_memory().available), "this machine has"


def check_training_memory(config: RunConfig, device: torch.device | str = "cpu") -> int:
    """Refuse a run whose training step cannot fit in memory; returns the estimate in bytes.

    Raises:
        UserError: "model needs ~37.2 GB to train (1.9 B parameters); this machine has
            21.3 GB available: ..."
    """
    have, where = available_bytes(device)
    bound = training_bytes(config, parameter_bound(config.model))
    if _surely_fits(bound, have):  # the common case: no meta build (its first costs ~2 s)
        return bound
    params = parameter_count(config.model)
    need = training_bytes(config, params)
    if need > have:
        remedy = "lower model.d_model, model.n_layers, train.batch_size or model.context"
        m = config.model
        if m.family in CHECKPOINTING_FAMILIES and not m.checkpointing:
            checkpointed = dataclasses.replace(m, checkpointing=True)
            lighter = training_bytes(dataclasses.replace(config, model=checkpointed), params)
            if lighter <= have:
                remedy = (
                    f"--set model.checkpointing=true would need ~{format_size(lighter, binary=False)} (each "
                    f"block recomputed in the backward, slower), or {remedy}"
                )
        raise UserError(
            f"model needs ~{format_size(need, binary=False)} to train ({parameters(params)}); {where} "
            f"{format_size(have, binary=False)} available: {remedy}"
        )
    return need


def check_weights_memory(
    config: ModelConfig, rank_growths: int = 0, device: torch.device | str = "cpu", what: str = ""
) -> int:
    """Refuse to build a model whose fp32 weights alone exceed the available memory.

    Raises:
        ModelBuildError: the config cannot be built at all.
        UserError: it can, but its weights do not fit.
    """
    have, where = available_bytes(device)
    bound = parameter_bound(config, rank_growths) * WEIGHT_BYTES_PER_PARAM
    if _surely_fits(bound, have):
        return bound
    params = parameter_count(config, rank_growths)
    need = params * WEIGHT_BYTES_PER_PARAM
    if need > have:
        raise UserError(
            f"{what or 'the model'} needs ~{format_size(need, binary=False)} for its weights "
            f"({parameters(params)}); {where} {format_size(have, binary=False)} available"
        )
    return need


def parameters(count: int) -> str:
    """1.9 B parameters, 45.2 M parameters, 77,320 parameters."""
    if count >= 10**12:
        return f"{count / 1e12:,.1f} T parameters"
    if count >= 10**9:
        return f"{count / 1e9:.1f} B parameters"
    if count >= 10**7:
        return f"{count / 1e6:.1f} M parameters"
    return f"{count:,} parameters"
