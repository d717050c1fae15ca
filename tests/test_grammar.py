"""Structured output: JSON schemas (hypothesis-generated) decoded byte by byte by a tiny model of
every family always give JSON that parses and validates; bad formats are one-line ValueErrors.

A tiny model's content is nonsense; only validity is asserted. Bounded schemas (no extra
properties, strings with a maxLength, arrays with a maxItems) must also finish (reason
``stop``) within a generous token budget.
"""

from __future__ import annotations

import json
from functools import cache

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decode_speed import TINY

from h2q_tui.config import resolve
from h2q_tui.generation.constraint import constrained_logits
from h2q_tui.generation.generate import Generation
from h2q_tui.generation.grammar import ANY_OBJECT, json_constraint
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import Codec
from h2q_tui.models import build_model
from tests.benchmark_module import load

CODEC = Codec()
VOCABULARY = CODEC.vocabulary(256)
BUDGET = 600  # tokens: far more than any bounded schema below needs

scalars = st.one_of(
    st.text(max_size=3), st.integers(-1000, 1000), st.booleans(), st.none()
)  # enum members (any text: the vocabulary is bytes, so multi-byte characters too)


@st.composite
def strings(draw) -> dict:
    schema = {"type": "string", "maxLength": draw(st.integers(0, 8))}
    if draw(st.booleans()):
        schema["minLength"] = draw(st.integers(0, schema["maxLength"]))
    return schema


@st.composite
def integers(draw) -> dict:
    schema: dict = {"type": "integer"}
    if draw(st.booleans()):
        low = draw(st.integers(-500, 500))
        schema.update(minimum=low, maximum=low + draw(st.integers(0, 1000)))
    return schema


leaves = st.one_of(
    strings(),
    integers(),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.lists(scalars, min_size=1, max_size=4, unique_by=json.dumps).map(lambda e: {"enum": e}),
)


def arrays(items: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(
        lambda item, most: {"type": "array", "items": item, "maxItems": most},
        items,
        st.integers(0, 3),
    )


@st.composite
def objects(draw, values: st.SearchStrategy) -> dict:
    names = draw(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3, unique=True))
    return {
        "type": "object",
        "properties": {name: draw(values) for name in names},
        "required": names,
        "additionalProperties": False,
    }


schemas = objects(
    st.recursive(leaves, lambda inner: st.one_of(arrays(inner), objects(inner)), max_leaves=4)
)


@cache
def model(family: str) -> torch.nn.Module:
    """One tiny model per family (a context of 256: no window jumps in the outputs here), shared
    by every example."""
    preset, overrides = TINY[family]
    torch.manual_seed(0)
    return build_model(
        resolve(preset, [*overrides, "model.n_layers=2", "model.context=256"]).model
    ).eval()


def decode(family: str, schema, seed: int = 0, budget: int = BUDGET) -> Generation:
    constraint = json_constraint(schema, VOCABULARY)
    sampling = SamplingConfig(max_new_tokens=budget, seed=seed)
    generation = Generation(model(family), CODEC, "JSON: ", sampling, constraint=constraint)
    for _ in generation:
        pass
    return generation


def assert_valid(generation: Generation, schema: dict):
    assert generation.stats.stop_reason == "stop", generation.text[-80:]
    value = json.loads(bytes(generation.tokens).decode("utf-8"))  # the bytes themselves
    assert json.loads(generation.text) == value
    jsonschema.validate(value, schema)
    return value


@pytest.mark.parametrize("family", TINY)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas, seed=st.integers(0, 2**32 - 1))
def test_bounded_schemas_finish_and_validate(family, schema, seed):
    assert_valid(decode(family, schema, seed), schema)


@pytest.mark.slow
@pytest.mark.parametrize("family", TINY)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas, seed=st.integers(0, 2**32 - 1))
def test_many_bounded_schemas_finish_and_validate(family, schema, seed):
    assert_valid(decode(family, schema, seed), schema)


TOP_LEVEL = [
    {"type": "number"},
    {"type": "integer", "minimum": -5, "maximum": 500},
    {"type": "string", "maxLength": 4},
    {"type": "boolean"},
    {"enum": [1, 10, 100, "x"]},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
]


@pytest.mark.parametrize("schema", TOP_LEVEL, ids=json.dumps)
def test_a_top_level_value_finishes_and_validates(schema):
    for seed in range(6):
        assert_valid(decode("gpt", schema, seed), schema)


