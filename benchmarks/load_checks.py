"""What the load-time checks of a checkpoint cost: the CRC-32 pass, the NaN/Inf scan that
rides in it, and the one-token forward pass that generate, steer-eval and serve run.

    python benchmarks/load_checks.py [--presets tiny,gpt-cpu,hamiltonian-llm-124m]

One torch thread; randomly initialised models of each preset. Prints a table (median of
``--repeats``) and writes JSON naming the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from h2q_tui.checkpoints.find import tensor_finite
from h2q_tui.checkpoints.layout import tensor_crc
from h2q_tui.config import resolve
from h2q_tui.generation.decoder import check_output
from h2q_tui.models import build_model
from h2q_tui.system import hardware


def median_ms(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def measure(preset: str, repeats: int) -> dict:
    config = resolve(preset)
    model = build_model(config.model).eval()
    tensors = list(model.state_dict().values())
    check_output(model)  # the first forward pays one-time costs: not part of the figure
    return {
        "preset": preset,
        "weights_mb": sum(t.nbytes for t in tensors) / 1e6,
        "crc_ms": median_ms(lambda: [tensor_crc(t) for t in tensors], repeats),
        "nan_inf_scan_ms": median_ms(lambda: [tensor_finite(t) for t in tensors], repeats),
        "probe_forward_ms": median_ms(lambda: check_output(model), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,gpt-cpu,hamiltonian-llm-124m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-load-checks.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(p, args.repeats) for p in args.presets.split(",")]
    print(f"machine: {hardware.machine_line()}")
    print("| preset | weights MB | CRC-32 pass ms | NaN/Inf scan ms | one-token forward ms |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['weights_mb']:.1f} | {r['crc_ms']:.1f} | "
            f"{r['nan_inf_scan_ms']:.1f} | {r['probe_forward_ms']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": hardware.machine_info(), "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
