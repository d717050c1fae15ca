"""Model FLOPs utilisation of a training step, against this CPU's own matmul peak at the
model's shapes.

For each preset and precision: one training step (forward, backward, AdamW) at the preset's
batch x context is timed (median of ``--repeats`` after a warm-up step). Its FLOPs are
counted by PyTorch's ``FlopCounterMode`` (matmuls and attention, forward and backward), and
every matrix product it runs (``mm``, ``addmm``, ``bmm``, ``baddbmm``: shapes and dtype as
the kernels see them, after autocast) is recorded; that counted step runs attention on
PyTorch's flash kernel whatever the timed steps use, so the FLOPs are the model's work. The *peak* is those same products
replayed alone, back to back, each at its best of ``--peak-repeats``: the FLOP/s this
machine reaches on exactly the model's matmuls, in the precision in use. Then

    MFU = (step FLOPs / step time) / peak

so 100 % is a step as fast as its matrix products alone; what is missing is everything
else (materialising HamLinear weights, LayerNorm, GELU, residuals, attention's softmax,
the optimizer, Python). The machine heads the table and is in the JSON.

    python benchmarks/mfu.py [--presets microstream,microstream-cpu,gpt-cpu] [--repeats 3]
    python benchmarks/mfu.py --lever attention  # bf16: attention on PyTorch's flash kernel,
                                                # its math path, the matmul path (default)
    python benchmarks/mfu.py --lever batched    # HamLinear W per layer vs one batched product
    python benchmarks/mfu.py --lever compile    # the step eager vs torch.compile (train.compile)
    python benchmarks/mfu.py --lever structured # HamLinear as dense W vs Σ_r H_r X B_rᵀ
    python benchmarks/mfu.py --lever checkpointing  # activation checkpointing on (source) / off
    python benchmarks/mfu.py --lever adamw      # AdamW as a loop of small ops per tensor / fused

The step's optimizer is the trainer's own (``build_optimizer``: weight decay on matrices only,
fused AdamW unless ``--lever adamw`` sets otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from h2q_tui.config import resolve
from h2q_tui.models import build_model, common
from h2q_tui.system import hardware
from h2q_tui.training import compiled
from h2q_tui.training import optimizer as training_optimizer

PRESETS = "microstream,microstream-cpu,gpt-cpu,h2q-transformer-cpu,qrlm-cpu,hamiltonian-llm"
aten = torch.ops.aten
MATMULS = {
    aten.mm.default: "mm",
    aten.addmm.default: "addmm",
    aten.bmm.default: "bmm",
    aten.baddbmm.default: "baddbmm",
}


class MatmulRecorder(TorchDispatchMode):
    """Counts each (kind, shapes, dtype) of matrix product dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = MATMULS.get(func)
        if kind is not None:
            operands = args[1:3] if kind in ("addmm", "baddbmm") else args[:2]
            shapes = tuple(tuple(t.shape) for t in operands)
            self.seen[(kind, shapes, str(operands[0].dtype).replace("torch.", ""))] += 1
        return func(*args, **(kwargs or {}))


def matmul_flops(shapes: tuple) -> int:
    """2·m·k·n (times the batch for bmm) for operands of ``shapes``."""
    (a, b) = shapes
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def replay_seconds(kind: str, shapes: tuple, dtype: str, repeats: int) -> float:
    """Best time of one product of these shapes alone (contiguous random operands)."""
    a = torch.randn(shapes[0], dtype=getattr(torch, dtype))
    b = torch.randn(shapes[1], dtype=getattr(torch, dtype))
    run = torch.bmm if len(shapes[0]) == 3 else torch.mm
    run(a, b)  # warm the kernel
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(a, b)
        best = min(best, time.perf_counter() - started)
    return best


COMPILE = False  # --lever compile: the timed steps call the model through torch.compile
# --lever structured / checkpointing: (field, value) pairs set on the preset's model config
MODEL_OVERRIDES: tuple[tuple[str, object], ...] = ()