def test_ending_weighs_the_mass_the_grammar_forbids():
    """Once a number is complete it may still go on: ending is one more choice, with the
    model's whole probability of the bytes that cannot continue it (not forced after "1")."""
    constraint = json_constraint({"type": "integer"}, VOCABULARY)
    logits = torch.randn(256, generator=torch.Generator().manual_seed(0))
    assert constrained_logits(logits, constraint)[256] == float("-inf")  # nothing to end yet
    constraint.advance(ord("1"))
    after = constrained_logits(logits, constraint)
    digits = list(b"0123456789")
    assert torch.isfinite(after[:256]).nonzero().flatten().tolist() == digits
    assert torch.equal(after[digits], logits[digits])
    forbidden = torch.ones(256, dtype=torch.bool)
    forbidden[digits] = False
    assert after[256].item() == pytest.approx(torch.logsumexp(logits[forbidden], 0).item())
    assert constraint.can_end and not constraint.finished


def test_format_json_gives_an_object():
    finished = 0
    for family in TINY:
        for seed in range(2):
            generation = decode(family, "json", seed, budget=160)
            if generation.stats.stop_reason == "stop":
                finished += 1
                assert isinstance(assert_valid(generation, ANY_OBJECT), dict)
            else:  # out of budget (random keys run long): a prefix of an object
                assert generation.text.startswith("{")
    assert finished  # not every time


@pytest.mark.parametrize(
    "format, words",
    [
        ({"type": "frob"}, "invalid JSON schema"),
        ({"type": "string", "maxLength": -1}, "invalid JSON schema"),
        ([{"type": "string"}], 'format must be "json" or a JSON schema'),
        (5, 'format must be "json" or a JSON schema'),
        ("yaml", 'format must be "json" or a JSON schema'),
        (None, 'format must be "json" or a JSON schema'),
        ({"type": "string", "pattern": "(?=a)b"}, "unsupported JSON schema: regex parse error"),
        ({"not": {"type": "string"}}, "unsupported JSON schema"),
        ({"$ref": "https://example.com/schema.json"}, "unsupported JSON schema"),
        ({"type": "integer", "minimum": 5, "maximum": 3}, "unsupported JSON schema"),
    ],
)
def test_a_bad_format_is_a_one_line_value_error(format, words):
    with pytest.raises(ValueError) as caught:
        json_constraint(format, VOCABULARY)
    message = str(caught.value)
    assert message.startswith(words)
    assert "\n" not in message and len(message) < 300


def test_a_schema_the_vocabulary_cannot_spell_is_a_value_error():
    """A key of "é" (bytes C3 A9) with no id for byte C3: refused up front, not an empty
    output that claims to be finished."""
    vocabulary = [b"\xef\xbf\xbd" if byte == 0xC3 else bytes([byte]) for byte in range(256)]
    schema = {"type": "object", "properties": {"é": {"type": "integer"}}, "required": ["é"]}
    with pytest.raises(ValueError, match="^unsupported JSON schema: it needs a byte that no token"):
        json_constraint(schema, vocabulary)
    json_constraint(schema, VOCABULARY)  # every byte has its id


def test_a_constraint_at_its_end_allows_nothing_more():
    constraint = json_constraint({"type": "boolean"}, VOCABULARY)
    assert not constraint.can_end and not constraint.finished
    for byte in b"true":
        assert constraint.allowed()[byte]
        constraint.advance(byte)
    assert constraint.can_end and constraint.finished
    assert not constraint.allowed().any()
    with pytest.raises(RuntimeError, match="grammar refused token"):
        constraint.advance(ord(" "))


def test_random_walks_through_the_shipped_constraint_always_validate():
    """benchmarks/grammar_engines.py's walks (every id drawn uniformly among those allowed,
    ending included) over its schemas, on the byte vocabulary and a byte-level BPE one."""
    bench = load("grammar_engines")
    for vocabulary in (VOCABULARY, bench.bpe_vocabulary(400)):
        row = bench.measure_engine(bench.Shipped, vocabulary, walks=3, steps=400)
        assert row["vocabulary"] == "accepted"
        for name, result in row["schemas"].items():
            assert result["invalid"] == 0, (name, result["first_invalid"])
        for name in ("flat", "enums", "top-level number"):  # the others may run long
            assert row["schemas"][name]["finished"] > 0, name
