"""Crystallization codecs (h2q_tui/codecs): error bounds, exact int4 packing, Kronecker-rank
truncation against the kernels' own materialisation, the method parser and the policy."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from h2q_kernels.hamiltonian import materialise_weight, quaternion_block_matrix
from safetensors.torch import load_file, save_file

from h2q_tui.codecs.kronecker import (
    ham_groups,
    model_rank,
    truncate_optimal,
    truncate_shared,
    truncate_state_dict,
)
from h2q_tui.codecs.layout import decode_state_dict, encode_state_dict
from h2q_tui.codecs.method import Step, decode_chain, encode_chain, parse_method
from h2q_tui.codecs.policy import plan
from h2q_tui.codecs.tensor import (
    CrystalFormatError,
    decode_cast,
    decode_int4,
    decode_int8,
    decode_svd,
    encode_bf16,
    encode_fp16,
    encode_group_int,
    encode_int4,
    encode_int8,
    encode_svd,
    pack_bits,
    stored_bytes,
    unpack_bits,
    unpack_int4,
)
from h2q_tui.config import ModelConfig
from h2q_tui.models import build_model

FP32_SLACK = 1e-6  # relative fp32 arithmetic in decode (q·scale + min)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- casts
@pytest.mark.parametrize(
    ("encode", "dtype", "rel"),
    [(encode_bf16, torch.bfloat16, 2**-8), (encode_fp16, torch.float16, 2**-11)],
)
def test_casts_round_trip_within_half_an_ulp(encode, dtype, rel):
    w = torch.randn(17, 33, generator=_gen()) * 3
    stored, meta = encode(w)
    assert stored["value"].dtype == dtype and meta["shape"] == [17, 33]
    w_hat = decode_cast(stored, meta)
    assert w_hat.dtype == torch.float32 and w_hat.shape == w.shape
    assert ((w - w_hat).abs() <= rel * w.abs() + 1e-30).all()


def test_fp16_refuses_overflow_and_codecs_refuse_nonfinite():
    with pytest.raises(ValueError, match="overflow fp16"):
        encode_fp16(torch.tensor([1e6]))
    with pytest.raises(ValueError, match="non-finite"):
        encode_int8(torch.tensor([[1.0, float("nan")]]))


# ----------------------------------------------------------------------------- int8
@pytest.mark.parametrize("shape", [(7, 300), (513,), (3, 5, 16)])
def test_int8_error_at_most_half_the_stored_scale(shape):
    w = torch.randn(*shape, generator=_gen(1)) * torch.logspace(-3, 1, shape[-1])
    w[..., 0] = 0.0
    if len(shape) > 1:
        w[0] = 0.0  # an all-zero row
    stored, meta = encode_int8(w)
    rows = w.reshape(-1, shape[-1])
    assert stored["q"].dtype == torch.int8 and stored["q"].shape == rows.shape
    assert stored["scale"].dtype == torch.float16 and stored["scale"].shape == (rows.shape[0],)
    scale = stored["scale"].float()
    absmax = rows.abs().amax(dim=1)
    assert (scale >= absmax / 127).all()  # rounded up: nothing clips
    assert (scale <= absmax / 127 * (1 + 2**-10) + 6e-8).all()  # by at most fp16 rounding
    w_hat = decode_int8(stored, meta)
    assert w_hat.shape == w.shape
    error = (rows - w_hat.reshape(rows.shape)).abs()
    assert (error <= scale[:, None] / 2 * (1 + FP32_SLACK)).all()
    if len(shape) > 1:
        assert (w_hat[0] == 0).all()


def test_int8_keeps_dtype_and_one_scale_for_1d():
    w = (torch.randn(64, generator=_gen(2))).to(torch.bfloat16)
    stored, meta = encode_int8(w)
    assert stored["scale"].shape == (1,)
    w_hat = decode_int8(stored, meta)
    assert w_hat.dtype == torch.bfloat16
    bound = stored["scale"].float() / 2 + w.float().abs() * 2**-8  # + bf16 rounding of ŵ
    assert ((w.float() - w_hat.float()).abs() <= bound).all()


# ----------------------------------------------------------------------------- int4
def test_int4_packing_is_exact_on_a_known_tensor():
    # group 1 (32 values): 0..15 then 15..0 -> min 0, scale 1, codes = values
    first = list(range(16)) + list(range(15, -1, -1))
    # group 2: 8 real values (tail padded by repeating 28): min -2, max 28 -> scale 2
    second = [-2, 0, 2, 4, 6, 8, 10, 28]
    w = torch.tensor(first + second, dtype=torch.float32).reshape(5, 8)
    stored, meta = encode_int4(w, group=32)
    expected = (
        [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]  # (0,1) (2,3) … low nibble first
        + [0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01]  # (15,14) (13,12) …
        + [0x10, 0x32, 0x54, 0xF6]  # codes 0 1 2 3 4 5 6 15
        + [0xFF] * 12  # the padding: 28 repeated, code 15
    )
    assert stored["packed"].dtype == torch.uint8
    assert stored["packed"].tolist() == expected
    assert stored["scale"].tolist() == [1.0, 2.0] and stored["min"].tolist() == [0.0, -2.0]
    assert stored["scale"].dtype == torch.float16 and stored["min"].dtype == torch.float16
    assert meta["shape"] == [5, 8] and meta["group"] == 32
    assert unpack_int4(stored["packed"])[:4].tolist() == [0, 1, 2, 3]
    assert torch.equal(decode_int4(stored, meta), w)  # exactly representable: no error at all


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("shape", [(9, 100), (1000,), (4, 8, 8)])
def test_int4_error_at_most_half_the_group_scale(group, shape):
    w = torch.randn(*shape, generator=_gen(group)) * 0.05 + 0.01
    stored, meta = encode_int4(w, group=group)
    count = w.numel()
    groups = -(-count // group)
    assert stored["packed"].numel() == groups * group // 2
    assert stored["scale"].shape == (groups,) and stored["min"].shape == (groups,)
    w_hat = decode_int4(stored, meta)
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    scale = stored["scale"].float().repeat_interleave(group)[:count]
    error = (w.reshape(-1) - w_hat.reshape(-1)).abs()
    assert (error <= scale / 2 + FP32_SLACK * w.abs().reshape(-1) + 1e-9).all()
    # the fp16 minimum never exceeds the group's minimum, the levels reach its maximum
    flat = torch.cat([w.reshape(-1), w.reshape(-1)[-1:].expand(groups * group - count)])
    lows = flat.reshape(groups, group).amin(1)
    assert (stored["min"].float() <= lows).all()


@pytest.mark.parametrize("bits", [4, 5, 6])
def test_bit_packing_is_exact_on_a_known_tensor(bits):
    codes = torch.arange(64, dtype=torch.uint8) % (1 << bits)
    packed = pack_bits(codes, bits)
    assert packed.numel() == 64 * bits // 8
    assert torch.equal(unpack_bits(packed, bits), codes.long())
    # least significant bits first: code i sits at bits B·i … of the little-endian word
    word = sum(int(packed[j]) << (8 * j) for j in range(bits))
    assert [(word >> (bits * i)) & ((1 << bits) - 1) for i in range(8)] == codes[:8].tolist()
    if bits == 4:  # the generic packing is exactly int4's low-nibble-first layout
        assert torch.equal(unpack_int4(packed), codes.long())


@pytest.mark.parametrize("bits", [5, 6])
@pytest.mark.parametrize("group", [32, 128])
def test_int5_int6_error_at_most_half_the_group_scale(bits, group):
    w = torch.randn(7, 90, generator=_gen(bits)) * 0.05
    stored, meta = encode_group_int(w, bits, group)
    groups = -(-w.numel() // group)
    assert meta["codec"] == f"int{bits}" and stored["packed"].numel() == groups * group * bits // 8
    w_hat = decode_chain(stored, meta)
    scale = stored["scale"].float().repeat_interleave(group)[: w.numel()]
    error = (w.reshape(-1) - w_hat.reshape(-1)).abs()
    assert (error <= scale / 2 + FP32_SLACK * w.abs().reshape(-1) + 1e-9).all()
    # one more bit halves the step: int6's error is well under int4's on the same tensor
    int4_error = (w - decode_int4(*encode_int4(w, group=group))).norm()
    assert (w - w_hat).norm() < int4_error / (2 ** (bits - 4)) * 1.3


def test_int4_refuses_other_groups():
    with pytest.raises(ValueError, match="32, 64 or 128"):
        encode_int4(torch.zeros(64), group=48)


# ----------------------------------------------------------------------------- svd
def test_svd_full_rank_is_exact_and_truncation_error_is_the_tail():
    w = torch.randn(40, 24, generator=_gen(3))
    stored, meta = encode_svd(w, rank=24)
    assert torch.allclose(decode_svd(stored, meta), w, atol=1e-5)
    stored, meta = encode_svd(w, rank=5)
    assert stored["u"].shape == (40, 5) and stored["v"].shape == (5, 24)
    assert stored["u"].dtype == torch.float32
    s = torch.linalg.svdvals(w.double())
    error = (w.double() - decode_svd(stored, meta).double()).norm()
    assert error == pytest.approx(float(s[5:].norm()), rel=1e-5)
    assert meta["relative_error"] == pytest.approx(float(s[5:].norm() / s.norm()), rel=1e-6)


def test_svd_fraction_and_the_no_saving_flag():
    w = torch.randn(30, 60, generator=_gen(4))  # break-even rank 30·60/90 = 20
    _, meta = encode_svd(w, fraction=0.5)
    assert meta["rank"] == 10 and meta["saves_bytes"] and "note" not in meta
    _, meta = encode_svd(w, fraction=1.0)
    assert meta["rank"] == 20 and not meta["saves_bytes"] and "saves no bytes" in meta["note"]
    _, meta = encode_svd(w, rank=500)
    assert meta["rank"] == 30 and not meta["saves_bytes"]  # capped at min(m, n)
    with pytest.raises(ValueError, match="2-D"):
        encode_svd(torch.zeros(3, 4, 5), rank=1)


# ----------------------------------------------------------------------------- chains
@pytest.mark.parametrize("method", ["svd:0.5+int8", "svd:16+int4-g64", "svd:8+bf16"])
def test_combination_encodes_the_factors_and_decodes_in_reverse(method):
    w = torch.randn(64, 96, generator=_gen(5))
    steps = parse_method(method)
    stored, meta = encode_chain(w, steps)
    assert set(meta["parts"]) == {"u", "v"}
    assert all(key.split("::")[0] in ("u", "v") for key in stored)
    w_hat = decode_chain(stored, meta)
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    svd_only = decode_chain(*encode_chain(w, steps[:1]))
    # the numeric step adds little to the SVD's own error
    assert (w - w_hat).norm() <= (w - svd_only).norm() * 1.05 + 1e-3 * w.norm()


# ----------------------------------------------------------------------------- parser
def test_parse_method_accepts_the_documented_forms():
    assert parse_method("svd:0.5+int8") == (Step("svd", 0.5), Step("int8"))
    assert parse_method("rank:6+int8") == (Step("rank", 6), Step("int8"))
    assert parse_method("svd:16+int4-g64") == (Step("svd", 16), Step("int4", 64))
    assert parse_method(" rank-shared:3 ") == (Step("rank-shared", 3),)
    assert parse_method("svd:1") == (Step("svd", 1),) and parse_method("svd:1.0") == (
        Step("svd", 1.0),
    )
    for text in (
        "bf16",
        "fp16",
        "int8",
        "int4-g32",
        "int4-g128",
        "int5-g64",
        "int6-g128",
        "svd:0.25+int6-g32",
        "svd:0.25+int8",
        "svd:1.0",
        "rank:2+int4-g32",
    ):
        assert "+".join(map(str, parse_method(text))) == text  # canonical round trip


@pytest.mark.parametrize(
    ("text", "rank", "message"),
    [
        ("int3", None, "unknown method 'int3'"),
        ("", None, "empty method"),
        ("int8+", None, "empty step"),
        ("rank:0", None, "at least 1"),
        ("rank:8", 8, "below the Kronecker rank R = 8"),
        ("rank:x", None, "integer K"),
        ("svd:1.5", None, r"in \(0, 1\]"),
        ("svd:0.0", None, r"in \(0, 1\]"),
        ("svd:0", None, "at least 1"),
        ("svd", None, "rank K"),
        ("int4-g48", None, "32, 64 or 128"),
        ("int4", None, "needs a group"),
        ("int6", None, "int6 needs a group"),
        ("int5-g16", None, "32, 64 or 128"),
        ("int7-g32", None, "unknown method 'int7-g32'"),
        ("int8+svd:4", None, "comes first"),
        ("bf16+int8", None, "comes last"),
        ("svd:4+rank:2", None, "comes first"),
    ],
)
def test_parse_method_errors_are_one_line(text, rank, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_method(text, rank=rank)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- Kronecker rank
def _random_layer(rank=5, sub_blocks=2, factor=6, seed=6):
    g = _gen(seed)
    return torch.randn(rank, 4, sub_blocks, sub_blocks, generator=g), torch.randn(
        rank, factor, factor, generator=g
    )


def _weight(bank, factors):
    return materialise_weight(quaternion_block_matrix(bank[: factors.shape[0]]), factors)


def test_rank_k_equal_r_reproduces_w_for_both_variants():
    bank, factors = _random_layer()
    w = _weight(bank, factors)
    best = truncate_optimal(bank, factors, 5)
    assert torch.allclose(_weight(best.bank, best.factors), w, atol=1e-4, rtol=1e-5)
    assert best.relative_error < 1e-6
    shared = truncate_shared(bank, [factors], 5)
    assert shared.kept == [0, 1, 2, 3, 4]
    assert torch.allclose(_weight(shared.bank, shared.factors[0]), w, atol=1e-6)


def _vlp_truncation(w, four_s, factor, k):
    """Independent check: SVD of the Van Loan–Pitsianis rearrangement of the dense W."""
    blocks = w.double().reshape(four_s, factor, four_s, factor).permute(0, 2, 1, 3)
    rearranged = blocks.reshape(four_s * four_s, factor * factor)
    u, s, vh = torch.linalg.svd(rearranged, full_matrices=False)
    approx = (u[:, :k] * s[:k]) @ vh[:k]
    back = approx.reshape(four_s, four_s, factor, factor).permute(0, 2, 1, 3)
    return back.reshape(four_s * factor, four_s * factor)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_recovered_quaternions_give_the_optimal_w_k_through_the_kernels(k):
    bank, factors = _random_layer()
    w = _weight(bank, factors)
    best = truncate_optimal(bank, factors, k)
    assert best.bank.shape == (k, 4, 2, 2) and best.factors.shape == (k, 6, 6)
    w_k = _weight(best.bank, best.factors)  # the model's own materialisation
    assert torch.allclose(w_k.double(), _vlp_truncation(w, 8, 6, k), atol=1e-4)
    measured = float((w - w_k).norm() / w.norm())
    assert best.relative_error == pytest.approx(measured, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimal_truncation_is_never_worse_than_dropping_terms(seed):
    bank, factors = _random_layer(rank=6, sub_blocks=2, factor=5, seed=seed)
    w = _weight(bank, factors)
    for k in range(1, 6):
        best = float(
            (
                w - _weight(*(lambda t: (t.bank, t.factors))(truncate_optimal(bank, factors, k)))
            ).norm()
        )
        for subset in itertools.combinations(range(6), k):
            dropped = float((w - _weight(bank[list(subset)], factors[list(subset)])).norm())
            assert best <= dropped * (1 + 1e-5)
        shared = truncate_shared(bank, [factors], k)
        assert shared.relative_errors[0] * float(w.norm()) >= best * (1 - 1e-5)


def test_shared_rule_ranks_terms_by_norms_summed_over_layers():
    bank = torch.ones(3, 4, 1, 1)
    layer_a = torch.stack([torch.eye(2) * s for s in (1.0, 5.0, 2.0)])
    layer_b = torch.stack([torch.eye(2) * s for s in (4.0, 0.5, 2.0)])
    assert truncate_shared(bank, [layer_a, layer_b], 2).kept == [0, 1]  # 5, 5.5, 4
    assert truncate_shared(bank, [layer_a], 2).kept == [1, 2]


# ----------------------------------------------------------------------------- models
def _model(family="microstream", **overrides):
    torch.manual_seed(0)
    config = ModelConfig(
        family=family,
        d_model=128,
        n_layers=1,
        n_heads=2,
        context=16,
        factor_size=8,
        rank=4,
        **overrides,
    )
    return config, build_model(config)


def test_ham_groups_find_every_layout():
    _, micro = _model()
    groups = ham_groups(micro.state_dict())
    assert [g.prefix for g in groups] == [""] and groups[0].bank_keys == ("bank.A",)
    assert {layer.name for layer in groups[0].layers} == {
        "blocks.0.attn.q",
        "blocks.0.attn.k",
        "blocks.0.attn.v",
        "blocks.0.attn.o",
        "blocks.0.ffn.fc1",
        "blocks.0.ffn.fc2",
    }
    _, own = _model(shared_bank=False)
    groups = ham_groups(own.state_dict())
    assert len(groups) == 6 and all(g.prefix == g.layers[0].prefix for g in groups)
    _, qrlm = _model("qrlm")
    qrlm.grow_ffn_rank()
    (group,) = ham_groups(qrlm.state_dict())
    assert group.bank_keys == ("bank.A", "bank.extra.0") and group.rank == 5
    ranks = {layer.name: layer.rank for layer in group.layers}
    assert ranks["blocks.0.fc1"] == 5 and ranks["blocks.0.attn.q_proj"] == 4
    assert model_rank(qrlm.state_dict()) == 5
    _, gpt = _model("gpt")
    assert ham_groups(gpt.state_dict()) == [] and model_rank(gpt.state_dict()) is None


@pytest.mark.parametrize("variant", ["optimal", "shared"])
@pytest.mark.parametrize("layout", ["microstream", "qrlm-grown", "unshared"])
@torch.no_grad()
def test_truncated_state_dict_loads_into_the_model_its_overrides_build(variant, layout):
    family = "qrlm" if layout == "qrlm-grown" else "microstream"
    config, model = _model(family, shared_bank=layout != "unshared")
    if layout == "qrlm-grown":
        model.grow_ffn_rank()
    source = model.state_dict()
    cut = truncate_state_dict(source, 2, variant)
    assert cut.overrides["rank"] == 2 and cut.overrides["rank_growths"] == 0
    rebuilt = build_model(
        ModelConfig(**{**config.__dict__, "rank": 2, "shared_bank": cut.overrides["shared_bank"]})
    )
    rebuilt.load_state_dict(cut.state_dict, strict=True)
    layers = dict(model.named_modules())
    for name, layer in rebuilt.named_modules():
        if not hasattr(layer, "materialised"):
            continue
        original = layers[name]
        factors = original.factors()
        own = original.structure_bank.terms()
        expected = truncate_optimal(own, factors, 2) if variant == "optimal" else None
        if expected is not None:
            assert torch.allclose(
                layer.materialised(), _weight(expected.bank, expected.factors), atol=1e-5
            )
        report = next(row for row in cut.layers if row["layer"] == name)
        w = original.materialised()
        measured = float((w - layer.materialised()).norm() / w.norm())
        key = "error_optimal" if variant == "optimal" else "error_shared"
        assert report[key] == pytest.approx(measured, rel=1e-3, abs=1e-6)
        assert report["error_optimal"] <= report["error_shared"] + 1e-9


def test_rank_at_or_beyond_the_rank_of_c_is_lossless():
    # S = 1 (width 32 = 4·1·8): C is (4, 64), so Kronecker rank 4 is exact although R = 8
    config = ModelConfig(
        family="microstream", d_model=64, n_layers=1, n_heads=2, context=16, factor_size=8, rank=8
    )
    torch.manual_seed(1)
    model = build_model(config).eval()
    cut = truncate_state_dict(model.state_dict(), 4, "optimal")
    rebuilt = build_model(
        ModelConfig(**{**config.__dict__, "rank": 4, "shared_bank": False})
    ).eval()
    rebuilt.load_state_dict(cut.state_dict, strict=True)
    idx = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], rebuilt(idx)[0], atol=1e-4)
    assert max(row["error_optimal"] for row in cut.layers) < 1e-6


def test_truncate_state_dict_refuses_what_it_cannot_do():
    _, gpt = _model("gpt")
    with pytest.raises(ValueError, match="no HamLinear layers"):
        truncate_state_dict(gpt.state_dict(), 2)
    _, micro = _model()
    with pytest.raises(ValueError, match=r"below the Kronecker rank R = 4"):
        truncate_state_dict(micro.state_dict(), 4)


# ----------------------------------------------------------------------------- policy
def test_default_policy_per_method():
    _, gpt = _model("gpt")
    sd = gpt.state_dict()
    svd = plan(sd, "svd:0.5+int8")
    assert svd["blocks.0.attn.c_attn.weight"] == (Step("svd", 0.5), Step("int8"))
    assert svd["wte.weight"] == (Step("int8"),) and svd["wpe.weight"] == (Step("int8"),)
    assert svd["blocks.0.ln_1.weight"] is None and svd["blocks.0.attn.c_attn.bias"] is None
    assert plan(sd, "bf16")["blocks.0.ln_1.weight"] == (Step("bf16"),)
    kept = plan(sd, "int8", keep=["wte.*", "blocks.0.mlp.*"])
    assert kept["wte.weight"] is None and kept["blocks.0.mlp.c_fc.weight"] is None
    assert kept["blocks.0.attn.c_proj.weight"] == (Step("int8"),)
    with pytest.raises(ValueError, match="no HamLinear layers"):
        plan(sd, "rank:2+int8")
    _, micro = _model()
    sd = micro.state_dict()
    rank = plan(sd, "rank:2+int8")
    assert rank["bank.A"] == (Step("rank", 2),)  # banks are never quantised
    assert rank["blocks.0.attn.q.B"] == (Step("rank", 2), Step("int8"))
    assert rank["tok_emb.weight"] == (Step("int8"),) and rank["blocks.0.attn.q.bias"] is None
    assert plan(sd, "int8")["bank.A"] is None
    with pytest.raises(ValueError, match="no dense 2-D weight matrices"):
        plan(sd, "svd:0.5")


def _save_and_load(tmp_path, crystal):
    path = tmp_path / "model.safetensors"
    save_file(crystal.tensors, str(path), metadata=crystal.metadata)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata, path


def test_state_dict_round_trip_through_safetensors_with_tied_weights(tmp_path):
    _, gpt = _model("gpt")
    source = gpt.state_dict()
    crystal = encode_state_dict(source, "int8", keep=["blocks.0.attn.c_proj.*"])
    assert "lm_head.weight" not in crystal.tensors and "wte.weight::q" in crystal.tensors
    assert crystal.layout["aliases"] == {"lm_head.weight": "wte.weight"}
    assert crystal.bytes_after == stored_bytes(crystal.tensors) < crystal.bytes_before
    assert sum(row.bytes_after for row in crystal.rows) == crystal.bytes_after
    tensors, metadata, path = _save_and_load(tmp_path, crystal)
    assert path.stat().st_size > crystal.bytes_after  # the caller measures the file itself
    decoded, overrides = decode_state_dict(tensors, metadata)
    assert overrides == {} and set(decoded) == set(source)
    assert decoded["lm_head.weight"] is decoded["wte.weight"]
    assert torch.equal(
        decoded["blocks.0.attn.c_proj.weight"], source["blocks.0.attn.c_proj.weight"]
    )
    for row in crystal.rows:
        if row.steps == "int8":
            scale = tensors[f"{row.name}::scale"].float()
            error = (source[row.name] - decoded[row.name]).abs()
            assert (error <= scale[:, None] / 2 * (1 + FP32_SLACK)).all()
    gpt.load_state_dict(decoded, strict=True)


def test_rank_plus_int8_round_trip_and_reports(tmp_path):
    config, model = _model()
    crystal = encode_state_dict(model.state_dict(), "rank:2+int8")
    assert "bank.A" not in crystal.tensors and "blocks.0.attn.q.bank.A" in crystal.tensors
    assert "blocks.0.attn.q.B::q" in crystal.tensors
    assert crystal.overrides == {"rank": 2, "shared_bank": False, "rank_growths": 0}
    layers = [row for row in crystal.rows if row.kind == "hamlinear"]
    assert len(layers) == 6 and all(0 < row.relative_error < 1 for row in layers)
    assert sum(row.bytes_after for row in crystal.rows) == crystal.bytes_after
    assert crystal.bytes_before == sum(t.numel() * 4 for t in model.state_dict().values())
    tensors, metadata, _ = _save_and_load(tmp_path, crystal)
    decoded, overrides = decode_state_dict(tensors, metadata)
    rebuilt = build_model(
        ModelConfig(**{**config.__dict__, "rank": overrides["rank"], "shared_bank": False})
    )
    rebuilt.load_state_dict(decoded, strict=True)
    shared = encode_state_dict(model.state_dict(), "rank-shared:2", measure=True)
    assert shared.overrides["shared_bank"] is True and shared.layout["rank"]["kept"][""]
    optimal = {
        row.name: row.relative_error
        for row in encode_state_dict(model.state_dict(), "rank:2").rows
        if row.kind == "hamlinear"
    }
    for row in shared.rows:
        if row.kind == "hamlinear":
            assert optimal[row.name] <= row.relative_error + 1e-9


def test_svd_setting_that_saves_nothing_is_reported():
    _, gpt = _model("gpt")
    crystal = encode_state_dict(gpt.state_dict(), "svd:1.0")
    assert (
        crystal.saves_no_bytes
        and "saves no bytes" in crystal.notes[0]
        and "\n" not in crystal.notes[0]
    )


def test_corrupt_or_foreign_layouts_are_one_line_errors():
    _, gpt = _model("gpt")
    crystal = encode_state_dict(gpt.state_dict(), "int8")
    with pytest.raises(CrystalFormatError, match="not a crystallized file"):
        decode_state_dict(crystal.tensors, {})
    with pytest.raises(CrystalFormatError, match="not valid JSON"):
        decode_state_dict(crystal.tensors, {"h2q.crystal": "{"})
    missing = dict(crystal.tensors)
    del missing["wte.weight::scale"]
    with pytest.raises(CrystalFormatError, match="'scale' is missing"):
        decode_state_dict(missing, crystal.metadata)
    with pytest.raises(CrystalFormatError, match="not in the crystallized layout"):
        decode_state_dict({**crystal.tensors, "stray": torch.zeros(1)}, crystal.metadata)
    layout = json.loads(crystal.metadata["h2q.crystal"])
    layout["tensors"]["wte.weight"]["codec"] = "int3"
    with pytest.raises(CrystalFormatError, match="unknown codec"):
        decode_state_dict(crystal.tensors, {"h2q.crystal": json.dumps(layout)})
    wrong = dict(crystal.tensors)
    wrong["wte.weight::q"] = wrong["wte.weight::q"][:-1]
    with pytest.raises(CrystalFormatError, match="do not match"):
        decode_state_dict(wrong, crystal.metadata)
