"""Hamiltonian-LLM (SPEC §3.4): the momentum scan against its recurrence, the source's exact
shapes and key names, causality, gravity attention against an explicit formula, and training."""

from __future__ import annotations

import math

import pytest
import torch

from h2q_tui import checkpoints
from h2q_tui.config import ModelConfig, resolve
from h2q_tui.data.sources import load_corpus
from h2q_tui.models import build_model, count_parameters
from h2q_tui.models.hamiltonian_llm import MomentumEmbedding, linear_scan
from h2q_tui.training import events
from h2q_tui.training.trainer import Trainer

SEPARATOR = 3


def small_config(**changes) -> ModelConfig:
    base = ModelConfig(
        family="hamiltonian-llm",
        vocab_size=40,
        d_model=32,
        n_layers=2,
        n_heads=4,
        context=64,
        separator_token=SEPARATOR,
        gravity_max_distance=8,
    )
    return ModelConfig(**{**base.__dict__, **changes})


def loop_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m, states = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        m = a[:, t, None] * m + b[:, t]
        states.append(m)
    return torch.stack(states, dim=1)


def spec_momentum(p: torch.Tensor, idx: torch.Tensor, beta: float, damping: float):
    """SPEC §3.4 written out: v_t = p_t − p_{t−1} (v_0 = 0), m_t = (β m + (1−β) v)(1 − r_t)."""
    m, states = torch.zeros_like(p[:, 0]), []
    for t in range(p.shape[1]):
        v = p[:, t] - p[:, t - 1] if t > 0 else torch.zeros_like(p[:, 0])
        r = damping * (idx[:, t] == SEPARATOR).to(p.dtype)[:, None]
        m = (beta * m + (1 - beta) * v) * (1 - r)
        states.append(m)
    return torch.stack(states, dim=1)


def random_tokens(generator: torch.Generator, batch: int, time: int) -> torch.Tensor:
    idx = torch.randint(0, 40, (batch, time), generator=generator)
    separators = torch.rand(batch, time, generator=generator) < 0.1
    return idx.masked_fill(separators, SEPARATOR)


@pytest.mark.parametrize("time", [1, 7, 32, 33, 300, 1100])  # 1100: three scan levels
def test_linear_scan_matches_the_loop_even_with_exact_resets(time):
    generator = torch.Generator().manual_seed(time)
    a = torch.rand(3, time, generator=generator, dtype=torch.float64)
    a = a.masked_fill(torch.rand(3, time, generator=generator) < 0.05, 0.0)
    b = torch.randn(3, time, 5, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, b), loop_scan(a, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("damping", [0.5, 1.0])
@pytest.mark.parametrize("time", [1, 2, 45, 300])
def test_momentum_scan_equals_the_spec_recurrence(time, damping):
    generator = torch.Generator().manual_seed(time)
    embedding = MomentumEmbedding(small_config(separator_damping=damping)).double()
    idx = random_tokens(generator, 3, time)
    expected = spec_momentum(embedding.p_emb(idx), idx, 0.9, damping)
    torch.testing.assert_close(embedding.momentum(idx), expected, rtol=1e-12, atol=1e-12)


def test_momentum_scan_is_stable_in_fp32_over_1024_steps():
    generator = torch.Generator().manual_seed(0)
    embedding = MomentumEmbedding(small_config())
    idx = random_tokens(generator, 2, 1024)
    fast = embedding.momentum(idx)
    reference = spec_momentum(embedding.p_emb(idx).double(), idx, 0.9, 0.5)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast.double(), reference, rtol=0, atol=1e-6)


def test_momentum_step_repeated_equals_the_scan():
    generator = torch.Generator().manual_seed(1)
    embedding = MomentumEmbedding(small_config(separator_damping=1.0)).double()
    idx = random_tokens(generator, 4, 70)
    p = embedding.p_emb(idx)  # (B, T, C)
    m, prev, states = torch.zeros_like(p[:, 0]), p[:, 0], []
    for t in range(idx.shape[1]):
        m = embedding.momentum_step(m, prev, p[:, t], embedding.separator_mask(idx[:, t]))
        prev = p[:, t]
        states.append(m)
    torch.testing.assert_close(torch.stack(states, 1), embedding.momentum(idx), rtol=0, atol=1e-12)


