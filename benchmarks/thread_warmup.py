"""Is training slower on a fresh thread, or on any non-main thread? One process, interleaved.

Each round trains ``--steps`` steps of the preset on the main thread (as ``--no-ui`` does),
then the same on one long-lived worker thread that is reused for every round. If only the
thread's first round is slower, the dashboard's gap (benchmarks/dashboard_overhead.py) is a
fresh-thread effect, not a cost of threads as such.

    python benchmarks/thread_warmup.py [--preset microstream-cpu] [--steps 150] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import queue
import tempfile
import threading
from pathlib import Path

from dashboard_overhead import plain_trial


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="microstream-cpu")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-thread-warmup.json")
    args = parser.parse_args()
    jobs: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()

    def worker() -> None:  # one thread for every round
        while (folder := jobs.get()) is not None:
            results.put(plain_trial(args.preset, args.steps, folder, in_thread=False))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    rows = []
    print("| round | main thread (tok/s) | long-lived thread (tok/s) | thread / main |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            main_rate = plain_trial(args.preset, args.steps, Path(tmp) / f"main{index}", False)
            jobs.put(Path(tmp) / f"thread{index}")
            thread_rate = results.get()
            rows.append({"main": main_rate, "thread": thread_rate})
            print(
                f"| {index + 1} | {main_rate:,.0f} | {thread_rate:,.0f} | "
                f"{thread_rate / main_rate:.3f} |",
                flush=True,
            )
    jobs.put(None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"preset": args.preset, "steps": args.steps, "rounds": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
