"""Generation: KV cache = recompute, seeds, steering at strength 0, the four modes, text streaming."""

from __future__ import annotations

import re

import pytest
import torch
from h2q_kernels.hamiltonian import HamLinear, frozen_weights

from h2q_tui.config import resolve
from h2q_tui.generation.decoder import Decoder, window_start
from h2q_tui.generation.generate import Generation, ModeConfig, generate_text
from h2q_tui.generation.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    choose_token,
    filter_top_k_top_p,
)
from h2q_tui.generation.steer_eval import (
    contains_word,
    continuation_nats,
    distinct_2,
    evaluate_steering,
    longest_repeat,
)
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.generation.text import Codec, TextStream
from h2q_tui.models import build_model
from h2q_tui.models.common import DecodeState

# one small model per family (and hamiltonian-llm with a separator, so the damping runs)
FAMILY_PRESETS = {
    "microstream": ("tiny", []),
    "h2q-transformer": ("h2q-transformer-cpu", ["model.n_layers=2"]),
    "qrlm": ("qrlm-cpu", ["model.n_layers=2"]),
    "hamiltonian-llm": ("hamiltonian-llm", ["model.n_layers=2", "model.separator_token=10"]),
    "gpt": ("gpt-cpu", ["model.n_layers=2"]),
}
CODEC = Codec()


def small_model(family: str, extra: list[str] | None = None, seed: int = 0) -> torch.nn.Module:
    preset, overrides = FAMILY_PRESETS[family]
    torch.manual_seed(seed)
    return build_model(resolve(preset, overrides + (extra or [])).model).eval()


def sample(model, prompt="Once upon", tokens=24, seed=3, **kwargs) -> Generation:
    generation = Generation(
        model, CODEC, prompt, SamplingConfig(max_new_tokens=tokens, seed=seed), **kwargs
    )
    for _ in generation:
        pass
    return generation


# ---------------------------------------------------------------------------- the cache
@pytest.mark.parametrize("family", FAMILY_PRESETS)
def test_incremental_forward_matches_the_full_forward(family):
    model = small_model(family)
    idx = torch.randint(0, 256, (1, 30))
    idx[0, 7] = 10  # hamiltonian-llm: a separator inside the window
    with torch.no_grad():
        full, _ = model(idx)
        state, pieces = DecodeState(), []
        for lo, hi in [(0, 5), (5, 6), (6, 7), (7, 30)]:
            logits, _ = model(idx[:, lo:hi], state=state)
            state.length += hi - lo
            pieces.append(logits)
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
        state.truncate(12)  # branch: forget positions 12.. and feed them again
        again, _ = model(idx[:, 12:], state=state)
        torch.testing.assert_close(again, full[:, 12:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILY_PRESETS)
def test_kv_cache_gives_the_same_tokens_as_recomputing(family):
    model = small_model(family)
    cached = sample(model, use_cache=True)
    recomputed = sample(model, use_cache=False)
    assert cached.tokens == recomputed.tokens
    assert len(cached.tokens) == 24
    assert cached.stats.forward_tokens < recomputed.stats.forward_tokens  # the cache did work


@pytest.mark.parametrize("mode", ["lookahead", "flow"])
def test_search_modes_agree_with_and_without_cache(mode):
    model = small_model("hamiltonian-llm")
    modes = ModeConfig(mode=mode, lookahead=2)
    cached = sample(model, tokens=12, mode=modes, use_cache=True)
    recomputed = sample(model, tokens=12, mode=modes, use_cache=False)
    assert cached.tokens == recomputed.tokens


@pytest.mark.parametrize("positions", ["all", "front"])
def test_steered_generation_agrees_with_and_without_cache(positions):
    model = small_model("qrlm")
    steer = SteerConfig(word="dog", strength=0.7, layer=1, positions=positions)
    cached = sample(model, tokens=40, steer=steer, use_cache=True)
    assert cached.tokens == sample(model, tokens=40, steer=steer, use_cache=False).tokens


def test_generation_past_the_context_jumps_the_window_the_same_way_cached_or_not():
    model = small_model("microstream")  # tiny: context 32
    assert window_start(32, 32) == 0 and window_start(33, 32) == 16 and window_start(49, 32) == 32
    cached = sample(model, tokens=70, use_cache=True)
    assert cached.tokens == sample(model, tokens=70, use_cache=False).tokens


def test_source_attention_layout_falls_back_to_recomputing():
    model = small_model("h2q-transformer", ["model.attention_layout=source"])
    assert not Decoder(model).use_cache
    assert len(sample(model, tokens=8).tokens) == 8


def test_frozen_hamlinear_weights_match_the_per_call_weights():
    model = small_model("microstream")
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        plain, _ = model(idx)
        with frozen_weights(model):
            assert all(
                m.frozen_weight is not None for m in model.modules() if isinstance(m, HamLinear)
            )
            frozen, _ = model(idx)
    assert all(m.frozen_weight is None for m in model.modules() if isinstance(m, HamLinear))
    torch.testing.assert_close(frozen, plain, rtol=1e-5, atol=1e-5)


def test_nested_frozen_weights_keep_the_outer_weights():
    model = small_model("microstream")
    layer = next(m for m in model.modules() if isinstance(m, HamLinear))
    with frozen_weights(model):
        outer = layer.frozen_weight
        with frozen_weights(model):
            assert layer.frozen_weight is outer  # not rebuilt
        assert layer.frozen_weight is outer  # still frozen after the inner block
    assert layer.frozen_weight is None


# ---------------------------------------------------------------------------- sampling
def test_same_seed_same_text_and_another_seed_other_text():
    model = small_model("gpt")
    first = generate_text(model, CODEC, "Once", sampling=SamplingConfig(max_new_tokens=40, seed=7))
    again = generate_text(model, CODEC, "Once", sampling=SamplingConfig(max_new_tokens=40, seed=7))
    other = generate_text(model, CODEC, "Once", sampling=SamplingConfig(max_new_tokens=40, seed=8))
    assert first == again and first != other


def test_repetition_penalty_is_ctrl_style():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert apply_repetition_penalty(logits, [0], 1.0) is logits


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isfinite(filter_top_k_top_p(logits, 2, 1.0)).tolist() == [True, True, False, False]
    # top-p 0.75: 0.5 alone is below it, 0.5 + 0.3 reaches it
    assert torch.isfinite(filter_top_k_top_p(logits, 0, 0.75)).tolist() == [
        True,
        True,
        False,
        False,
    ]
    assert torch.isfinite(filter_top_k_top_p(logits, 0, 0.4)).tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_temperature_zero_is_greedy():
    logits = torch.tensor([0.1, 3.0, 2.9])
    config = SamplingConfig(temperature=0.0, repetition_penalty=1.0)
    assert choose_token(logits, [], config, torch.Generator()) == 1
    assert choose_token(logits, [1], SamplingConfig(temperature=0.0), torch.Generator()) == 2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top-p"),
        ({"top_k": -3}, "top-k"),
        ({"repetition_penalty": 0}, "repetition"),
    ],
)
def test_bad_sampling_settings_are_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Generation(small_model("gpt"), CODEC, "x", SamplingConfig(**kwargs))


