"""Train presets for the same wall-clock budget, then evaluate each on held-out files.

Prints one table (preset, parameters, steps, tokens seen, tokens/s, held-out bits/byte per
file) beside the compressor baselines and writes it as JSON. Every figure comes from the
runs' own metrics.jsonl and from ``h2q-tui eval`` on the named files. The machine (CPU
model, torch capability, fast bf16 or not) heads the table and is in the JSON, and each row
says the precision its run trained in (``train.precision = "auto"`` picks it per machine).

    python benchmarks/cpu_presets.py --presets gpt-cpu microstream-cpu --seconds 600
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from h2q_tui.system import hardware

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
# bits/byte of gzip -9 / bzip2 -9 on the same files (../shared/data/README.md, measured there)
COMPRESSORS = {
    "tinystories_valid_head.txt": (2.390, 1.652),
    "wikitext2_raw_test.txt": (2.756, 2.208),
    "tinyshakespeare.txt": (3.110, 2.356),
}


def train(
    preset: str,
    seconds: float,
    train_file: Path,
    heldout: Path,
    out: Path,
    overrides: list[str],
    reuse: bool,
) -> Path:
    run_dir = out / preset
    if reuse and (run_dir / "checkpoints").is_dir():
        return run_dir  # trained by an earlier invocation: evaluate only
    cmd = [
        sys.executable,
        "-m",
        "h2q_tui",
        "--no-ui",
        "--preset",
        preset,
        "--data",
        str(train_file),
        "--heldout",
        str(heldout),
        "--max-seconds",
        str(seconds),
        "--run-dir",
        str(run_dir),
    ]
    for item in overrides:
        cmd += ["--set", item]
    with open(out / f"{preset}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run_dir


def eval_bpb(run_dir: Path, file: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "h2q_tui", "eval", str(run_dir), "--data", str(file)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout.strip().splitlines()[-1].removeprefix("bpb="))


def summarise(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    started = next(r for r in records if r["event"] == "run_started")
    return {
        "n_params": started["n_params"],
        "steps": steps[-1]["step"],
        "tokens": steps[-1]["tokens"],
        "train_seconds": steps[-1]["time"],
        "tokens_per_s": steps[-1]["tokens"] / steps[-1]["time"],
        "threads": started["threads"],
        "precision": started.get("precision", "?"),  # runs older than precision auto lack it
        "precision_reason": started.get("precision_reason", ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["gpt-cpu", "microstream-cpu"])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--train", type=Path, default=DATA / "tinystories_train_first2MiB.txt")
    parser.add_argument("--heldout", type=Path, default=DATA / "tinystories_valid_head.txt")
    parser.add_argument(
        "--eval",
        type=Path,
        nargs="*",
        default=[DATA / "tinystories_valid_head.txt", DATA / "wikitext2_raw_test.txt"],
    )
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate runs already in --out instead of retraining"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="passed to every run"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "runs" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    args = parser.parse_args()
    for needed in [args.train, args.heldout, *args.eval]:
        if not needed.is_file():
            sys.exit(f"missing data file {needed} (see ../shared/data/README.md)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in args.presets:
        run_dir = train(
            preset, args.seconds, args.train, args.heldout, args.out, args.overrides, args.reuse
        )
        row = {"preset": preset, **summarise(run_dir)}
        row["bpb"] = {f.name: eval_bpb(run_dir, f) for f in args.eval}
        rows.append(row)
        print(f"done {preset}: {row}", file=sys.stderr, flush=True)
    print_table(rows, args.eval)
    report = {
        "machine": hardware.machine_info(),
        "seconds": args.seconds,
        "train": str(args.train),
        "heldout": str(args.heldout),
        "overrides": args.overrides,
        "rows": rows,
        "compressors_gzip_bzip2": COMPRESSORS,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out / 'results.json'}")


def print_table(rows: list[dict], files: list[Path]) -> None:
    heads = " | ".join(f"{f.stem} bpb" for f in files)
    print(f"\nmachine: {hardware.machine_line()}")
    print(f"| preset | parameters | precision | steps | tokens seen | tokens/s | {heads} |")
    print("|---|---:|---|---:|---:|---:|" + "---:|" * len(files))
    for r in rows:
        cells = " | ".join(f"{r['bpb'][f.name]:.3f}" for f in files)
        print(
            f"| {r['preset']} | {r['n_params']:,} | {r['precision']} | {r['steps']:,} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {cells} |"
        )
    for label, index in (("gzip -9", 0), ("bzip2 -9", 1)):
        cells = " | ".join(
            f"{COMPRESSORS[f.name][index]:.3f}" if f.name in COMPRESSORS else "n/a" for f in files
        )
        print(f"| {label} | | | | | | {cells} |")
    for reason in sorted({r["precision_reason"] for r in rows if r["precision_reason"]}):
        print(f"precision: {reason}")


if __name__ == "__main__":
    main()
