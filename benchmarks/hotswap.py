"""Hot swap: a new checkpoint's weights copied into a running model in place, per CPU preset.

For each preset, two checkpoints with different random weights are written (``--out``,
default ``runs/bench-hotswap``); the first is loaded as the Generate pane and ``generate
--follow`` load it, then :meth:`RunFollower.take` swaps the second one in (``latest`` moved
back and forth) ``--repeats`` times. Reported per preset: the swap itself (copying the
tensors into the model's own), the checksum-verified poll that finds the new checkpoint
beforehand, and a fresh load of the same checkpoint for comparison. Target (issue 13):
**a hot swap < 10 ms for the CPU presets.**

    python benchmarks/hotswap.py [--repeats 5] [--json runs/bench-hotswap.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from h2q_tui import checkpoints
from h2q_tui.config import resolve
from h2q_tui.generation.follow import RunFollower
from h2q_tui.models import build_model, count_parameters
from h2q_tui.system import hardware

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("gpt-cpu", "microstream-cpu", "h2q-transformer-cpu", "qrlm-cpu", "hamiltonian-llm")
TARGET_S = 0.010


def write_run(preset: str, root: Path) -> Path:
    """A run dir with checkpoints at steps 1 and 2 (different random weights)."""
    config = resolve(preset)
    run = root / preset
    for step in (1, 2):
        if not (run / "checkpoints" / f"step_{step:08d}").is_dir():
            torch.manual_seed(step)
            model = build_model(config.model)
            checkpoints.save_checkpoint(run, model, config, step, f"bench-{preset}", {})
    return run


def point(run: Path, step: int) -> None:
    (run / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")


def measure(preset: str, root: Path, repeats: int) -> dict:
    run = write_run(preset, root)
    point(run, 1)
    follower = RunFollower(run, consumer="benchmark")
    first = follower.take(None, follower.poll())
    model = first.model
    swaps, polls = [], []
    for i in range(repeats):
        point(run, 2 if i % 2 == 0 else 1)
        started = time.perf_counter()
        info = follower.poll()
        polls.append(time.perf_counter() - started)
        taken = follower.take(model, info)
        assert taken.kind == "swap" and taken.model is model
        swaps.append(taken.seconds)
    fresh = []
    for _ in range(repeats):
        started = time.perf_counter()
        checkpoints.load_checkpoint(checkpoints.read_info(run), "fast")
        fresh.append(time.perf_counter() - started)
    return {
        "preset": preset,
        "params": count_parameters(model),
        "swap_s": statistics.median(swaps),
        "swap_max_s": max(swaps),
        "poll_s": statistics.median(polls),
        "fresh_load_s": statistics.median(fresh),
        "first_load_s": first.seconds,
        "met": statistics.median(swaps) < TARGET_S,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-hotswap")
    parser.add_argument("--json", type=Path, default=REPO / "runs" / "bench-hotswap.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the decoding setting: swaps happen on the generator's thread
    print(f"machine: {hardware.machine_line()}")
    print(f"median of {args.repeats}, ms; 1 torch thread\n")
    rows = [measure(preset, args.out, args.repeats) for preset in PRESETS]
    print(f"{'preset':<22}{'params':>9}{'swap':>9}{'(max)':>9}{'poll':>9}{'fresh load':>12}")
    for r in rows:
        print(
            f"{r['preset']:<22}{r['params'] / 1e6:>8.2f}M{1000 * r['swap_s']:>9.2f}"
            f"{1000 * r['swap_max_s']:>9.2f}{1000 * r['poll_s']:>9.2f}"
            f"{1000 * r['fresh_load_s']:>12.2f}"
        )
    met = all(r["met"] for r in rows)
    print(f"\ntarget: a hot swap < 10 ms for every CPU preset: {'met' if met else 'NOT met'}")
    document = {
        "benchmark": "hotswap",
        "machine": hardware.cpu_model(),
        "machine_line": hardware.machine_line(),
        "machine_info": hardware.machine_info(),
        "repeats": args.repeats,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
