"""Issue 30 item 3: llama.cpp's KL-divergence columns checked by hand, mixed precision
(``+head:N``) and calibrated rounding (``+cal``): stored parts, bounds, the weighted error
they minimise, bad spellings. The command itself (``--calibrate``, ``--details``) and its
bad input are in test_crystallize.py, beside the runs it trains."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from h2q_tui.codecs.calibrated import (
    encode_group_weighted,
    encode_int8_weighted,
    weighted_error,
)
from h2q_tui.codecs.gptq import encode_calibrated, output_error
from h2q_tui.codecs.layout import decode_state_dict, encode_state_dict
from h2q_tui.codecs.method import method_name, parse_method
from h2q_tui.codecs.tensor import (
    CODECS,
    decode_group_int,
    decode_int8,
    encode_group_int,
    encode_int8,
    stored_bytes,
    unpack_bits,
)
from h2q_tui.crystal import measure
from h2q_tui.crystal.methods import resolve_methods


# ----------------------------------------------------------------------------- the columns
class TableModel(torch.nn.Module):
    """Next-token probabilities read from a table by the input token (the test's hand model)."""

    def __init__(self, probabilities: list[list[float]]) -> None:
        super().__init__()
        self.log_table = torch.nn.Parameter(torch.tensor(probabilities).log())

    def forward(self, x, y):
        logits = self.log_table[x]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))
        return logits, loss


BASE = [[0.9, 0.1], [0.5, 0.5]]
QUANT = [[0.6, 0.4], [0.3, 0.7]]
TOKENS = [0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 0]  # 3 windows of 4, and one more target


def test_the_llama_columns_match_a_hand_computation() -> None:
    """KLD, Δp, ln PPL ratio and same top p by hand on a 2-token vocabulary."""
    heldout = measure.HeldOut(torch.tensor(TOKENS, dtype=torch.uint8), 4, 3, 1.0, "hand", 13)
    _, (c,) = measure.compare_many(TableModel(BASE), [TableModel(QUANT)], heldout, batch=2)
    pairs = list(zip(TOKENS[:12], TOKENS[1:13], strict=True))
    kld = [
        sum(p * math.log(p / q) for p, q in zip(BASE[x], QUANT[x], strict=True)) for x, _ in pairs
    ]
    dp = [QUANT[x][y] - BASE[x][y] for x, y in pairs]
    ratio = [math.log(BASE[x][y]) - math.log(QUANT[x][y]) for x, y in pairs]
    same = sum(BASE[x].index(max(BASE[x])) == QUANT[x].index(max(QUANT[x])) for x, _ in pairs)
    close = lambda a, b: a == pytest.approx(b, rel=1e-5, abs=1e-7)  # noqa: E731
    assert c.positions == 12
    assert close(c.mean_kld, statistics.fmean(kld))
    assert close(c.kld_median, statistics.median(kld))
    assert close(c.kld_max, max(kld)) and close(c.kld_percentiles["min"], min(kld))
    assert close(c.mean_kld_error, statistics.stdev(kld) / math.sqrt(12))
    assert close(c.mean_delta_p, statistics.fmean(dp))
    assert close(c.delta_p_error, statistics.stdev(dp) / math.sqrt(12))
    assert close(c.delta_p_percentiles["p50"], statistics.median(dp))
    assert close(c.delta_p_percentiles["min"], min(dp))
    assert close(c.delta_p_percentiles["max"], max(dp))
    assert close(c.rms_delta_p, math.sqrt(statistics.fmean(d * d for d in dp)))
    assert close(c.ln_ppl_ratio, statistics.fmean(ratio))
    assert close(c.ln_ppl_ratio_error, statistics.stdev(ratio) / math.sqrt(12))
    assert close(c.same_top1, same / 12)  # input 1: argmax 0 against 1
    assert close(c.same_top1_error, math.sqrt(same / 12 * (1 - same / 12) / 12))


