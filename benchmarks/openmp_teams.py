"""Why training on a worker thread was slower: OpenMP teams, not threads as such.

PyTorch's CPU build uses GNU OpenMP (libgomp), which keeps one team of worker threads per
thread that starts a parallel region. Once more OpenMP threads exist than cores, libgomp
stops spinning between parallel regions and puts its workers to sleep on a futex instead
(its "throttled" spin count), so every region pays a wake-up. A training thread alone is
fine; a training thread started after the main thread has run any parallel op is not.

Each mode trains ``--steps`` steps of the preset in a fresh process and reports tokens/s
(metrics.jsonl step records 2..N) and the process's voluntary context switches per step
(sleeps: the throttled workers show up here). Modes rotate from trial to trial. The machine
and the precision the runs chose head the table and are in the JSON.

    python benchmarks/openmp_teams.py --preset microstream-cpu --steps 150 --trials 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
from pathlib import Path

from dashboard_overhead import (
    in_fresh_process,
    prepare,
    rotated,
    run_precision,
    tokens_per_second,
    train_plain,
)

from h2q_tui.system import hardware

MODES = {
    "main": "main thread",
    "thread": "worker thread",
    "thread-after-main-omp": "worker thread, after one parallel op on the main thread",
}


def train(preset: str, steps: int, run_dir: Path, mode: str) -> dict[str, float]:
    import torch

    prepared = prepare(preset, steps, run_dir)
    if mode == "thread-after-main-omp":
        torch.ones(1 << 22).mul_(2.0)  # one parallel region: the main thread now has a team
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    train_plain(prepared, on_thread=mode != "main")
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
    return {
        "tokens_per_s": tokens_per_second(run_dir),
        "switches_per_step": switches / steps,
        "precision": run_precision(run_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="microstream-cpu")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-openmp-teams.json")
    parser.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(train(args.preset, args.steps, args.run_dir, args.one)))
        return

    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            for mode in rotated(list(MODES), trial):
                run_dir = Path(tmp) / mode
                out = in_fresh_process(__file__, mode, args.preset, args.steps, run_dir)
                results[mode].append(json.loads(out.splitlines()[-1]))
        print(
            f"trial {trial + 1}: "
            + ", ".join(f"{m} {r[-1]['tokens_per_s']:,.0f}" for m, r in results.items()),
            flush=True,
        )
    base = statistics.median(r["tokens_per_s"] for r in results["main"])
    precisions = sorted({r["precision"] for rows in results.values() for r in rows})
    print(f"\nmachine: {hardware.machine_line()}")
    print(
        f"{args.preset}, {args.steps} steps, {args.trials} trials, "
        f"precision {' / '.join(precisions)}"
    )
    print("| training runs on | tokens/s (median) | vs main | sleeps per step (median) |")
    print("|---|---:|---:|---:|")
    for mode, rows in results.items():
        rate = statistics.median(r["tokens_per_s"] for r in rows)
        sleeps = statistics.median(r["switches_per_step"] for r in rows)
        print(f"| {MODES[mode]} | {rate:,.0f} | {100 * (rate / base - 1):+.1f} % | {sleeps:,.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "preset": args.preset,
        "steps": args.steps,
        "machine": hardware.machine_info(),
        "precision": precisions,
        "trials": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
