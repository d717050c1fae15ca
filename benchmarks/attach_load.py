"""How long ``attach`` takes to load a long metrics.jsonl, and how long the dashboard stalls.

Writes a metrics.jsonl of ``--lines`` records shaped and formatted as the trainer writes
them (a step record every step, a held-out eval every 100), then measures, in this process:

* **fold**: the file read by ``JsonlTailer`` and folded into a ``RunHistory`` (no UI);
* **dashboard**: ``h2q-tui attach`` on it (the Textual app, headless driver), from start to
  the step card showing the last step, and the longest gap between two ticks of a 20 ms
  timer meanwhile (how long the UI could not answer a key).

A log of ``--reference-lines`` (1,000) is measured the same way: its stall is the
dashboard's own start, the floor for the long one. Prints a table and writes it as JSON
naming the machine.

    python benchmarks/attach_load.py --lines 300000 --out attach_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from h2q_tui.system import hardware
from h2q_tui.training.history import RunHistory
from h2q_tui.training.tail import JsonlTailer
from h2q_tui.training.writers import METRICS_FILE


def compact(record: dict) -> str:
    """A record as JsonlWriter writes it."""
    return json.dumps(record, separators=(",", ":"))


def write_log(path: Path, lines: int) -> int:
    """A metrics.jsonl of ``lines`` records; the last step number."""
    started = {
        "event": "run_started",
        "run_id": "bench",
        "n_params": 1_000_000,
        "device": "cpu",
        "start_step": 0,
        "config": {"model": {}, "train": {"max_steps": lines}, "eval": {}, "log": {}},
    }
    out, step = [compact(started)], 0
    while len(out) < lines:
        step += 1
        out.append(
            compact(
                {
                    "event": "step",
                    "step": step,
                    "tokens": step * 4096,
                    "time": step * 0.05,
                    "train_loss_nats": 2.0 + 1.0 / step,
                    "train_bpb": 2.9,
                    "aux_loss": 0.0,
                    "penalty": 0.0,
                    "grad_norm": 0.8,
                    "energy": 1.1,
                    "step_ms": 50.0,
                    "tokens_per_s": 81920.0,
                    "lr": 3e-4,
                    "epoch": 0,
                    "data_progress": 0.5,
                    "rss_bytes": 500_000_000,
                    "cuda_allocated_bytes": None,
                    "cuda_reserved_bytes": None,
                }
            )
        )
        if step % 100 == 0 and len(out) < lines:
            out.append(
                compact(
                    {
                        "event": "eval",
                        "step": step,
                        "tokens": step * 4096,
                        "time": step * 0.05,
                        "split": "heldout",
                        "val_loss_nats": 2.1,
                        "val_bpb": 3.0,
                    }
                )
            )
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return step


def fold(path: Path) -> tuple[float, RunHistory]:
    """Seconds to read and fold the whole file without a UI."""
    started = time.perf_counter()
    tailer, history = JsonlTailer(path), RunHistory()
    while True:
        records = tailer.read_new()
        for record in records:
            history.add(record)
        if not getattr(tailer, "behind", False):  # older tailers read everything at once
            break
    return time.perf_counter() - started, history


async def dashboard(run_dir: Path, last_step: int) -> tuple[float, float]:
    """(seconds until the step card shows the last step, longest UI stall in seconds)."""
    from h2q_tui.app import shell as app_module
    from h2q_tui.app.engine_link import AttachedRuns
    from h2q_tui.app.shell import H2QApp

    ticks: list[float] = []

    class Ticking(H2QApp):
        """The dashboard with a 20 ms timer started before its own mount work."""

        CSS_PATH = str(Path(app_module.__file__).with_name("app.tcss"))

        def on_mount(self) -> None:
            ticks.append(time.perf_counter())
            self.set_interval(0.02, lambda: ticks.append(time.perf_counter()))
            super().on_mount()

    app = Ticking(attached=AttachedRuns([run_dir]), monitor=False)
    started = time.perf_counter()
    async with app.run_test(size=(160, 48)) as pilot:
        history = app.runs.histories[run_dir.name]
        while (history.last_step or {}).get("step") != last_step:
            await pilot.pause(0.02)
            if time.perf_counter() - started > 600:
                raise SystemExit("the dashboard did not load the log within 600 s")
        loaded = time.perf_counter() - started
        await pilot.pause(0.2)
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    return loaded, max(gaps, default=loaded)


def measure(lines: int) -> dict:
    """The figures of one log of ``lines`` records."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench-run"
        run_dir.mkdir()
        path = run_dir / METRICS_FILE
        last = write_log(path, lines)
        size_mb = path.stat().st_size / 1e6
        fold_s, history = fold(path)
        loaded_s, stall_s = asyncio.run(dashboard(run_dir, last))
    return {
        "lines": lines,
        "file_mb": round(size_mb, 1),
        "fold_s": round(fold_s, 2),
        "curve_points": len(history.train),
        "dashboard_load_s": round(loaded_s, 2),
        "longest_ui_stall_s": round(stall_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument(
        "--reference-lines",
        type=int,
        default=1_000,
        help="a small log measured too: the stall of the dashboard's own start",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args()
    rows = [measure(args.lines), measure(args.reference_lines)]
    load = os.getloadavg()[0]
    print(f"machine: {hardware.machine_line()}; load average {load:.2f}")
    print(
        f"{'lines':>9} {'MB':>6} {'read+fold s':>11} {'points':>6} {'dashboard s':>11} {'stall s':>7}"
    )
    for row in rows:
        print(
            f"{row['lines']:>9,} {row['file_mb']:>6} {row['fold_s']:>11.2f} "
            f"{row['curve_points']:>6,} {row['dashboard_load_s']:>11.2f} "
            f"{row['longest_ui_stall_s']:>7.3f}"
        )
    if args.out:
        result = {
            "rows": rows,
            "load_average_1min": round(load, 2),
            "machine": hardware.machine_info(),
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
