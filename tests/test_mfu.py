"""benchmarks/mfu.py's accounting: the matmuls it records are the FLOPs PyTorch counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tests.benchmark_module import load

mfu = load("mfu")


def test_recorded_matmuls_add_up_to_the_counted_flops() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 16))
    x = torch.randn(2, 8, 32)
    counter, recorder = FlopCounterMode(display=False), mfu.MatmulRecorder()
    with counter, recorder:
        model(x).sum().backward()
        torch.bmm(torch.randn(3, 4, 5), torch.randn(3, 5, 6))
    recorded = sum(mfu.matmul_flops(s) * n for (_, s, _), n in recorder.seen.items())
    assert recorded == counter.get_total_flops()
    # forward 2·16·(32·48 + 48·16), backward twice that but the first layer's input grad
    linear = 2 * 16 * (32 * 48 + 48 * 16)
    assert recorded == linear * 3 - 2 * 16 * 32 * 48 + 2 * 3 * 4 * 5 * 6


def test_a_step_is_measured_against_its_own_matmuls() -> None:
    row = mfu.measure("tiny", "fp32", repeats=1, peak_repeats=2)
    assert row["flops_per_step"] > 0 and row["matmul_flops_per_step"] > 0
    assert row["peak_gflops"] > 0 and 0 < row["mfu"]
    assert row["tokens_per_s"] == row["tokens_per_step"] / row["step_s"]


def test_bf16_training_attention_paths_match_fp32_as_closely_as_the_flash_kernel() -> None:
    """The levers benchmarks/mfu.py --levers measured: each bf16 path's outputs and gradients
    against fp32 attention; "matmul" (the default) errs no more than the flash kernel did."""
    from h2q_tui.models import common

    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 64, 96, requires_grad=True) for _ in range(3))

    def run(backend: str, bf16: bool) -> list[torch.Tensor]:
        common.CPU_BF16_TRAINING_ATTENTION = backend
        for t in (q, k, v):
            t.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            inputs = (t.bfloat16() for t in (q, k, v)) if bf16 else (q, k, v)
            out = common.causal_attention(*inputs, 4)
        out.float().square().sum().backward()
        return [out.float().detach(), *(t.grad.clone() for t in (q, k, v))]

    try:
        reference = run("flash", bf16=False)  # fp32: PyTorch's own choice
        errors = {}
        for backend in ("flash", "math", "matmul"):
            got = run(backend, bf16=True)
            errors[backend] = max(
                ((a - b).norm() / b.norm()).item() for a, b in zip(got, reference, strict=True)
            )
    finally:
        common.CPU_BF16_TRAINING_ATTENTION = "matmul"
    assert max(errors.values()) < 2e-2, errors  # bf16 rounding, nothing worse
    assert errors["matmul"] <= 1.5 * errors["flash"], errors


def test_matmul_attention_is_sdpa_written_out() -> None:
    """fp32: the same numbers as PyTorch's SDPA, causal and with an additive bias (the
    gravity mask of hamiltonian-llm)."""
    from h2q_tui.models import common

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(common.matmul_attention(q, k, v), causal, atol=1e-5, rtol=1e-5)
    bias = torch.randn(2, 3, 16, 16) + torch.full((16, 16), float("-inf")).triu(1)
    biased = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(common.matmul_attention(q, k, v, bias), biased, atol=1e-5, rtol=1e-5)
