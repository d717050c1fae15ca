"""Model families: exact parameter counts, shapes, and the loss being plain cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from h2q_tui.config import ModelConfig, preset_names, resolve
from h2q_tui.models import build_model, count_parameters


def test_microstream_has_exactly_the_source_parameter_count():
    model = build_model(resolve("microstream").model)
    assert count_parameters(model) == 1_127_968
    assert model.bank.A.numel() == 288


def test_gpt_preset_is_comparable_in_size_to_microstream():
    n = count_parameters(build_model(resolve("gpt").model))
    assert 0.8 < n / 1_127_968 < 1.25


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_and_runs_forward(name):
    config = resolve(name).model
    model = build_model(config)
    idx = torch.randint(0, config.vocab_size, (2, min(16, config.context)))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, idx.shape[1], config.vocab_size)
    assert math.isfinite(loss.item())
    assert math.isfinite(model.penalty().item())


def test_untrained_loss_is_cross_entropy_near_ln_vocab():
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            family="microstream",
            d_model=128,
            n_layers=2,
            n_heads=2,
            context=32,
            factor_size=16,
            rank=2,
        )
    )
    idx = torch.randint(0, 256, (4, 32))
    logits, loss = model(idx, idx)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 256), idx.view(-1))
    torch.testing.assert_close(loss, expected)
    assert (
        math.log(256) - 0.5 < loss.item() < math.log(256) + 1.5
    )  # no final LN: hidden norm is large


def test_microstream_penalty_at_init_adds_about_2_15_to_the_loss():
    model = build_model(resolve("microstream").model)
    assert 0.1 * 0.01 * model.penalty().item() == pytest.approx(2.15, abs=0.01)


def test_per_layer_bank_option_gives_each_layer_its_own_bank():
    shared = ModelConfig(
        family="microstream", d_model=256, n_layers=2, n_heads=2, factor_size=32, rank=4
    )
    per_layer = ModelConfig(**{**shared.__dict__, "shared_bank": False})
    n_shared = count_parameters(build_model(shared))
    n_own = count_parameters(build_model(per_layer))
    bank = 4 * 4 * 1 * 1  # R x 4 x S x S with S = 128 / (4 x 32) = 1
    assert n_own - n_shared == bank * (12 - 1)


def test_microstream_is_causal():
    torch.manual_seed(0)
    model = build_model(resolve("tiny").model).eval()
    idx = torch.randint(0, 256, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 256
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_checkpointing_switch_gives_identical_gradients():
    torch.manual_seed(0)
    base = resolve("tiny").model
    plain = build_model(base)
    ckpt = build_model(ModelConfig(**{**base.__dict__, "checkpointing": True}))
    ckpt.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 256, (2, 16))
    for model in (plain, ckpt):
        model(idx, idx)[1].backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_unit_ham_init_keeps_the_residual_stream_small():
    """The source init lets the hidden norm explode (energy in the hundreds); 'unit' does not."""
    torch.manual_seed(0)
    idx = torch.randint(0, 256, (2, 64))
    energies = {}
    for init in ("source", "unit"):
        model = build_model(resolve("microstream-cpu", [f'model.ham_init="{init}"']).model)
        model(idx)
        energies[init] = model.energy.item()
    assert energies["source"] > 10 * energies["unit"]
    assert energies["unit"] < 30
