"""HamLinear forms side by side: one MicroStream training step (fwd + bwd + AdamW) at 24 x 128.

Compares the readable einsum reference, the materialised-W fast path in fp32, and the fast
path under bf16 autocast, in one process on the same inputs; prints a table, writes JSON.
The table and the JSON name the machine (CPU model, torch capability, whether it has fast
bf16); on a CPU without AMX or AVX512-BF16 the bf16 row is labelled slow, and the line
under the table says which precision ``train.precision = "auto"`` picks here.

    python benchmarks/hamlinear.py [--preset microstream] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from h2q_tui.config import resolve
from h2q_tui.models import build_model
from h2q_tui.system import hardware

VARIANTS = [("reference", "fp32"), ("fast", "fp32"), ("fast", "bf16")]


def step_seconds(preset: str, implementation: str, precision: str, repeats: int) -> list[float]:
    config = resolve(preset)
    model_config = dataclasses.replace(config.model, ham_implementation=implementation, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, 256, (config.train.batch_size, model_config.context))
    times = []
    for i in range(repeats + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, loss = model(idx, idx)
        optimizer.zero_grad()
        (loss + 1e-3 * model.penalty()).backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - started)
    return times


def precision_label(precision: str, fast_bf16: bool) -> str:
    """The table's precision cell: bf16 autocast is flagged where this CPU has no fast bf16."""
    if precision != "bf16":
        return precision
    return "bf16 autocast" if fast_bf16 else "bf16 autocast (slow on this CPU: no fast bf16)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="microstream")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-hamlinear.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = resolve(args.preset)
    tokens = config.train.batch_size * config.model.context
    rows = []
    for implementation, precision in VARIANTS:
        times = step_seconds(args.preset, implementation, precision, args.repeats)
        median = statistics.median(times)
        rows.append(
            {
                "implementation": implementation,
                "precision": precision,
                "step_ms": 1000 * median,
                "tokens_per_s": tokens / median,
                "repeats": len(times),
            }
        )
    base = rows[0]["tokens_per_s"]
    fast_bf16, _ = hardware.cpu_fast_bf16()
    auto = hardware.choose_precision("auto", torch.device("cpu"))
    print(f"machine: {hardware.machine_line()}")
    print(
        f"{args.preset}: one training step, batch {config.train.batch_size} x context {config.model.context}, "
        f"{args.threads} threads"
    )
    print("| HamLinear | precision | ms/step (median) | tokens/s | vs reference |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        label = precision_label(r["precision"], fast_bf16)
        print(
            f"| {r['implementation']} | {label} | {r['step_ms']:.0f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / base:.2f}x |"
        )
    print(f'train.precision = "auto" on this machine: {auto.describe()}')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "preset": args.preset,
        "threads": args.threads,
        "machine": hardware.machine_info(),
        "auto_precision": {"name": auto.name, "reason": auto.reason},
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
