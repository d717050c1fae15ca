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


def test_saved_for_backward_counts_activations_not_parameters() -> None:
    layer = torch.nn.Linear(64, 64, bias=False)
    x = torch.randn(10, 64, requires_grad=True)
    with mfu.SavedForBackward(layer) as saved:
        y = torch.tanh(layer(x))  # keeps x (the weight is a parameter) and tanh's output
    assert saved.bytes == x.numel() * 4 + y.numel() * 4


def test_activation_checkpointing_keeps_less_for_the_backward() -> None:
    """What --lever checkpointing's memory column shows: MicroStream's checkpointed branches
    keep only their inputs; the same step without it keeps every activation."""
    kept = {}
    for value in (True, False):
        mfu.MODEL_OVERRIDES = (("checkpointing", value),)
        try:
            kept[value] = mfu.measure("tiny", "fp32", repeats=1, peak_repeats=1)
        finally:
            mfu.MODEL_OVERRIDES = ()
    saved = {v: row["saved_for_backward_bytes"] for v, row in kept.items()}
    assert 0 < saved[True] < 0.7 * saved[False], saved
    assert kept[True]["flops_per_step"] > kept[False]["flops_per_step"]  # the recomputation


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


def test_bf16_autocast_casts_each_weight_once_a_step() -> None:
    """Why a bf16 weight copy beside an fp32 master (issue 15's lever) is not built: autocast
    already casts each weight once per step (its cast cache serves the other uses and the
    backward), the count such a copy would cost after every optimizer step."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    from h2q_tui.config import resolve
    from h2q_tui.models import build_model

    config = resolve("gpt-cpu", ["model.n_layers=2", "model.d_model=64", "model.n_heads=2"])
    model = build_model(config.model)
    names = {p.untyped_storage().data_ptr(): n for n, p in model.named_parameters()}
    casts: Counter = Counter()

    class CastCounter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
                name = names.get(args[0].untyped_storage().data_ptr())
                if name is not None:
                    casts[name] += 1
            return func(*args, **kwargs)

    idx = torch.randint(0, 256, (2, 32))
    with CastCounter():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, idx)
        loss.backward()
    linears = {  # by storage: a head tied to the embedding is named wte.weight
        names[m.weight.untyped_storage().data_ptr()]
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    }
    assert casts and max(casts.values()) == 1, casts  # once, whatever uses it
    assert linears <= set(casts), (linears, casts)  # every matmul weight (a tied head too)
