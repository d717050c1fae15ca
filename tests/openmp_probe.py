"""Run by tests/test_app.py in a fresh process: does a dashboard run leave an OpenMP team
behind on a thread that outlives it (the UI thread, Textual's pooled worker threads)? If it
does, libgomp throttles every later training thread's team (h2q_tui/system/threads.py).

Prints JSON: OS threads that are not Python threads, at start, at most while training, and
after the training thread has ended.

    python tests/openmp_probe.py CORPUS RUN_DIR [--main-omp]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

import torch

from h2q_tui.app import make_app
from h2q_tui.app.engine_link import LiveEngine
from h2q_tui.training.session import RunRequest, prepare_run


def native_only() -> int:
    """OS threads of this process that Python did not start (OpenMP workers, torch's own)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def settled_count(limit_s: float = 5.0, above: int = 0) -> int:
    """native_only() once exited threads' OpenMP workers have gone (they exit on their own)."""
    deadline = time.monotonic() + limit_s
    while native_only() > above and time.monotonic() < deadline:
        time.sleep(0.05)
    return native_only()


def parallel_op() -> None:
    torch.set_num_threads(2)
    torch.ones(1 << 22).mul_(2.0)


async def probe(corpus: str, run_dir: str, main_omp: bool) -> dict[str, int]:
    # The baseline: after a thread that ran a parallel op has ended (one native thread
    # outlives the first such thread, and no more than one however many follow).
    worker = threading.Thread(target=parallel_op)
    worker.start()
    worker.join()
    start = settled_count(limit_s=1.0)
    if main_omp:  # the control: one parallel op on the main (UI) thread
        parallel_op()
    request = RunRequest(
        preset="tiny",
        data=corpus,
        run_dir=run_dir,
        max_steps=6,
        overrides=["train.threads=2", "train.batch_size=32"],  # big enough to go parallel
    )
    app = make_app(LiveEngine(prepare_run(request)), autostart=True, refresh_s=0.05)
    during = start
    async with app.run_test(size=(120, 40)):
        while app.training_worker is None or app.run_active:
            during = max(during, native_only())
            await asyncio.sleep(0.01)
    return {"start": start, "during": during, "after": settled_count(above=start)}


if __name__ == "__main__":
    corpus, run_dir = sys.argv[1:3]
    print(json.dumps(asyncio.run(probe(corpus, run_dir, "--main-omp" in sys.argv))))