@pytest.mark.parametrize(
    "sampling, steer, words",
    [
        ({"temperature": 1e-300}, {}, "temperature must be 0 (greedy) or in 0.001..1000"),
        ({"temperature": 1e9}, {}, "temperature"),
        ({"repetition_penalty": 1e-300}, {}, "repetition penalty must be in 0.001..1000"),
        ({"seed": 2**70}, {}, "seed must be in 0..2**64-1"),
        ({"seed": -1}, {}, "seed"),
        ({"top_p": float("nan")}, {}, "top-p must be a finite number"),
        ({}, {"word": "cat", "strength": 1e308}, "strength must be in -1000..1000"),
        ({}, {"word": "cat", "strength": -1e308}, "strength"),
    ],
)
def test_values_outside_the_sampling_limits_are_refused_before_a_token(sampling, steer, words):
    # One rule for generate, the Generate pane and serve: every one builds a Generation
    with pytest.raises(ValueError, match=re.escape(words)):
        Generation(
            small_model("gpt"), CODEC, "x", SamplingConfig(**sampling), steer=SteerConfig(**steer)
        )


@pytest.mark.parametrize("family", ["gpt", "microstream"])
def test_the_sampling_limits_keep_every_draw_finite(family):
    model = small_model(family)
    extremes = [
        SamplingConfig(temperature=1e-3, repetition_penalty=1e-3, max_new_tokens=12),
        SamplingConfig(temperature=1e-3, repetition_penalty=1e3, max_new_tokens=12),
        SamplingConfig(temperature=1e3, top_p=5e-324, max_new_tokens=12, seed=2**64 - 1),
    ]
    for sampling in extremes:
        assert len(generate_text(model, CODEC, "Once", sampling=sampling).encode()) > 0
    steered = Generation(
        model, CODEC, "Once", SamplingConfig(max_new_tokens=12), steer=SteerConfig("cat", 1e3)
    )
    assert len(list(steered)) > 0


