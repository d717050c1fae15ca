"""Hamiltonian kernels: reference vs an explicit Hamilton-product formula, fast vs reference."""

from __future__ import annotations

import pytest
import torch
from h2q_kernels.hamiltonian import (
    HamLinear,
    StructureBank,
    ham_linear_fast,
    ham_linear_reference,
    ham_linear_structured,
    materialise_weight,
    orthogonality_penalty,
    quaternion_block_matrix,
)
from h2q_kernels.hamiltonian.structured import structured_to_dense_flops


def hamilton_product(p: tuple, q: tuple) -> tuple:
    """(a1,b1,c1,d1)(a2,b2,c2,d2) with matrix-valued components, written out by hand."""
    a1, b1, c1, d1 = p
    a2, b2, c2, d2 = q
    return (
        a1 @ a2 - b1 @ b2 - c1 @ c2 - d1 @ d2,
        a1 @ b2 + b1 @ a2 + c1 @ d2 - d1 @ c2,
        a1 @ c2 - b1 @ d2 + c1 @ a2 + d1 @ b2,
        a1 @ d2 + b1 @ c2 - c1 @ b2 + d1 @ a2,
    )


def explicit_ham_linear(x, bank, factors, bias):
    """Y = Σ_r A_r ⊗_Hamilton X · B_rᵀ with X split into its four S×F quaternion components."""
    s = bank.shape[-1]
    out = []
    for vec in x.reshape(-1, x.shape[-1]):
        blocks = vec.view(4 * s, -1)  # (4S, F)
        comps = tuple(blocks[c * s : (c + 1) * s] for c in range(4))  # each (S, F)
        total = 0
        for r in range(bank.shape[0]):
            prod = hamilton_product(tuple(bank[r, c] for c in range(4)), comps)
            total = total + torch.cat(prod, dim=0) @ factors[r].T
        out.append(total.reshape(-1) + bias)
    return torch.stack(out).view_as(x)


SHAPES = [(64, 16, 2), (128, 32, 4), (384, 32, 8), (96, 8, 3)]  # (D, F, R)


@pytest.mark.parametrize("width,factor,rank", SHAPES)
def test_reference_matches_explicit_hamilton_product(width, factor, rank):
    torch.manual_seed(0)
    bank = StructureBank(width // (4 * factor), rank)
    layer = HamLinear(width, factor, rank, bank=bank)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 5, width, dtype=torch.float64)
    A, B, b = bank.A.double(), layer.B.double(), layer.bias.double()
    expected = explicit_ham_linear(x, A, B, b)
    got = ham_linear_reference(x, quaternion_block_matrix(A), B, b)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_block_matrix_is_left_multiplication():
    """H(p) applied to the components of q equals the components of p*q (S = 1, scalars)."""
    torch.manual_seed(1)
    p, q = torch.randn(4, 1, 1, dtype=torch.float64), torch.randn(4, 1, 1, dtype=torch.float64)
    H = quaternion_block_matrix(p.unsqueeze(0))[0]  # (4, 4)
    expected = torch.stack([c.squeeze() for c in hamilton_product(tuple(p), tuple(q))])
    torch.testing.assert_close(H @ q.view(4), expected)


def _pair(width, factor, rank, dtype, seed=0, implementation="fast"):
    torch.manual_seed(seed)
    fast = HamLinear(width, factor, rank, implementation=implementation)
    ref = HamLinear(width, factor, rank, implementation="reference")
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        fast.bias.normal_()
        ref.bias.copy_(fast.bias)
    x = torch.randn(4, 7, width)
    return fast, ref, x


def _outputs_and_grads(layer, x, dtype):
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = [x.grad, layer.B.grad, layer.bias.grad, layer.structure_bank.A.grad]
    return y.float(), [g.float() for g in grads]


FAST_PATHS = ["fast", "structured"]


@pytest.mark.parametrize("implementation", FAST_PATHS)
@pytest.mark.parametrize("width,factor,rank", SHAPES)
def test_fast_matches_reference_fp32(width, factor, rank, implementation):
    fast, ref, x = _pair(width, factor, rank, torch.float32, implementation=implementation)
    y_fast, g_fast = _outputs_and_grads(fast, x, torch.float32)
    y_ref, g_ref = _outputs_and_grads(ref, x, torch.float32)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("implementation", FAST_PATHS)