class SavedForBackward:
    """Bytes of the distinct storages autograd keeps for the backward while it is active:
    the activations a step holds at its peak (parameters not counted)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)


def training_step(preset: str, precision: str):
    """(timed step, counted step, tokens per step, model, optimizer seconds) for ``preset``:
    the counted step calls the plain model (the FLOP counter and matmul recorder see eager
    ops), the timed one calls it compiled when COMPILE is set (as train.compile does,
    training/compiled.py); every step appends its ``optimizer.step()`` time to the list."""
    config = resolve(preset)
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(config.model, **dict(MODEL_OVERRIDES)))
    model.train()
    if COMPILE:
        torch._dynamo.reset()  # a fresh compile per model (and no cache-size fallback to eager)
    forward = compiled.compile_for_training(model) if COMPILE else model
    optimizer = training_optimizer.build_optimizer(model, config)
    idx = torch.randint(0, config.model.vocab_size, (config.train.batch_size, config.model.context))
    penalty_weight = config.train.axiom_lambda
    optimizer_seconds: list[float] = []

    def run(module) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, loss = module(idx, idx)
        optimizer.zero_grad(set_to_none=True)
        total = loss + penalty_weight * model.penalty() if penalty_weight else loss
        total.backward()
        started = time.perf_counter()
        optimizer.step()
        optimizer_seconds.append(time.perf_counter() - started)

    return (
        (lambda: run(forward)),
        (lambda: run(model)),
        config.train.batch_size * config.model.context,
        model,
        optimizer_seconds,
    )


def measure(preset: str, precision: str, repeats: int, peak_repeats: int) -> dict:
    step, counted_step, tokens, model, optimizer_seconds = training_step(preset, precision)
    started = time.perf_counter()
    step()  # warm-up: allocators, kernels (and compiling, under --lever compile)
    first_step_s = time.perf_counter() - started
    # counted (not timed) with attention on the flash kernel: FLOPs are the model's work
    # (the math path also multiplies the masked half of each T x T product), and the
    # recorded products, the peak's shapes, are then the model's own linear maps
    counter, recorder = FlopCounterMode(display=False), MatmulRecorder()
    chosen, common.CPU_BF16_TRAINING_ATTENTION = common.CPU_BF16_TRAINING_ATTENTION, "flash"
    try:
        with counter, recorder:
            counted_step()
    finally:
        common.CPU_BF16_TRAINING_ATTENTION = chosen
    with SavedForBackward(model) as saved:  # the eager step as timed (its attention path)
        counted_step()
    flops = counter.get_total_flops()
    times = []
    optimizer_seconds.clear()  # the timed steps' only
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    step_s = statistics.median(times)
    mm_flops = sum(matmul_flops(shapes) * n for (_, shapes, _), n in recorder.seen.items())
    mm_seconds = sum(
        replay_seconds(kind, shapes, dtype, peak_repeats) * n
        for (kind, shapes, dtype), n in recorder.seen.items()
    )
    peak = mm_flops / mm_seconds
    achieved = flops / step_s
    return {
        "preset": preset,
        "precision": precision,
        "tokens_per_step": tokens,
        "saved_for_backward_bytes": saved.bytes,
        "step_s": step_s,
        "first_step_s": first_step_s,
        "step_times_s": times,
        "optimizer_step_s": statistics.median(optimizer_seconds),
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops,
        "flops_per_token": flops / tokens,
        "matmul_flops_per_step": mm_flops,
        "matmul_shapes": len(recorder.seen),
        "matmul_alone_s": mm_seconds,
        "peak_gflops": peak / 1e9,
        "achieved_gflops": achieved / 1e9,
        "mfu": achieved / peak,
    }


def write_report(path: Path, benchmark: str, rows: list[dict]) -> None:
    """The rows as JSON at ``path``, with the machine and thread count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": benchmark,
        "machine": hardware.machine_info(),
        "machine_line": hardware.machine_line(),
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


HAM_PRESETS = "microstream,microstream-cpu,h2q-transformer-cpu,qrlm-cpu"  # with HamLinear