def test_a_top_p_below_float32s_smallest_keeps_the_likeliest_token():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    for top_p in (1e-300, 5e-324, 1e-45):
        kept = filter_top_k_top_p(logits, 0, top_p)
        assert torch.isfinite(kept).tolist() == [False, True, False, False], top_p


# ---------------------------------------------------------------------------- steering
@pytest.mark.parametrize("family", FAMILY_PRESETS)
@pytest.mark.parametrize("direction", ["embedding", "contrast"])
def test_strength_zero_is_exactly_plain_sampling(family, direction):
    model = small_model(family)
    plain = sample(model, tokens=20).tokens
    zero = SteerConfig(word="dog", strength=0.0, layer=1, direction=direction)
    assert sample(model, tokens=20, steer=zero).tokens == plain
    steered = SteerConfig(word="dog", strength=1.0, layer=1, direction=direction)
    assert sample(model, tokens=20, steer=steered).tokens != plain


def test_steering_is_removed_after_generation_and_positions_front_differs_from_all():
    model = small_model("gpt")
    idx = torch.tensor([list(b"Once upon a time")])
    with torch.no_grad():
        before, _ = model(idx)
    common = {"word": "cat", "strength": 1.5, "layer": 0}
    everywhere = sample(model, tokens=20, steer=SteerConfig(**common)).tokens
    front = sample(model, tokens=20, steer=SteerConfig(**common, positions="front")).tokens
    assert everywhere != front
    with torch.no_grad():
        after, _ = model(idx)
    assert torch.equal(before, after)  # no hook left behind
    assert not model.blocks[0]._forward_pre_hooks


@pytest.mark.parametrize("layer", [0, 1])
def test_steered_generation_reports_the_residual_norm_it_scaled_by(layer):
    model = small_model("qrlm")
    ids = torch.tensor([list(b"Once upon")])
    if layer == 0:  # QRLM's block 0 reads the token plus position embedding
        residual = model.tok_emb(ids) + model.pos_emb[: ids.shape[1]]
    else:  # what block 1 is handed in a plain forward pass
        seen: list[torch.Tensor] = []
        hook = model.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            model(ids)
        hook.remove()
        (residual,) = seen
    by_hand = residual.detach().norm(dim=-1).mean().item()  # mean L2 norm over positions
    steer = SteerConfig(word="dog", strength=0.5, layer=layer)
    generation = sample(model, "Once upon", tokens=4, steer=steer)
    assert CODEC.encode("Once upon") == list(b"Once upon")
    assert generation.stats.residual_norm == pytest.approx(by_hand, rel=1e-5)
    assert generation.steering.vector.norm().item() == pytest.approx(0.5 * by_hand, rel=1e-5)


@pytest.mark.parametrize(
    "steer, words",
    [
        (SteerConfig(word="dog", strength=1.0, layer=9), "layer"),
        (SteerConfig(word="", strength=1.0), "word"),
        (SteerConfig(word="dog", strength=1.0, direction="up"), "direction"),
    ],
)
def test_bad_steering_settings_are_named(steer, words):
    with pytest.raises(ValueError, match=words):
        Generation(small_model("gpt"), CODEC, "x", steer=steer)


def test_mode_steer_needs_a_word_and_a_strength():
    with pytest.raises(ValueError, match="steer needs"):
        Generation(small_model("gpt"), CODEC, "x", mode=ModeConfig(mode="steer"))


# ---------------------------------------------------------------------------- the modes
def test_lookahead_and_flow_are_deterministic_and_avoid_recent_repeats():
    model = small_model("gpt")
    for mode in (ModeConfig(mode="lookahead", lookahead=2), ModeConfig(mode="flow")):
        first = sample(model, tokens=16, seed=1, mode=mode).tokens
        assert sample(model, tokens=16, seed=2, mode=mode).tokens == first  # seed-free
        assert len(first) == 16


def test_flow_weight_changes_the_choice_only_through_the_kinetic_term():
    model = small_model("hamiltonian-llm")
    free = sample(model, tokens=16, mode=ModeConfig(mode="flow", flow_weight=0.0)).tokens
    lookahead_zero = sample(model, tokens=16, mode=ModeConfig(mode="lookahead", lookahead=0))
    # w = 0 and L = 0 both reduce to: −log p plus a repeat penalty over the top 5
    assert len(free) == 16 and len(lookahead_zero.tokens) == 16
    heavy = sample(model, tokens=16, mode=ModeConfig(mode="flow", flow_weight=1e4)).tokens
    assert heavy != free


