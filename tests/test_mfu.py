"""benchmarks/mfu.py's accounting: the matmuls it records are the FLOPs PyTorch counts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "mfu.py"
spec = importlib.util.spec_from_file_location("bench_mfu", PATH)
mfu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mfu)


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


def test_bf16_training_attention_on_the_math_path_equals_the_flash_kernel() -> None:
    """The lever benchmarks/mfu.py --levers measured: same outputs and gradients."""
    from h2q_tui.models import common

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 32, 64, requires_grad=True) for _ in range(3))
    results = {}
    try:
        for backend in ("flash", "math"):
            common.CPU_BF16_TRAINING_ATTENTION = backend
            for t in (q, k, v):
                t.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = common.causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 4)
            out.float().square().sum().backward()
            results[backend] = (out.float(), *(t.grad.clone() for t in (q, k, v)))
    finally:
        common.CPU_BF16_TRAINING_ATTENTION = "math"
    for flash, math in zip(results["flash"], results["math"], strict=True):
        torch.testing.assert_close(math, flash, atol=3e-2, rtol=3e-2)  # bf16 rounding
