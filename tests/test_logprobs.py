"""Log-probabilities per generated token: the model's own distribution (a direct forward pass's
log-softmax), whatever the sampling settings or constraint, for every family."""

from __future__ import annotations

import pytest
import torch
from test_decode_speed import TINY, tiny_model

from h2q_tui.generation.constraint import MAX_TOP_LOGPROBS
from h2q_tui.generation.generate import Generation, ModeConfig
from h2q_tui.generation.grammar import json_constraint
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import Codec

CODEC = Codec()
PROMPT = "Hi"  # prompt + tokens stay inside the tiny models' context of 32
TOKENS = 24
SETTINGS = {  # none of these may change the recorded distribution
    "default": {},
    "greedy": {"temperature": 0.0},
    "penalties": {
        "temperature": 1.7,
        "top_k": 3,
        "top_p": 0.5,
        "repetition_penalty": 3.0,
        "frequency_penalty": 2.0,
        "presence_penalty": -2.0,
        "min_p": 0.3,
        "penalty_window": 2,
    },
}


def run(model, top: int | None, constraint=None, **sampling) -> Generation:
    config = SamplingConfig(max_new_tokens=TOKENS, seed=7, **sampling)
    generation = Generation(model, CODEC, PROMPT, config, logprobs=top, constraint=constraint)
    for _ in generation:
        pass
    return generation


def forward_log_probs(model, generation: Generation) -> torch.Tensor:
    """(new tokens, V): the log-softmax predicting each generated token, from one full pass."""
    ids = generation.prompt_ids + generation.tokens
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    start = len(generation.prompt_ids) - 1
    return torch.log_softmax(logits[0, start : start + len(generation.tokens)].float(), dim=-1)


def assert_raw_distribution(model, generation: Generation, top: int) -> None:
    expected = forward_log_probs(model, generation)
    assert len(generation.token_logprobs) == len(generation.tokens) > 0
    for row, record, token in zip(
        expected, generation.token_logprobs, generation.tokens, strict=True
    ):
        assert record.token == token
        assert record.logprob == pytest.approx(row[token].item(), abs=1e-4)
        assert len(record.top) == top
        values = [logprob for _, logprob in record.top]
        assert values == sorted(values, reverse=True)
        for token_id, logprob in record.top:
            assert logprob == pytest.approx(row[token_id].item(), abs=1e-4)
        if top:  # the likeliest id leads the list (up to a tie)
            assert row[record.top[0][0]].item() == pytest.approx(row.max().item(), abs=1e-4)


@pytest.mark.parametrize("family", TINY)
def test_logprobs_are_the_forward_pass_log_softmax(family):
    model = tiny_model(family)
    for name, settings in SETTINGS.items():
        top = 5 if name != "greedy" else MAX_TOP_LOGPROBS
        assert_raw_distribution(model, run(model, top, **settings), top)


@pytest.mark.parametrize("family", ["gpt", "hamiltonian-llm"])
def test_logprobs_are_taken_before_the_constraint(family):
    model = tiny_model(family)
    vocabulary = CODEC.vocabulary(256)
    generation = run(model, 3, constraint=json_constraint("json", vocabulary))
    assert_raw_distribution(model, generation, 3)


def test_sampling_settings_change_tokens_not_the_recorded_distribution():
    model = tiny_model("gpt")
    plain, penalised = run(model, 2), run(model, 2, **SETTINGS["penalties"])
    assert plain.tokens != penalised.tokens  # the settings did act on the draw
    assert_raw_distribution(model, penalised, 2)


def test_no_logprobs_records_nothing_and_zero_records_only_the_token():
    model = tiny_model("microstream")
    assert run(model, None).token_logprobs == []
    zero = run(model, 0)
    assert len(zero.token_logprobs) == TOKENS
    assert all(record.top == [] for record in zero.token_logprobs)


@pytest.mark.parametrize("top", [-1, MAX_TOP_LOGPROBS + 1, 1000])
def test_top_logprobs_outside_the_range_is_a_value_error(top):
    with pytest.raises(ValueError, match="top logprobs must be in 0..20"):
        Generation(tiny_model("gpt"), CODEC, PROMPT, logprobs=top)


def test_logprobs_need_a_sampling_mode():
    with pytest.raises(ValueError, match="need mode sample or steer"):
        Generation(tiny_model("gpt"), CODEC, PROMPT, mode=ModeConfig(mode="flow"), logprobs=1)