# ---------------------------------------------------------------------------- text
def test_utf8_split_over_byte_tokens_appears_once_complete():
    stream = TextStream(CODEC)
    pieces = [stream.push(b) for b in "é!".encode()]
    assert pieces == ["", "é", "!"]
    bad = TextStream(CODEC)
    assert bad.push(0xFF) == "\ufffd"  # invalid byte: replaced, no exception
    assert bad.push(0xC3) == "" and bad.finish() == "\ufffd"


def test_stop_string_is_held_back_then_cut():
    stream = TextStream(CODEC, stop=("THE END",))
    out = "".join(stream.push(b) for b in b"and so THE ENDING")
    assert out == "and so " and stream.stopped and stream.output == "and so "
    partial = TextStream(CODEC, stop=("THE END",))
    shown = "".join(partial.push(b) for b in b"the THE")
    assert shown == "the " and partial.finish() == "THE"  # a prefix of the stop string, released


def test_generation_stops_at_a_stop_string():
    model = small_model("gpt")
    text = generate_text(model, CODEC, "x", sampling=SamplingConfig(max_new_tokens=60, seed=3))
    stop = text[10:12]
    generation = Generation(
        model, CODEC, "x", SamplingConfig(max_new_tokens=60, seed=3, stop=(stop,))
    )
    streamed = "".join(generation)
    assert streamed == text[: text.find(stop)] == generation.text
    assert generation.stats.stop_reason == "stop"


def test_cancel_stops_before_the_next_token():
    plain = Generation(small_model("gpt"), CODEC, "x", SamplingConfig(max_new_tokens=50))
    stream = iter(plain)
    first_piece, drawn = next(stream), list(plain.tokens)  # the tokens behind the first piece
    stream.close()
    assert len(drawn) == 1  # a byte model: one token, one piece (ASCII here)
    generation = Generation(small_model("gpt"), CODEC, "x", SamplingConfig(max_new_tokens=50))
    pieces = []
    for piece in generation:
        pieces.append(piece)
        generation.cancel()  # at the first piece: not one more token is drawn
    assert pieces == [first_piece] and generation.tokens == drawn
    assert generation.stats.stop_reason == "cancelled" and generation.stats.new_tokens == 1


# ---------------------------------------------------------------------------- steer-eval pieces
def test_a_hit_is_the_word_itself_not_letters_in_byte_soup():
    assert contains_word("The Cat sat.", "cat") and contains_word("cat", "cat")
    assert not contains_word("toaccaticatt", "cat") and not contains_word("cats", "cat")


def test_repetition_measures():
    assert distinct_2("a b a b") == pytest.approx(2 / 3)
    assert distinct_2("one") == 1.0
    assert (
        longest_repeat("abcXabc") == 3 and longest_repeat("aaaa") == 3 and longest_repeat("") == 0
    )


def test_continuation_nats_equals_the_model_cross_entropy():
    model = small_model("microstream")  # context 32
    ids = list(b"Once upon a time there was a cat who liked milk and naps. ")
    with torch.no_grad():
        logits, loss = model(torch.tensor([ids[:21]]), torch.tensor([ids[1:22]]))
    assert continuation_nats(model, ids[:1], ids[1:22]) == pytest.approx(21 * loss.item(), rel=1e-5)
    # longer than the context: targets in chunks of 16, each seen with at least 16 before it
    with torch.no_grad():
        total = 0.0
        for target in range(1, len(ids), 16):
            end = min(len(ids), target + 16)
            start = max(0, end - 1 - 32)
            logits, _ = model(torch.tensor([ids[start : end - 1]]))
            log_probs = torch.log_softmax(logits[0], -1)
            total -= sum(log_probs[t - 1 - start, ids[t]].item() for t in range(target, end))
    assert continuation_nats(model, ids[:1], ids[1:]) == pytest.approx(total, rel=1e-5)


def test_evaluate_steering_has_a_zero_row_and_seeded_samples():
    model = small_model("gpt")
    rows = evaluate_steering(
        model,
        CODEC,
        SteerConfig(word="a"),
        [1.0],
        prompt="Once",
        samples=3,
        sampling=SamplingConfig(max_new_tokens=20),
    )
    assert [r.strength for r in rows] == [0.0, 1.0]
    zero, steered = rows
    assert zero.delta_logprob == 0.0 and len(zero.samples) == 3
    assert zero.samples[0] == generate_text(
        model, CODEC, "Once", sampling=SamplingConfig(max_new_tokens=20, seed=0)
    )
    assert steered.delta_logprob != 0.0 and steered.samples != zero.samples
    assert 0.0 <= steered.hit_rate <= 1.0 and steered.fluency_bpb > 0