def test_percentiles_interpolate_like_torch_quantile() -> None:
    values = torch.tensor([3.0, -1.0, 2.0, 10.0, 0.5])
    got = measure.percentiles(values)
    for key, q in measure.PERCENTILES:
        assert got[key] == pytest.approx(float(torch.quantile(values.double(), q)))


# ----------------------------------------------------------------------------- mixed precision
def tiny_gpt_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    embedding = torch.randn(256, 64)
    return {
        "wte.weight": embedding,
        "wpe.weight": torch.randn(32, 64),
        "blocks.0.attn.c_attn.weight": torch.randn(192, 64),
        "blocks.0.ln_1.weight": torch.ones(64),
        "lm_head.weight": embedding,  # tied, as GPT's
    }


def test_head_int8_keeps_embeddings_and_head_in_int8_and_the_rest_in_int4() -> None:
    state = tiny_gpt_state()
    crystal = encode_state_dict(state, "int4-g32+head:int8")
    parts = crystal.tensors
    plain_int8, _ = encode_int8(state["wte.weight"])
    plain_int4, _ = encode_group_int(state["blocks.0.attn.c_attn.weight"], 4, 32)
    for name in ("wte.weight", "wpe.weight"):
        assert (
            parts[f"{name}::q"].dtype == torch.int8
            and parts[f"{name}::scale"].dtype == torch.float16
        )
    assert torch.equal(parts["wte.weight::q"], plain_int8["q"])  # the int8 codec's own parts
    assert torch.equal(parts["wte.weight::scale"], plain_int8["scale"])
    for part, value in plain_int4.items():
        assert torch.equal(parts[f"blocks.0.attn.c_attn.weight::{part}"], value)
    assert "lm_head.weight::q" not in parts and "blocks.0.ln_1.weight" in parts
    int8_bytes = (256 + 32) * 64 + 2 * (256 + 32)
    int4_bytes = 192 * 64 // 2 + 2 * 2 * 192 * 64 // 32
    assert crystal.bytes_after == int8_bytes + int4_bytes + 64 * 4
    assert crystal.metadata["h2q.crystal.method"] == "int4-g32+head:int8"
    decoded, _ = decode_state_dict(parts, crystal.metadata)
    assert decoded["lm_head.weight"] is decoded["wte.weight"]
    bound = plain_int8["scale"].float()[:, None] / 2 + 1e-6
    assert bool(((decoded["wte.weight"] - state["wte.weight"]).abs() <= bound).all())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("int4-g32+head:svd:2", ["head takes a numeric step"]),
        ("int4-g32+cal+head:int8", ["head:N and then cal come last"]),
        ("bf16+cal", ["no int step"]),
        ("head:int8", ["needs a codec step"]),
        ("int4-g32+head:int7", ["unknown method"]),
    ],
)
def test_bad_method_spellings(text: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        parse_method(text)
    assert all(word in str(error.value) for word in words)


def test_spellings_round_trip_and_the_sweep_searches_mixed_and_calibrated() -> None:
    for text in ("int4-g32+head:int8", "svd:0.5+int8+head:int6-g64+cal", "int8+cal"):
        assert method_name(parse_method(text)) == text
    state = tiny_gpt_state()
    plain, _ = resolve_methods("sweep", state, calibrate=False)
    names = [method_name(m) for m in plain]
    assert "int4-g32+head:int8" in names and not any(n.endswith("+cal") for n in names)
    calibrated, _ = resolve_methods("sweep", state, calibrate=True)
    assert "int4-g32+head:int8+cal" in [method_name(m) for m in calibrated]


# ----------------------------------------------------------------------------- calibration
def assert_same_layout(plain: dict, weighted: dict) -> None:
    assert plain.keys() == weighted.keys()
    for key, value in plain.items():
        assert (value.dtype, value.shape) == (weighted[key].dtype, weighted[key].shape)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 6),
    cols=st.sampled_from([8, 32, 40, 96]),
    bits=st.sampled_from([4, 5, 6]),
    group=st.sampled_from([32, 64]),
    spread=st.floats(0.0, 6.0),
)
def test_calibrated_rounding_is_never_worse_and_stays_in_bounds(
    seed, rows, cols, bits, group, spread
) -> None:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * torch.rand(1, generator=generator)
    importance = torch.rand(cols, generator=generator).pow(1 + spread)
    stored, meta = encode_group_int(weight, bits, group)
    weighted, weighted_meta = encode_group_weighted(weight, bits, group, importance)
    assert_same_layout(stored, weighted)
    assert weighted_meta == meta
    codes = unpack_bits(weighted["packed"], bits)
    assert int(codes.max()) <= (1 << bits) - 1 and int(codes.min()) >= 0
    plain_error = weighted_error(weight, decode_group_int(stored, meta), importance).sum()
    error = weighted_error(weight, decode_group_int(weighted, meta), importance).sum()
    assert float(error) <= float(plain_error) * (1 + 1e-12)
    stored8, meta8 = encode_int8(weight)
    weighted8, _ = encode_int8_weighted(weight, importance)
    assert_same_layout(stored8, weighted8)
    assert int(weighted8["q"].abs().max()) <= 127
    plain_rows = weighted_error(weight, decode_int8(stored8, meta8), importance)
    rows_error = weighted_error(weight, decode_int8(weighted8, meta8), importance)
    assert bool((rows_error <= plain_rows * (1 + 1e-12)).all())  # row by row


