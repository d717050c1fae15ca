"""The decoder's step programs (issue 15 item 4) against the model path and against recomputing.

For every family at a tiny size: the same tokens as ``Generation(use_cache=False)`` (the
whole window recomputed per token) and as today's cached form (``reference_decoding``:
the model forward with a DecodeState, reference sampling), logits within 1e-5 relative in
fp32 (the final hidden state within 1e-4), branching (lookahead, flow), steering hooks,
and a window jump past the context.
"""

from __future__ import annotations

import pytest
import torch
from h2q_kernels.hamiltonian import frozen_weights

from h2q_tui.config import resolve
from h2q_tui.generation.decoder import Decoder, reference_decoding, step_program
from h2q_tui.generation.generate import Generation, ModeConfig
from h2q_tui.generation.sampling import SamplingConfig, choose_token, choose_token_reference
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.generation.text import Codec
from h2q_tui.models import build_model

TINY = {  # family: (preset, overrides) — 2 layers, context 32 so the window jumps
    "gpt": ("gpt-cpu", ["model.d_model=64", "model.n_heads=2"]),
    "microstream": ("tiny", []),
    "h2q-transformer": ("h2q-transformer-cpu", ["model.d_model=128", "model.factor_size=16"]),
    "qrlm": ("qrlm-cpu", ["model.d_model=64", "model.factor_size=16"]),
    "hamiltonian-llm": (
        "hamiltonian-llm",
        ["model.d_model=64", "model.n_heads=2", "model.separator_token=10"],
    ),
}
SMALL = ["model.n_layers=2", "model.context=32"]


def tiny_model(family: str) -> torch.nn.Module:
    preset, overrides = TINY[family]
    torch.manual_seed(0)
    return build_model(resolve(preset, overrides + SMALL).model).eval()


def generate(model, tokens=40, reference=False, **kwargs) -> Generation:
    sampling = SamplingConfig(max_new_tokens=tokens, seed=5, top_k=20)
    run = Generation(model, Codec(), "Once upon a time", sampling, **kwargs)
    if reference:
        with reference_decoding():
            list(run)
    else:
        list(run)
    return run


@pytest.mark.parametrize("family", TINY)
def test_step_program_logits_match_the_model_path(family):
    model = tiny_model(family)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (45,)).tolist()
    ids[7] = 10  # hamiltonian-llm: a separator inside the window
    with torch.no_grad(), frozen_weights(model):
        fast, slow = Decoder(model), Decoder(model, fast=False)
        assert fast.program is not None and slow.program is None
        # prefill, then one token at a time past the window jump, then a branch back
        for n in [12, *range(13, 45), 20, 21, 45]:
            (lf, hf), (ls, hs) = fast(ids[:n]), slow(ids[:n])
            torch.testing.assert_close(lf, ls, rtol=1e-5, atol=1e-5)
            # the hidden state is a LayerNorm output (rounding amplified by 1/σ): 1e-4
            torch.testing.assert_close(hf, hs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", TINY)
def test_same_tokens_as_recomputing_and_as_the_old_cache(family):
    model = tiny_model(family)
    fast = generate(model)
    assert fast.tokens == generate(model, use_cache=False).tokens
    assert fast.tokens == generate(model, reference=True).tokens
    assert len(fast.tokens) == 40  # 4 + 40 > 32: the window jumped


@pytest.mark.parametrize("mode", ["lookahead", "flow"])
def test_branching_modes_match(mode):
    model = tiny_model("hamiltonian-llm")
    modes = ModeConfig(mode=mode, lookahead=2)
    fast = generate(model, tokens=10, mode=modes)
    assert fast.tokens == generate(model, tokens=10, mode=modes, reference=True).tokens
    assert fast.tokens == generate(model, tokens=10, mode=modes, use_cache=False).tokens


@pytest.mark.parametrize("family", ["microstream", "hamiltonian-llm", "gpt"])
@pytest.mark.parametrize("positions", ["all", "front"])
def test_steering_hooks_act_in_the_step_program(family, positions):
    model = tiny_model(family)
    steer = SteerConfig(word="dog", strength=2.0, layer=1, positions=positions)
    fast = generate(model, tokens=30, steer=steer)
    assert fast.tokens == generate(model, tokens=30, steer=steer, reference=True).tokens
    assert fast.tokens == generate(model, tokens=30, steer=steer, use_cache=False).tokens
    assert fast.tokens != generate(model, tokens=30).tokens  # the hook did act


def test_the_model_path_runs_where_the_program_cannot():
    model = tiny_model("microstream")
    assert step_program(model) is None  # HamLinear weights not frozen
    with frozen_weights(model):
        assert step_program(model) is not None
        handle = model.head.register_forward_hook(lambda *args: None)
        assert step_program(model) is None  # a hook the program would not run
        handle.remove()
        model.train()
        assert step_program(model) is None
    model.eval()


@pytest.mark.parametrize("top_k,top_p,penalty", [(50, 1.0, 1.2), (0, 0.9, 1.0), (5, 0.5, 1.5)])
def test_fast_sampling_draws_the_reference_token(top_k, top_p, penalty):
    config = SamplingConfig(temperature=0.8, top_k=top_k, top_p=top_p, repetition_penalty=penalty)
    torch.manual_seed(0)
    fast, slow = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    generated: list[int] = []
    for _ in range(60):
        logits = torch.randn(256) * 3
        token = choose_token(logits, generated, config, fast)
        assert token == choose_token_reference(logits, generated, config, slow)
        generated.append(token)


def test_fast_sampling_follows_a_generated_list_that_is_cut_or_replaced():
    config = SamplingConfig(temperature=0.9, top_k=40, repetition_penalty=1.3)
    generated = list(range(0, 200, 3))
    logits = torch.randn(256) * 3
    for tokens in (generated, generated[:5], [7, 7, 9], generated):
        fast, slow = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        assert choose_token(logits, tokens, config, fast) == choose_token_reference(
            logits, tokens, config, slow
        )
    del generated[3:]  # the same list, shortened
    fast, slow = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert choose_token(logits, generated, config, fast) == choose_token_reference(
        logits, generated, config, slow
    )


def test_the_programs_gelu_is_the_exact_gelu():
    """x · Φ(x) by ndtr (the step programs' GELU) against F.gelu and float64, tails included:
    within 2e-6 of F.gelu, and as close to the float64 value as F.gelu within a factor of two
    (fp32 ndtr's rounding differs with the CPU's vector width: AVX2 against AVX-512)."""
    from h2q_tui.generation.steps import exact_gelu

    x = torch.cat([torch.linspace(-12, 12, 4001), torch.randn(4096) * 3, torch.zeros(1)])
    expected, exact = torch.nn.functional.gelu(x), x.double() * torch.special.ndtr(x.double())
    for mode in (torch.no_grad, torch.inference_mode):  # the programs run in inference mode
        with mode():
            ours = exact_gelu(x.clone())
        assert torch.allclose(ours, expected, rtol=1e-6, atol=2e-6)
        ours_error = (ours.double() - exact).abs().max()
        assert ours_error <= 2 * (expected.double() - exact).abs().max() + 1e-12