def expected_keys(n_layers: int) -> set[str]:
    keys = {"transformer.wte.q_emb.weight", "transformer.wte.p_emb.weight", "lm_head.weight"}
    keys |= {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    per_block = [
        "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
        "attn.c_attn.weight", "attn.c_proj.weight",
        "attn.gravity_net.weight", "attn.gravity_net.bias",
        "reflex.0.weight", "reflex.0.bias", "mlp.0.weight", "mlp.2.weight",
    ]  # fmt: skip
    return keys | {f"transformer.h.{i}.{name}" for i in range(n_layers) for name in per_block}


def test_124m_preset_has_the_source_parameter_count_and_key_names():
    config = resolve("hamiltonian-llm-124m").model
    with torch.device("meta"):
        model = build_model(config)
    assert count_parameters(model) == 123_511_160
    assert sum(p.numel() for p in model.parameters()) == 123_511_160
    state = model.state_dict()
    assert set(state) == expected_keys(12)
    assert state["transformer.h.0.reflex.0.weight"].shape == (640, 1, 3)
    assert state["transformer.h.0.attn.gravity_net.weight"].shape == (10, 640)
    assert state["lm_head.weight"].shape == (50304, 640)


def test_head_shares_storage_with_q_emb_and_penalty_is_zero():
    model = build_model(small_config())
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.q_emb.weight"].data_ptr()
    assert model.lm_head.weight is model.transformer.wte.q_emb.weight
    assert set(state) == expected_keys(2)
    assert model.penalty().item() == 0.0
    gravity = model.transformer.h[0].attn.gravity_net
    assert gravity.bias.eq(0.5).all() and 0.005 < gravity.weight.std() < 0.02


def test_is_causal_and_reports_energy_before_ln_f():
    torch.manual_seed(0)
    model = build_model(small_config()).eval()
    idx = random_tokens(torch.Generator().manual_seed(2), 1, 80)
    changed = idx.clone()
    changed[0, 50] = (changed[0, 50] + 1) % 40
    a, _ = model(idx)
    assert model.energy.item() > 0
    b, _ = model(changed)
    torch.testing.assert_close(a[0, :50], b[0, :50])
    assert not torch.allclose(a[0, 50:], b[0, 50:])


def reference_attention(attn, x: torch.Tensor, strength: float, max_distance: int, base: float):
    """Gravity RoPE attention from the formulas, one rotated pair and one score at a time."""
    batch, time, width = x.shape
    nh, hs = attn.n_heads, width // attn.n_heads
    q, k, v = (x @ attn.c_attn.weight.T).split(width, dim=-1)
    q, k, v = (t.view(batch, time, nh, hs).transpose(1, 2) for t in (q, k, v))
    positions = torch.arange(time, dtype=x.dtype)

    def rotate(t: torch.Tensor) -> torch.Tensor:  # pairs (i, i + hs/2), angle pos · base^(−2i/hs)
        firsts, seconds = [], []
        for i in range(hs // 2):
            angle = positions * base ** (-2 * i / hs)
            a, b = t[..., i], t[..., i + hs // 2]
            firsts.append(a * angle.cos() - b * angle.sin())
            seconds.append(b * angle.cos() + a * angle.sin())
        return torch.stack(firsts + seconds, dim=-1)

    q, k = rotate(q), rotate(k)
    gravity = torch.nn.functional.softplus(x @ attn.gravity_net.weight.T + attn.gravity_net.bias)
    distance = (positions[:, None] - positions[None, :]).abs().clamp(max=max_distance)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
    scores = scores - strength * gravity.transpose(1, 2)[..., None] * distance
    scores = scores.masked_fill(positions[None, :] > positions[:, None], float("-inf"))
    y = scores.softmax(dim=-1) @ v  # (B, nh, T, hs)
    return y.transpose(1, 2).reshape(batch, time, width) @ attn.c_proj.weight.T


@pytest.mark.parametrize("strength", [0.0, 0.3])
def test_gravity_attention_matches_the_explicit_formula(strength):
    torch.manual_seed(0)
    config = small_config(gravity_strength=strength, rope_base=500.0)
    model = build_model(config).double()
    attn = model.transformer.h[0].attn
    with torch.no_grad():  # make g vary by token and head, so a wrong broadcast shows
        attn.gravity_net.weight.normal_(std=0.5)
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    rope, distance, causal = model.attention_geometry(20, x.device)
    fast = attn(x, rope, distance, causal)
    slow = reference_attention(attn, x, strength, config.gravity_max_distance, config.rope_base)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    weights = [attn.c_attn.weight, attn.gravity_net.weight]
    grads_fast = torch.autograd.grad(fast.square().sum(), weights)
    grads_slow = torch.autograd.grad(slow.square().sum(), weights)
    for g_fast, g_slow in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-9, atol=1e-10)
    if strength == 0.0:
        assert grads_fast[1].abs().max() == 0  # no gravity: plain RoPE attention
    else:
        assert grads_fast[1].abs().max() > 1e-6


def test_byte_preset_trains_and_round_trips_a_checkpoint(tmp_path, text_file):
    overrides = [
        "train.max_steps=12",
        "train.warmup_steps=0",
        "train.batch_size=8",
        "eval.heldout_interval=12",
        "eval.heldout_bytes=2048",
    ]
    config = resolve("hamiltonian-llm", overrides)
    corpus = load_corpus(str(text_file), heldout_fraction=0.1)
    log: list[events.Event] = []
    trainer = Trainer(config, corpus, tmp_path / "run", log.append, preset="hamiltonian-llm")
    assert trainer.run() == "max_steps"
    losses = [e.train_loss_nats for e in log if isinstance(e, events.StepCompleted)]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3  # starts near ln 256 and learns
    info = checkpoints.read_info(trainer.run_dir)
    clone = build_model(info.config.model)
    checkpoints.load_weights(info, clone)
    assert clone.lm_head.weight is clone.transformer.wte.q_emb.weight
    for (name, p), q in zip(
        trainer.model.state_dict().items(), clone.state_dict().values(), strict=True
    ):
        assert torch.equal(p.cpu(), q), name
