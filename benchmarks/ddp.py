"""torchrun on one machine: 1 process x T threads against N processes x T/N threads, same global batch.

Trains the same preset for the same number of steps both ways, in one invocation, and prints
tokens/s (median over the steps after the first few), the wall time of the whole command
(process start and rendezvous included) and how far the two loss curves are apart. On a
2-core machine this cannot show a scale-out speed-up — both ways use the same two cores —;
what it shows is what DDP costs here (gradient all-reduce, two copies of the model and the
data) and that the curve does not change. The machine heads the table and is in the JSON.

    python benchmarks/ddp.py [--preset microstream-cpu] [--steps 60] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from h2q_tui.system import hardware

WARMUP_STEPS = 5  # the first steps warm allocators and kernels; not counted


def train(preset: str, steps: int, processes: int, threads: int, run_dir: Path, extra: list[str]):
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["--no-ui", "--preset", preset, "--max-steps", str(steps), "--run-dir", str(run_dir)]
    args += ["--set", "eval.heldout_interval=0", "--set", "log.sample_interval=0", *extra]
    if processes == 1:
        command = [sys.executable, "-m", "h2q_tui", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={processes}", "-m", "h2q_tui", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"benchmark run failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps_seen = [r for r in map(json.loads, lines) if r["event"] == "step"]
    return steps_seen, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="microstream-cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="in all")
    parser.add_argument("--precision", default="fp32", help="train.precision for both runs")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-ddp.json")
    args = parser.parse_args()
    root = Path("runs") / "bench-ddp"
    extra = ["--set", f"train.precision={args.precision}"]
    rows, curves = [], {}
    for processes in (1, args.processes):
        threads = max(1, args.threads // processes)
        steps, wall = train(
            args.preset, args.steps, processes, threads, root / f"p{processes}", extra
        )
        rates = [r["tokens_per_s"] for r in steps[WARMUP_STEPS:]]
        curves[processes] = [r["train_loss_nats"] for r in steps]
        rows.append(
            {
                "processes": processes,
                "threads_each": threads,
                "tokens_per_s": statistics.median(rates),
                "step_ms": statistics.median(r["step_ms"] for r in steps[WARMUP_STEPS:]),
                "wall_s": wall,
                "final_loss_nats": curves[processes][-1],
            }
        )
    gap = max(abs(a - b) for a, b in zip(curves[1], curves[args.processes], strict=True))
    print(f"machine: {hardware.machine_line()}")
    print(
        f"{args.preset}, {args.steps} steps, precision {args.precision}, same global batch; "
        f"tokens/s = median over steps {WARMUP_STEPS + 1}..{args.steps}"
    )
    print("| processes × threads | tokens/s | ms/step | whole command (s) | final CE (nats) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['processes']} × {r['threads_each']} | {r['tokens_per_s']:,.0f} | "
            f"{r['step_ms']:.0f} | {r['wall_s']:.1f} | {r['final_loss_nats']:.4f} |"
        )
    ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"{args.processes} processes / 1 process: {ratio:.2f}x tokens/s")
    print(f"largest step-loss difference between the two curves: {gap:.2e} nats")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "preset": args.preset,
        "steps": args.steps,
        "precision": args.precision,
        "machine": hardware.machine_info(),
        "rows": rows,
        "speed_ratio": ratio,
        "max_loss_difference_nats": gap,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