def test_calibrated_rounding_pays_where_importance_is_uneven() -> None:
    torch.manual_seed(3)
    weight, importance = torch.randn(64, 128), torch.rand(128).pow(4)
    stored, meta = encode_group_int(weight, 4, 32)
    weighted, _ = encode_group_weighted(weight, 4, 32, importance)
    plain = weighted_error(weight, decode_group_int(stored, meta), importance).sum()
    better = weighted_error(weight, decode_group_int(weighted, meta), importance).sum()
    assert float(better) < 0.8 * float(plain)
    assert stored_bytes(weighted) == stored_bytes(stored)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 5),
    cols=st.sampled_from([32, 64]),
    name=st.sampled_from(["int8", "int4", "int5", "int6"]),
    samples=st.integers(4, 80),
)
def test_gptq_rounding_is_never_worse_in_output_error_and_stays_in_bounds(
    seed, rows, cols, name, samples
) -> None:
    """Row by row, the calibrated parts' e H eᵀ is at most plain rounding's; same parts."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    inputs = torch.randn(samples, cols, generator=generator) * torch.rand(cols, generator=generator)
    hessian = inputs.T @ inputs / samples + 1e-6 * torch.eye(cols)
    params = {} if name == "int8" else {"group": 32}
    codec = CODECS[name]
    plain, meta = codec.encode(weight, **params)
    calibrated, calibrated_meta = encode_calibrated(name, weight, params, hessian)
    assert_same_layout(plain, calibrated)
    assert calibrated_meta == meta
    if name == "int8":
        assert int(calibrated["q"].abs().max()) <= 127
    else:
        bits = int(name[3:])
        assert int(unpack_bits(calibrated["packed"], bits).max()) <= (1 << bits) - 1
    before = output_error(weight, codec.decode(plain, meta), hessian)
    after = output_error(weight, codec.decode(calibrated, meta), hessian)
    assert bool((after <= before * (1 + 1e-9) + 1e-12).all())


def test_gptq_pays_on_correlated_inputs() -> None:
    torch.manual_seed(5)
    mix = torch.randn(64, 64)
    inputs = torch.randn(512, 64) @ mix
    hessian = inputs.T @ inputs / 512
    weight = torch.randn(48, 64)
    plain, meta = encode_group_int(weight, 4, 32)
    calibrated, _ = encode_calibrated("int4", weight, {"group": 32}, hessian)
    before = output_error(weight, decode_group_int(plain, meta), hessian).sum()
    after = output_error(weight, decode_group_int(calibrated, meta), hessian).sum()
    assert float(after) < 0.7 * float(before)


def test_importance_must_match_the_last_dimension() -> None:
    with pytest.raises(ValueError, match="last dimension is 32"):
        encode_int8_weighted(torch.randn(4, 32), torch.ones(16))
