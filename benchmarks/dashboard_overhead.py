"""Training throughput with the dashboard open vs headless: same preset, interleaved trials.

Each trial trains ``--steps`` steps of the preset on the embedded default corpus three ways,
each in a fresh process, as a user would start them:

* ``--no-ui``: the real command, ``h2q-tui --no-ui --preset P --max-steps N --run-dir D``
  (training on the main thread, writing metrics.jsonl and progress lines);
* a plain worker thread with no UI (the cost of the thread apart from the cost of the UI);
* the dashboard: the Textual app with the engine in its worker thread (headless driver:
  full layout and rendering, system monitor on, no terminal, no key presses), on the ICU
  pane and, a fourth way, on the Metrics pane (a chart per scalar, redrawn as points arrive).

Tokens/s comes from each run's own metrics.jsonl step records, steps 2..N (start-up, the
final held-out eval and the checkpoint are excluded). The order of the three rotates from
trial to trial, so none always runs first. The machine and the precision the runs chose
(``train.precision = "auto"``, from their run_started records) head the table and are in
the JSON.

    python benchmarks/dashboard_overhead.py --preset microstream-cpu --steps 300 --trials 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from h2q_tui.system import hardware
from h2q_tui.training.writers import METRICS_FILE

MODES = {
    "--no-ui": "--no-ui (main thread)",
    "thread": "worker thread, no UI",
    "dashboard": "dashboard",
    "metrics": "dashboard, Metrics pane open",
}


def tokens_per_second(run_dir: Path) -> float:
    """Rate over the step records 2..N of a finished run."""
    steps = []
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "step":
            steps.append((record["tokens"], record["time"]))
    (tokens0, time0), (tokens1, time1) = steps[0], steps[-1]
    return (tokens1 - tokens0) / (time1 - time0)


def run_precision(run_dir: Path) -> str:
    """The precision a finished run trained in, e.g. "fp32 — this CPU has no fast bf16 (…)"."""
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "run_started":
            name, reason = record.get("precision", "?"), record.get("precision_reason", "")
            return f"{name} — {reason}" if reason else name
    return "?"


def prepare(preset: str, steps: int, run_dir: Path):
    from h2q_tui.training.session import RunRequest, prepare_run

    return prepare_run(RunRequest(preset=preset, run_dir=str(run_dir), max_steps=steps))


def train_plain(prepared, on_thread: bool) -> None:
    """The Trainer alone, writing metrics.jsonl as --no-ui does: here, or on a new thread."""
    from h2q_tui.training.writers import JsonlWriter

    writer = JsonlWriter(prepared.run_dir)

    def train() -> None:
        prepared.trainer(writer).run()
        writer.close()

    if not on_thread:
        return train()
    worker = threading.Thread(target=train)
    worker.start()
    worker.join()


async def train_in_dashboard(preset: str, steps: int, run_dir: Path, pane: str = "icu") -> None:
    from h2q_tui.app import make_app
    from h2q_tui.app.engine_link import LiveEngine

    app = make_app(LiveEngine(prepare(preset, steps, run_dir)), autostart=True, monitor=True)
    async with app.run_test(size=(160, 48)):
        app.action_pane(pane)
        while not app.runs.state.startswith("finished"):
            await asyncio.sleep(0.5)  # an idle user: no key presses


def in_fresh_process(script: str, mode: str, preset: str, steps: int, run_dir: Path) -> str:
    """Run ``script --one MODE`` (one run of a benchmark's mode) in a new process; its stdout."""
    command = [sys.executable, script, "--one", mode, "--preset", preset]
    command += ["--steps", str(steps), "--run-dir", str(run_dir)]
    return subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout


def rotated(modes: list[str], trial: int) -> list[str]:
    """The trial's order of the modes: rotated, so no mode always runs first."""
    shift = trial % len(modes)
    return modes[shift:] + modes[:shift]


def run_trial(mode: str, preset: str, steps: int, run_dir: Path) -> float:
    """Train in a fresh process and return its tokens/s."""
    if mode == "--no-ui":
        command = [sys.executable, "-m", "h2q_tui", "--no-ui"]
        command += ["--preset", preset, "--max-steps", str(steps), "--run-dir", str(run_dir)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    else:
        in_fresh_process(__file__, mode, preset, steps, run_dir)
    return tokens_per_second(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="microstream-cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-dashboard.json")
    parser.add_argument("--one", choices=["thread", "dashboard", "metrics"], help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "thread":
        return train_plain(prepare(args.preset, args.steps, args.run_dir), on_thread=True)
    if args.one in ("dashboard", "metrics"):
        pane = "metrics" if args.one == "metrics" else "icu"
        return asyncio.run(train_in_dashboard(args.preset, args.steps, args.run_dir, pane))

    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    precisions: set[str] = set()
    for trial in range(args.trials):
        order = rotated(list(MODES), trial)
        with tempfile.TemporaryDirectory() as tmp:
            for mode in order:
                rates[mode].append(run_trial(mode, args.preset, args.steps, Path(tmp) / mode))
                precisions.add(run_precision(Path(tmp) / mode))
        print(
            f"trial {trial + 1} ({' → '.join(order)}): "
            + ", ".join(f"{MODES[m]} {v[-1]:,.0f}" for m, v in rates.items()),
            flush=True,
        )
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    base = medians["--no-ui"]
    paired = [d / n - 1 for d, n in zip(rates["dashboard"], rates["--no-ui"], strict=True)]
    paired_metrics = [m / n - 1 for m, n in zip(rates["metrics"], rates["--no-ui"], strict=True)]
    print(f"\nmachine: {hardware.machine_line()}")
    print(
        f"{args.preset}, {args.steps} steps, {args.trials} interleaved trials, "
        f"precision {' / '.join(sorted(precisions))}"
    )
    print("| mode | tokens/s (median) | vs --no-ui |\n|---|---:|---:|")
    for mode, value in medians.items():
        print(f"| {MODES[mode]} | {value:,.0f} | {100 * (value / base - 1):+.1f} % |")
    print(
        f"dashboard vs --no-ui trial by trial: median {100 * statistics.median(paired):+.1f} %"
        f" ({', '.join(f'{100 * p:+.1f}' for p in paired)})"
    )
    print(
        "Metrics pane open vs --no-ui trial by trial: median "
        f"{100 * statistics.median(paired_metrics):+.1f} %"
        f" ({', '.join(f'{100 * p:+.1f}' for p in paired_metrics)})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "preset": args.preset,
        "steps": args.steps,
        "machine": hardware.machine_info(),
        "precision": sorted(precisions),
        "tokens_per_s": {MODES[m]: v for m, v in rates.items()},
        "medians": {MODES[m]: v for m, v in medians.items()},
        "dashboard_vs_no_ui_per_trial": paired,
        "metrics_pane_vs_no_ui_per_trial": paired_metrics,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
