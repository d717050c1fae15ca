"""Training throughput with the dashboard open vs headless, same preset, same process, interleaved.

Each trial trains ``--steps`` steps of the preset on the embedded default corpus three ways:
on the main thread as ``--no-ui`` does (writing metrics.jsonl and progress lines); on a plain
worker thread with no UI (to separate the
cost of the thread from the cost of the UI); and inside the Textual app (headless driver: full
layout and rendering, no terminal, no key presses). Tokens/s comes from the runs' own step
records, steps 2..N (the final held-out eval and checkpoint are excluded).

The order of the three rotates from trial to trial, so none always runs first.

    python benchmarks/dashboard_overhead.py --preset microstream-cpu --steps 300 --trials 6
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import statistics
import tempfile
import threading
from pathlib import Path

from h2q_tui.app import make_app
from h2q_tui.app.engine_link import LiveEngine
from h2q_tui.run_setup import RunRequest, prepare_run
from h2q_tui.training.trainer import Trainer
from h2q_tui.training.writers import ConsolePrinter, JsonlWriter


def tokens_per_second(steps: list[tuple[int, float]]) -> float:
    """Rate over (tokens, time) points 2..N: the first step warms up allocators."""
    (tokens0, time0), (tokens1, time1) = steps[0], steps[-1]
    return (tokens1 - tokens0) / (time1 - time0)


def plain_trial(preset: str, steps: int, folder: Path, in_thread: bool) -> float:
    """The Trainer alone, on the main thread (as --no-ui) or on a plain worker thread."""
    name = "thread" if in_thread else "main"
    prepared = prepare_run(RunRequest(preset=preset, run_dir=str(folder / name), max_steps=steps))
    points: list[tuple[int, float]] = []
    writer = JsonlWriter(prepared.run_dir)  # what --no-ui does per event: the log and a line
    printer = ConsolePrinter(prepared.config.log.log_interval, steps, io.StringIO())

    def emit(event) -> None:
        writer(event)
        printer(event)
        if event.name == "step":
            points.append((event.tokens, event.time))

    def train() -> None:
        Trainer(prepared.config, prepared.corpus, prepared.run_dir, emit).run()
        writer.close()

    if in_thread:
        worker = threading.Thread(target=train)
        worker.start()
        worker.join()
    else:
        train()
    return tokens_per_second(points)


async def dashboard_trial(preset: str, steps: int, folder: Path) -> float:
    prepared = prepare_run(
        RunRequest(preset=preset, run_dir=str(folder / "dashboard"), max_steps=steps)
    )
    app = make_app(LiveEngine(prepared), autostart=True, monitor=True)
    async with app.run_test(size=(160, 48)):
        while not app.state.startswith("finished"):
            await asyncio.sleep(0.5)  # an idle user: no key presses
    train = app.histories[app.focused_run].train
    return tokens_per_second(list(zip(train.tokens, train.time, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="microstream-cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-dashboard.json")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {
        "--no-ui (main thread)": [],
        "worker thread, no UI": [],
        "dashboard": [],
    }
    runs = {
        "--no-ui (main thread)": lambda folder: plain_trial(args.preset, args.steps, folder, False),
        "worker thread, no UI": lambda folder: plain_trial(args.preset, args.steps, folder, True),
        "dashboard": lambda folder: asyncio.run(dashboard_trial(args.preset, args.steps, folder)),
    }
    labels = list(runs)
    for trial in range(args.trials):
        order = labels[trial % 3 :] + labels[: trial % 3]  # rotate: no mode always runs first
        with tempfile.TemporaryDirectory() as tmp:
            for label in order:
                rates[label].append(runs[label](Path(tmp)))
        print(
            f"trial {trial + 1} ({' → '.join(order)}): "
            + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
            flush=True,
        )
    medians = {label: statistics.median(values) for label, values in rates.items()}
    base = medians["--no-ui (main thread)"]
    print(
        f"\n{args.preset}, {args.steps} steps, {args.trials} interleaved trials, {platform.machine()}"
    )
    print("| mode | tokens/s (median) | vs --no-ui |\n|---|---:|---:|")
    for label, value in medians.items():
        print(f"| {label} | {value:,.0f} | {100 * (value / base - 1):+.1f} % |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"preset": args.preset, "steps": args.steps, "tokens_per_s": rates, "medians": medians}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
