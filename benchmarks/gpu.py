"""Training speed and memory of every preset at the source shapes on a CUDA GPU.

Each preset trains ``--steps`` steps through the engine itself (``Trainer.train_step``: the
precision it chooses for the GPU — bf16 autocast, or fp16 + GradScaler where bf16 is
missing —, TF32 for fp32 matmuls on Ampere and later, batches through pinned memory,
gradient clipping, AdamW) on random token ids of the preset's vocabulary, at its own
batch × context. Printed per preset: tokens/s (median after ``--warmup`` steps), the peak
memory PyTorch allocated and reserved, its FLOPs per token (``FlopCounterMode``) and MFU
against this GPU's own measured matmul peak in that precision (a large square product, best
of 5), and what NVML (the System pane's reader) says of the GPU at the end. ``--compile``
measures every preset eager and through ``torch.compile`` (train.compile) side by side.
The source reported 7.5k–11k tokens/s and 0.2 GB for MicroStream on an RTX 4070 Ti.

    python benchmarks/gpu.py [--presets gpt,microstream,...] [--steps 30] [--compile]
    python benchmarks/gpu.py --device cpu --presets tiny --steps 2   # the code path, no GPU

Without CUDA (and without ``--device cpu``) it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from h2q_tui.config import resolve
from h2q_tui.data.sources import Corpus
from h2q_tui.system import hardware
from h2q_tui.system.monitor import NvmlReader
from h2q_tui.training.trainer import Trainer

PRESETS = "gpt,microstream,h2q-transformer,qrlm,hamiltonian-llm-124m"
GIB = 1024**3


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of a (size × size) @ (size × size) product in ``dtype`` on ``device``, best of 5."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(6):  # the first warms the kernel
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_corpus(vocab_size: int, tokens: int) -> Corpus:
    """Random ids of the vocabulary (speed does not depend on what the ids say)."""
    generator = torch.Generator().manual_seed(0)
    dtype = torch.uint8 if vocab_size <= 256 else torch.int32
    ids = torch.randint(0, vocab_size, (tokens,), generator=generator).to(dtype)
    return Corpus(ids, ids[: tokens // 10], "random ids", "random ids")


def measure(preset: str, device: torch.device, steps: int, warmup: int, compile_: bool) -> dict:
    overrides = ["log.sample_interval=0", "eval.heldout_interval=0", "train.warmup_steps=0"]
    overrides.append(f"train.compile={str(compile_).lower()}")
    config = resolve(preset, overrides)
    m, t = config.model, config.train
    corpus = random_corpus(m.vocab_size, max(1 << 20, 4 * t.batch_size * (m.context + 1)))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if compile_:
        torch._dynamo.reset()
    notices: list = []
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, corpus, Path(run_dir), notices.append, device=str(device))
        started = time.perf_counter()
        records = []
        for _ in range(warmup + steps):
            record = trainer.train_step()
            if record is None:
                sys.exit(f"{preset}: a training step was not finite; nothing to measure")
            records.append(record)
        synchronize(device)
        wall = time.perf_counter() - started
        rates = [r.tokens_per_s for r in records[warmup:]]
        counter = FlopCounterMode(display=False)
        with counter:  # one more step, eager, counted
            trainer.forward_model = trainer.model
            trainer.train_step()
        flops_per_token = counter.get_total_flops() / (t.batch_size * m.context)
        precision = trainer.precision
    peak = {"allocated": None, "reserved": None}
    if device.type == "cuda":
        peak = {
            "allocated": torch.cuda.max_memory_allocated(device),
            "reserved": torch.cuda.max_memory_reserved(device),
        }
    return {
        "preset": preset,
        "compiled": compile_,
        "precision": precision.name,
        "precision_reason": precision.reason,
        "batch_x_context": f"{t.batch_size} x {m.context}",
        "tokens_per_s": statistics.median(rates),
        "first_step_s": records[0].step_ms / 1000,
        "wall_s": wall,
        "flops_per_token": flops_per_token,
        "peak_allocated_bytes": peak["allocated"],
        "peak_reserved_bytes": peak["reserved"],
        "final_loss_nats": records[-1].train_loss_nats,
    }


def gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default=PRESETS, help="comma-separated")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also through torch.compile")
    parser.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (a smoke run)")
    parser.add_argument("--peak-size", type=int, default=8192, help="the peak product's size")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-gpu.json")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU here; nothing to measure", file=sys.stderr)
        sys.exit(2)
    device = hardware.resolve_device(args.device)
    print(f"machine: {hardware.machine_line()}")
    rows, peaks = [], {}
    for preset in args.presets.split(","):
        for compile_ in (False, True) if args.compile else (False,):
            row = measure(preset, device, args.steps, args.warmup, compile_)
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(row["precision"])
            if row["precision"] not in peaks:
                size = args.peak_size if device.type == "cuda" else 1024
                peaks[row["precision"]] = matmul_peak_flops(device, dtype or torch.float32, size)
            row["matmul_peak_tflops"] = peaks[row["precision"]] / 1e12
            row["mfu"] = row["tokens_per_s"] * row["flops_per_token"] / peaks[row["precision"]]
            rows.append(row)
    gpus = [dataclasses.asdict(reading) for reading in NvmlReader().read_gpus()]
    print(f"precision: {rows[0]['precision_reason']}; tokens/s median of {args.steps} steps")
    print(
        "| preset | batch × context | compiled | tokens/s | first step (s) | MFLOP/token | "
        "MFU | peak allocated | peak reserved |"
    )
    print("|---|---|:-:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['batch_x_context']} | {'yes' if r['compiled'] else 'no'} | "
            f"{r['tokens_per_s']:,.0f} | {r['first_step_s']:.1f} | "
            f"{r['flops_per_token'] / 1e6:.1f} | {100 * r['mfu']:.0f} % | "
            f"{gib(r['peak_allocated_bytes'])} | {gib(r['peak_reserved_bytes'])} |"
        )
    for precision, flops in peaks.items():
        print(f"matmul peak ({precision}, measured here): {flops / 1e12:.1f} TFLOP/s")
    for g in gpus:
        print(
            f"NVML: {g['name']}: {g['utilization_percent']} % busy, "
            f"{gib(g['memory_used_bytes'])} of {gib(g['memory_total_bytes'])}, "
            f"{g['power_watts']} W, {g['temperature_c']} °C"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "gpu",
        "machine": hardware.machine_info(),
        "machine_line": hardware.machine_line(),
        "device": str(device),
        "rows": rows,
        "matmul_peak_flops": peaks,
        "nvml": gpus,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