@pytest.mark.parametrize("width,factor,rank", SHAPES[:3])
def test_fast_matches_reference_bf16(width, factor, rank, implementation):
    """Under bf16 autocast every path stays within the error a dense bf16 layer makes."""
    fast, ref, x = _pair(width, factor, rank, torch.bfloat16, implementation=implementation)
    y_fast, g_fast = _outputs_and_grads(fast, x, torch.bfloat16)
    y_exact, g_exact = _outputs_and_grads(ref, x, torch.float32)
    # Yardstick: a plain nn.Linear with the same materialised weight, in bf16 vs fp32.
    dense_w = materialise_weight(ref.structure_bank.block_matrices(), ref.B).detach()
    y_dense16 = torch.nn.functional.linear(
        x.bfloat16(), dense_w.bfloat16(), ref.bias.detach().bfloat16()
    ).float()
    dense_err = (y_dense16 - y_exact).abs().max().item()
    assert (y_fast - y_exact).abs().max().item() <= 4 * dense_err + 1e-3
    for a, b in zip(g_fast, g_exact, strict=True):
        scale = b.abs().max().item() + 1e-6
        assert (a - b).abs().max().item() / scale < 0.05


def test_materialised_weight_is_sum_of_kronecker_products():
    torch.manual_seed(2)
    layer = HamLinear(128, 16, 3)
    H = layer.structure_bank.block_matrices()
    expected = sum(torch.kron(H[r], layer.B[r]) for r in range(3))
    torch.testing.assert_close(materialise_weight(H, layer.B), expected)
    x = torch.randn(5, 128)
    torch.testing.assert_close(ham_linear_fast(x, H, layer.B, None), x @ expected.T)


