"""Crystallization on the 10-minute TinyStories checkpoints: the sweep's table, load times, targets.

For each checkpoint (default: gpt-cpu and microstream-cpu from ``runs/bench-cpu-presets/``,
else the newest ``runs/bench-*/`` that holds them — ``python benchmarks/cpu_presets.py --out
runs/bench-cpu-presets`` writes them), runs ``h2q-tui crystallize CHECKPOINT --method sweep``
(:mod:`h2q_tui.crystal.crystallize`) on the whole held-out file (default
``../shared/data/tinystories_valid_head.txt``), then:

- times loading each crystallized folder the way eval/generate do (``checkpoints.load_checkpoint``,
  the one loader: on the CPU its integer matrices stay packed) against loading the original:
  median of ``--load-repeats`` loads, warm page cache;
- decodes each as the commands run it (a crystallized folder on its integers): greedy batch-1
  tokens/s on one thread, median of ``--decode-repeats`` (interleaved; 0 skips), and the
  resident memory each adds in a fresh process (``benchmarks/quantized.py``'s measures);
- checks the issue's targets: at least 4× smaller at Δ ≤ 0.01 bits/byte and at least 7× at
  Δ ≤ 0.05 bits/byte (the best row under each bound).

Absent checkpoints or data are skipped with a message (exit 0). The machine line heads the
output and the JSON (``--json``, default ``runs/bench-crystallize.json``) records it.

With ``--calibrate BYTES`` the ``+cal`` methods (which a sweep then adds) round by the
importance measured on the last BYTES bytes of the data file; ``--details`` prints the
percentiles of Δp and KLD beside the llama.cpp columns.

    python benchmarks/crystallize.py [CHECKPOINT ...] [--data FILE] [--windows N] [--method M]
        [--calibrate BYTES] [--details]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

from h2q_tui import checkpoints
from h2q_tui.cli.progress import WindowProgressBar
from h2q_tui.crystal import crystallize
from h2q_tui.errors import UserError
from h2q_tui.system import hardware

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinystories_valid_head.txt"
PRESETS = ("gpt-cpu", "microstream-cpu")
TARGETS = ((0.01, 4.0), (0.05, 7.0))  # (Δ bits/byte at most, ratio at least)


def default_checkpoints() -> list[Path]:
    """runs/bench-cpu-presets/<preset>, else the newest runs/bench-*/<preset>, per preset."""
    found = []
    for preset in PRESETS:
        fixed = REPO / "runs" / "bench-cpu-presets" / preset
        if fixed.is_dir():
            found.append(fixed)
            continue
        newest = sorted((REPO / "runs").glob(f"bench-*/{preset}"), reverse=True)
        found.append(newest[0] if newest else fixed)
    return found


def load_seconds(path: str | Path, repeats: int) -> float:
    """Median seconds of checkpoints.load_checkpoint (what eval and generate do)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        checkpoints.load_checkpoint(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sibling(name: str):
    """benchmarks/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", Path(__file__).with_name(f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_and_memory(rows: list[dict], repeats: int) -> list[dict]:
    """Per folder, as the commands run it: greedy batch-1 tokens/s on one thread (median of
    ``repeats``, interleaved) and the resident memory it adds in a fresh process."""
    speed = sibling("quantized")
    programs = [speed.step_program_of(row["path"], False)[1] for row in rows]
    tokens = min(112, programs[0].context - len(speed.PROMPT))
    rates: list[list[float]] = [[] for _ in rows]
    for _ in range(repeats):
        for rate, program in zip(rates, programs, strict=True):
            rate.append(tokens / speed.decode(program, tokens))
    return [
        {
            "method": row["method"],
            "tokens_per_s": statistics.median(rate),
            "rss_added_bytes": speed.fresh(row["path"], False, 1)["rss_added"],
        }
        for row, rate in zip(rows, rates, strict=True)
    ]


def best_under(rows: list[dict], bound: float) -> dict | None:
    fits = [r for r in rows[1:] if r["delta_bits_per_byte"] <= bound]
    return max(fits, key=lambda r: r["ratio"]) if fits else None


def run_one(path: Path, args: argparse.Namespace) -> dict:
    request = crystallize.Request(
        checkpoint=str(path),
        method=args.method,
        data=str(args.data),
        out=str(args.out / path.name) if args.out else None,
        json=None,
        windows=args.windows,
        batch=args.batch,
        device=args.device,
        calibrate=args.calibrate,
        details=args.details,
    )
    document = crystallize.run(
        request,
        progress=lambda label, windows, batch: WindowProgressBar(windows, batch, label=label),
    )
    rows = document["rows"]
    original = load_seconds(rows[0]["path"], args.load_repeats)
    loads = [{"method": "original", "seconds": original, "added": 0.0}]
    for row in rows[1:]:
        seconds = load_seconds(row["path"], args.load_repeats)
        loads.append({"method": row["method"], "seconds": seconds, "added": seconds - original})
    print(
        f"\nload time (median of {args.load_repeats}, warm cache; as the commands load: on the CPU the integers stay packed)"
    )
    print(
        crystallize.format_rows(
            ["method", "load s", "against the original s"],
            [[x["method"], f"{x['seconds']:.3f}", f"{x['added']:+.3f}"] for x in loads],
        )
    )
    decoding = decode_and_memory(rows, args.decode_repeats) if args.decode_repeats else []
    if decoding:
        base = decoding[0]["tokens_per_s"]
        print(
            f"\ndecoding as the commands run it (greedy, batch 1, 1 thread, median of {args.decode_repeats}) and memory (fresh process, RSS added by the model)"
        )
        print(
            crystallize.format_rows(
                ["method", "tokens/s", "× original", "RSS+ MB"],
                [
                    [
                        x["method"],
                        f"{x['tokens_per_s']:.0f}",
                        f"{x['tokens_per_s'] / base:.2f}×",
                        f"{x['rss_added_bytes'] / 1e6:.1f}",
                    ]
                    for x in decoding
                ],  # fmt: skip
            )
        )
    targets = []
    for bound, ratio in TARGETS:
        best = best_under(rows, bound)
        met = best is not None and best["ratio"] >= ratio
        targets.append(
            {
                "delta_at_most": bound,
                "ratio_at_least": ratio,
                "best_method": best["method"] if best else None,
                "best_ratio": best["ratio"] if best else None,
                "met": met,
            }
        )
        shown = f"{best['method']} {best['ratio']:.2f}×" if best else "no row"
        print(
            f"target ≥ {ratio:g}× at Δ ≤ {bound} bits/byte: {shown} — {'met' if met else 'NOT met'}"
        )
    return {"checkpoint": str(path), "crystallize": document, "load": loads,
            "decoding": decoding, "targets": targets}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="*", type=Path, help="default: the bench runs")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--method", default="sweep")
    parser.add_argument("--windows", type=int, default=0, help="0 = the whole file")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--load-repeats", type=int, default=5)
    parser.add_argument(
        "--decode-repeats", type=int, default=3, help="decode tokens/s repeats (0: no decoding)"
    )
    parser.add_argument("--calibrate", type=int, default=0, metavar="BYTES", help="0 = none")
    parser.add_argument("--details", action="store_true", help="Δp and KLD percentiles too")
    parser.add_argument(
        "--out",
        type=Path,
        help="crystallized folders under OUT/<checkpoint name>/ (default: each run's crystal/)",
    )
    parser.add_argument("--json", type=Path, default=REPO / "runs" / "bench-crystallize.json")
    args = parser.parse_args()
    print(hardware.machine_line())
    if not args.data.is_file():
        print(f"skipped: data file {args.data} is absent (see ../shared/data/README.md)")
        return 0
    paths = args.checkpoints or default_checkpoints()
    results, skipped = [], []
    for path in paths:
        if not path.exists():
            message = f"skipped {path}: absent"
            if not args.checkpoints:
                message += " (python benchmarks/cpu_presets.py --out runs/bench-cpu-presets)"
            print(message)
            skipped.append(str(path))
            continue
        print(f"\n== {path}")
        try:
            results.append(run_one(path, args))
        except UserError as exc:
            print(f"skipped {path}: {exc}")
            skipped.append(str(path))
    if not results:
        print("nothing measured")
        return 0
    report = {
        "machine": hardware.machine_info(),
        "data": str(args.data),
        "windows": args.windows,
        "method": args.method,
        "calibrate": args.calibrate,
        "results": results,
        "skipped": skipped,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
