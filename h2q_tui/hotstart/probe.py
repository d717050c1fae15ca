"""One fresh-process hot start: ``python -m h2q_tui.hotstart.probe CHECKPOINT ...``.

Started by ``h2q-tui hotstart`` for each repeat, as a user starts ``h2q-tui generate``. It
times, from its own start, ``import torch``, the h2q-tui imports and the phases of
:func:`h2q_tui.hotstart.phases.load_for_first_token`, and prints two JSON lines on stdout:
the phases as soon as the first token exists, then the tokens/s after it. Its start time is
reported on the parent's clock (``perf_counter``, system-wide monotonic on Linux, and
``time.time()``), so the parent can time the process start itself.
"""

import time

STARTED = time.perf_counter()  # before any other import: as early as the probe can see
STARTED_WALL = time.time()

import argparse  # noqa: E402 - timed from the lines above
import json  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m h2q_tui.hotstart.probe")
    parser.add_argument("checkpoint")
    parser.add_argument("--method", default="fast", choices=("fast", "naive"))
    parser.add_argument("--pickle", help="the naive path's torch.save'd state_dict")
    parser.add_argument("--prompt", required=True)  # measure always names it
    parser.add_argument("--rate-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    imports_at = time.perf_counter()
    # imported here, not at the top: each import below is timed, as the phase that a user's
    # h2q-tui generate pays (import_torch, then import_h2q)
    from h2q_tui.system.openmp import prefer_passive_waiting

    prefer_passive_waiting()  # as the h2q-tui command does, before torch loads
    import torch  # timed: the import_torch phase

    torch_at = time.perf_counter()
    torch.set_num_threads(args.threads)
    # timed: the import_h2q phase, from torch_at to the lap below
    from h2q_tui.checkpoints.timing import Clock
    from h2q_tui.errors import UserError
    from h2q_tui.hotstart import phases

    clock = Clock(STARTED)
    clock.lap("python", imports_at)
    clock.lap("import_torch", torch_at)
    clock.lap("import_h2q")

    def report(running: Clock) -> None:
        line = {
            "started_perf": STARTED,
            "started_wall": STARTED_WALL,
            "phases": running.phases,
            "overlapped": running.overlapped,
            "span_s": running.elapsed,
        }
        print(json.dumps(line), flush=True)

    try:
        _, _, _, times = phases.load_for_first_token(
            args.checkpoint,
            args.prompt,
            args.method,
            args.pickle,
            args.rate_tokens,
            clock,
            report,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"tokens_per_s": times.tokens_per_s, "rate_tokens": times.rate_tokens}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