def _levers() -> dict[str, tuple[object, str, tuple, tuple[str, ...], str]]:
    """name → (module, attribute, values measured side by side, precisions, default presets)."""
    from h2q_kernels.hamiltonian import batched

    return {
        # bf16 attention: the flash kernel, PyTorch's math path, ours (the default)
        "attention": (
            common,
            "CPU_BF16_TRAINING_ATTENTION",
            ("flash", "math", "matmul"),
            ("bf16",),
            PRESETS,
        ),
        # every HamLinear W per layer (before) or in one batched product with fused q/k/v
        "batched": (batched, "ENABLED", (False, True), ("fp32", "bf16"), HAM_PRESETS),
        # the training step eager or through torch.compile (train.compile)
        "compile": (sys.modules[__name__], "COMPILE", (False, True), ("fp32", "bf16"), PRESETS),
        # HamLinear as the dense W (fast form) or as Σ_r H_r X B_rᵀ (never W)
        "structured": (
            sys.modules[__name__],
            "MODEL_OVERRIDES",
            ((("ham_implementation", "fast"),), (("ham_implementation", "structured"),)),
            ("fp32", "bf16"),
            HAM_PRESETS,
        ),
        # MicroStream's reversible branches kept (the presets) or recomputed in the backward
        # (the source); first the one whose FLOPs are the model's work (no recomputation)
        "checkpointing": (
            sys.modules[__name__],
            "MODEL_OVERRIDES",
            ((("checkpointing", False),), (("checkpointing", True),)),
            ("fp32", "bf16"),
            "microstream,microstream-cpu,h2q-transformer-cpu",
        ),
        # AdamW: PyTorch's default on a CPU (a loop of small ops per tensor) or its fused kernel
        "adamw": (training_optimizer, "FUSED_ADAMW", (False, True), ("fp32", "bf16"), PRESETS),
    }


LABELS = {
    ("compile", False): "eager",
    ("compile", True): "compiled",
    ("structured", (("ham_implementation", "fast"),)): "fast",
    ("structured", (("ham_implementation", "structured"),)): "structured",
    ("checkpointing", (("checkpointing", True),)): "checkpointed",
    ("checkpointing", (("checkpointing", False),)): "not checkpointed",
    ("adamw", False): "per-tensor loop",
    ("adamw", True): "fused",
}  # else str(value)