@pytest.mark.parametrize("width,factor,rank", SHAPES)
def test_structured_flop_ratio_counts_its_products(width, factor, rank):
    """The documented multiply-add ratio is what the structured form's products do."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(4)
    layer = HamLinear(width, factor, rank, implementation="structured")
    x = torch.randn(10, width)
    H = layer.structure_bank.block_matrices().detach()
    counter = FlopCounterMode(display=False)
    with counter:
        ham_linear_structured(x, H, layer.B.detach(), None)
    dense = 2 * 10 * width * width
    assert counter.get_total_flops() / dense == pytest.approx(
        structured_to_dense_flops(width, factor, rank)
    )


def test_orthogonality_penalty_at_init_f32_r8():
    torch.manual_seed(3)
    layer = HamLinear(384, 32, 8)
    value = orthogonality_penalty([layer]).item()
    # Σ_r (1 - 1/(r+1)) · sqrt(32) = 29.8803...
    expected = sum(1 - 1 / (r + 1) for r in range(8)) * 32**0.5
    assert value == pytest.approx(expected, rel=1e-4)
    assert value == pytest.approx(29.88, abs=0.01)


def test_penalty_zero_for_orthogonal_factors_and_ignores_bank():
    layer = HamLinear(64, 16, 2)
    with torch.no_grad():
        layer.B.copy_(torch.eye(16).expand(2, 16, 16))
        layer.structure_bank.A.mul_(100.0)
    assert orthogonality_penalty([layer]).item() == pytest.approx(0.0, abs=1e-5)


def test_shared_bank_is_not_a_submodule_of_the_layer():
    bank = StructureBank(1, 8)
    layer = HamLinear(128, 32, 8, bank=bank)
    assert "bank.A" not in dict(layer.named_parameters())
    assert layer.structure_bank is bank
    own = HamLinear(128, 32, 8)
    assert "bank.A" in dict(own.named_parameters())


# ----------------------------------------------------------------------------- batched weights
def _loss_and_grads(model, idx, bf16: bool, batched: bool):
    from h2q_kernels.hamiltonian import batched as batched_module

    model.zero_grad(set_to_none=True)
    batched_module.ENABLED = batched
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, loss = model(idx, idx)
        loss.backward()
    finally:
        batched_module.ENABLED = True
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.float().detach(), grads


@pytest.mark.parametrize(
    "preset, overrides, grow",
    [
        ("tiny", [], False),  # MicroStream, one shared bank
        ("tiny", ["model.shared_bank=false"], False),  # a bank per layer
        ("qrlm-cpu", ["model.d_model=128", "model.n_layers=2"], True),  # FFN rank grown
    ],
)
@pytest.mark.parametrize("bf16", [False, True])
def test_batched_step_weights_equal_the_per_layer_form(preset, overrides, grow, bf16) -> None:
    """One batched product for every W (and fused q/k/v): the same logits and gradients as
    each layer building its own W, in fp32 and in bf16 autocast."""
    from h2q_tui.config import resolve
    from h2q_tui.models import build_model

    config = resolve(preset, overrides).model
    torch.manual_seed(0)
    model = build_model(config)
    if grow:
        model.grow_ffn_rank()  # FFN layers now rank 9, attention rank 8: two groups
    idx = torch.randint(0, config.vocab_size, (2, 16))
    got = _loss_and_grads(model, idx, bf16, batched=True)
    want = _loss_and_grads(model, idx, bf16, batched=False)
    assert got[1].keys() == want[1].keys() and len(got[1]) > 4
    if not bf16:
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
        for name in want[1]:
            torch.testing.assert_close(got[1][name], want[1][name], atol=1e-5, rtol=1e-4, msg=name)
        return
    # bf16: the stack is built in fp32 and cast once, the per-layer form builds W under
    # autocast (in bf16); each against fp32, the batched form errs no more
    exact = _loss_and_grads(model, idx, False, batched=False)

    def errors(result) -> tuple[float, float]:
        """Relative error of the logits, and of all gradients as one vector."""
        flat = [
            torch.cat([r[1][n].float().flatten() for n in sorted(exact[1])])
            for r in (result, exact)
        ]
        logits = ((result[0] - exact[0]).norm() / exact[0].norm()).item()
        return logits, ((flat[0] - flat[1]).norm() / flat[1].norm()).item()

    batched_errors, per_layer_errors = errors(got), errors(want)
    for ours, theirs in zip(batched_errors, per_layer_errors, strict=True):
        assert ours <= 1.1 * theirs + 1e-3, (batched_errors, per_layer_errors)
    assert max(batched_errors) < 0.1, batched_errors  # bf16 rounding, nothing worse


def test_structured_model_equals_the_fast_one() -> None:
    """model.ham_implementation=structured (every HamLinear as two products, no batched W):
    the same logits and gradients as the default fast form."""
    from h2q_tui.config import resolve
    from h2q_tui.models import build_model

    models = []
    for implementation in ("fast", "structured"):
        config = resolve("tiny", [f"model.ham_implementation={implementation}"]).model
        torch.manual_seed(0)
        models.append(build_model(config))
    idx = torch.randint(0, config.vocab_size, (2, 16))
    fast, structured = (_loss_and_grads(m, idx, False, batched=True) for m in models)
    torch.testing.assert_close(structured[0], fast[0], atol=1e-5, rtol=1e-4)
    assert structured[1].keys() == fast[1].keys()
    for name in fast[1]:
        torch.testing.assert_close(structured[1][name], fast[1][name], atol=1e-5, rtol=1e-4)


def test_fused_weight_stacks_the_step_weights() -> None:
    from h2q_kernels.hamiltonian import fused_weight, step_weights

    bank = StructureBank(2, 2)
    layers = [HamLinear(32, 4, 2, bank=bank) for _ in range(4)]
    assert fused_weight(*layers[:3]) is None  # outside step_weights
    with step_weights(layers):
        qkv = fused_weight(*layers[:3])
        assert qkv.shape == (96, 32)
        torch.testing.assert_close(qkv[32:64], layers[1].materialised())
    assert all(layer.step_weight is None for layer in layers)


def test_batched_weights_train_a_bf16_step_on_one_thread() -> None:
    """microstream-cpu's stack (24 layers of F 64, S 1) built under bf16 autocast sent its
    backward to a oneDNN AMX matmul that died of SIGFPE on one thread; it is built in fp32."""
    from h2q_tui.config import resolve
    from h2q_tui.models import build_model

    config = resolve("microstream-cpu").model
    torch.manual_seed(0)
    model = build_model(config)
    idx = torch.randint(0, config.vocab_size, (2, 32))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, idx)
        loss.backward()
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(loss) and model.bank.A.grad is not None
