"""Training throughput with the dashboard open vs headless, same preset, same process, interleaved.

Each trial trains ``--steps`` steps of the preset on the embedded default corpus; the headless
trial runs the Trainer alone, the dashboard trial runs it inside the Textual app (headless
driver: full layout and rendering, no terminal). Tokens/s is total tokens / training seconds
from the run's own step records (the final held-out eval and checkpoint are excluded).

    python benchmarks/dashboard_overhead.py --preset microstream-cpu --steps 150 --trials 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
from pathlib import Path

from h2q_tui.app import make_app
from h2q_tui.app.engine_link import LiveEngine
from h2q_tui.run_setup import RunRequest, prepare_run
from h2q_tui.training.trainer import Trainer


def tokens_per_second(records: list[dict]) -> float:
    steps = [r for r in records if r.get("event") == "step"]
    first, last = steps[0], steps[-1]
    # skip the first step (allocator warm-up): rate over steps 2..N
    return (last["tokens"] - first["tokens"]) / (last["time"] - first["time"])


def headless_trial(preset: str, steps: int, folder: Path) -> float:
    prepared = prepare_run(
        RunRequest(preset=preset, run_dir=str(folder / "headless"), max_steps=steps)
    )
    records: list[dict] = []
    Trainer(
        prepared.config, prepared.corpus, prepared.run_dir, lambda e: records.append(e.to_record())
    ).run()
    return tokens_per_second(records)


async def dashboard_trial(preset: str, steps: int, folder: Path) -> float:
    prepared = prepare_run(
        RunRequest(preset=preset, run_dir=str(folder / "dashboard"), max_steps=steps)
    )
    app = make_app(LiveEngine(prepared), autostart=True, monitor=True)
    async with app.run_test(size=(160, 48)) as pilot:
        while not app.state.startswith("finished"):
            await pilot.pause(0.2)
    history = app.histories[app.focused_run]
    return (history.train.tokens[-1] - history.train.tokens[0]) / (
        history.train.time[-1] - history.train.time[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="microstream-cpu")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-dashboard.json")
    args = parser.parse_args()
    headless, dashboard = [], []
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            headless.append(headless_trial(args.preset, args.steps, Path(tmp)))
            dashboard.append(asyncio.run(dashboard_trial(args.preset, args.steps, Path(tmp))))
        print(
            f"trial {trial + 1}: headless {headless[-1]:,.0f} tok/s, dashboard {dashboard[-1]:,.0f} tok/s",
            flush=True,
        )
    h, d = statistics.median(headless), statistics.median(dashboard)
    cost = 100 * (1 - d / h)
    print(
        f"\n| mode | tokens/s (median of {args.trials}) |\n|---|---:|\n| --no-ui | {h:,.0f} |\n| dashboard | {d:,.0f} |"
    )
    print(
        f"dashboard cost: {cost:.1f} % of training throughput ({args.preset}, {args.steps} steps, {platform.machine()})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "preset": args.preset,
                "steps": args.steps,
                "headless_tokens_per_s": headless,
                "dashboard_tokens_per_s": dashboard,
                "cost_percent": cost,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