def levers(args) -> None:
    """One lever's settings side by side, alternating, per preset and precision."""
    module, attribute, values, precisions, presets = _levers()[args.lever]
    chosen = getattr(module, attribute)
    names = [LABELS.get((args.lever, v), str(v)) for v in values]
    print(f"machine: {hardware.machine_line()}")
    print(
        f"lever {args.lever} ({module.__name__}.{attribute}); {torch.get_num_threads()} threads; "
        f"tokens/s median over {args.trials} alternating trials (each the median of "
        f"{args.repeats} steps); the current setting is {chosen!r}"
    )
    print(
        f"| preset | precision | {' | '.join(names)} | {names[-1]} / {names[0]} | "
        f"MFU {' → '.join(names)} | first step (s) | tokens in 10 min, {names[-1]} / "
        f"{names[0]} | saved for backward (MB) | optimizer step (ms) |"
    )
    print("|---|---|" + "---:|" * (len(values) + 6))
    rows = []
    for preset in (args.presets or presets).split(","):
        for precision in precisions:
            trials: dict[str, list[dict]] = {n: [] for n in names}
            try:
                for _ in range(args.trials):
                    for value, name in zip(values, names, strict=True):
                        setattr(module, attribute, value)
                        trials[name].append(
                            measure(preset, precision, args.repeats, args.peak_repeats)
                        )
            finally:
                setattr(module, attribute, chosen)
            rate = {n: statistics.median(r["tokens_per_s"] for r in t) for n, t in trials.items()}
            # one yardstick for all: the first setting's FLOPs per token (counted with flash
            # attention, so the masked half of each T x T product is not model work) and its
            # matmul peak; so MFU moves exactly as tokens/s does
            work = statistics.median(r["flops_per_token"] for r in trials[names[0]])
            peak = statistics.median(r["peak_gflops"] for r in trials[names[0]]) * 1e9
            mfu = {n: rate[n] * work / peak for n in names}
            # the first step's extra time (compiling, for --lever compile) against a 10-minute run
            first = {n: statistics.median(r["first_step_s"] for r in t) for n, t in trials.items()}
            saved = {n: t[-1]["saved_for_backward_bytes"] / 2**20 for n, t in trials.items()}
            optimizer = {
                n: 1000 * statistics.median(r["optimizer_step_s"] for r in t)
                for n, t in trials.items()
            }
            extra = first[names[-1]] - first[names[0]]
            ten_minutes = max(0.0, 600 - extra) * rate[names[-1]] / (600 * rate[names[0]])
            rows.append(
                {"preset": preset, "precision": precision, "tokens_per_s": rate, "mfu": mfu,
                 "first_step_s": first, "ten_minute_tokens_ratio": ten_minutes,
                 "saved_for_backward_mib": saved, "optimizer_step_ms": optimizer,
                 "trials": trials}
            )  # fmt: skip
            print(
                f"| {preset} | {precision} | "
                + " | ".join(f"{rate[n]:,.0f}" for n in names)
                + f" | {rate[names[-1]] / rate[names[0]]:.2f}x | "
                + " → ".join(f"{100 * mfu[n]:.0f} %" for n in names)
                + " | "
                + " / ".join(f"{first[n]:.1f}" for n in names)
                + f" | {ten_minutes:.2f}x | "
                + " / ".join(f"{saved[n]:,.0f}" for n in names)
                + " | "
                + " / ".join(f"{optimizer[n]:.2f}" for n in names)
                + " |",
                flush=True,
            )
    write_report(args.out.with_name(f"{args.out.stem}-lever-{args.lever}.json"), "mfu lever", rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets",
        help=f"comma-separated (default {PRESETS}; for --lever batched and structured, the "
        f"presets with HamLinear: {HAM_PRESETS})",
    )
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: every core")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-mfu.json")
    parser.add_argument(
        "--lever",
        choices=["attention", "batched", "compile", "structured", "checkpointing", "adamw"],
        help="one lever's settings side by side, alternating, --trials times: attention "
        "(bf16: flash kernel, math path, matmul path) or batched (HamLinear weights per "
        "layer or in one batched product, fp32 and bf16) or compile (the step eager or through "
        "torch.compile, fp32 and bf16; the first step's time includes compiling) or structured "
        "(HamLinear as the dense W or as Σ_r H_r X B_rᵀ, fp32 and bf16) or checkpointing "
        "(MicroStream's branches recomputed in the backward, as the source did, or kept) or "
        "adamw (PyTorch's per-tensor AdamW loop or the fused kernel, fp32 and bf16)",
    )
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lever:
        levers(args)
        return
    fast_bf16, _ = hardware.cpu_fast_bf16()
    print(f"machine: {hardware.machine_line()}")
    print(
        f"{torch.get_num_threads()} threads; one training step per preset, median of {args.repeats}"
    )
    print(
        "| preset | precision | tokens/s | MFLOP/token | model GFLOP/s | "
        "matmul peak at its shapes GFLOP/s | MFU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for preset in (args.presets or PRESETS).split(","):
        for precision in args.precisions.split(","):
            row = measure(preset, precision, args.repeats, args.peak_repeats)
            rows.append(row)
            label = precision if precision == "fp32" else "bf16 autocast"
            if precision == "bf16" and not fast_bf16:
                label += " (no fast bf16 here)"
            print(
                f"| {preset} | {label} | {row['tokens_per_s']:,.0f} | "
                f"{row['flops_per_token'] / 1e6:.1f} | {row['achieved_gflops']:.0f} | "
                f"{row['peak_gflops']:.0f} | {100 * row['mfu']:.0f} % |",
                flush=True,
            )
    write_report(args.out, "mfu", rows)


if __name__ == "__main__":
    main()
