"""``h2q-tui serve`` under load, and what the API costs against in-process generation.

Starts ``h2q-tui serve CHECKPOINT --port 0`` as a separate process (so the clients and the
server do not share one interpreter), then, through the bridge client
(h2q_tui/ollama/client.py, httpx, streaming):

1. single stream: ``--single`` requests one after another; per request the first-token
   latency (request sent → first text, measured by the client), the streamed tokens/s
   measured by the client ((eval_count − 1) over first text → final object) and the server's
   own eval_count / eval_duration · 1e9, and load_duration (the first request loads the
   model: the cold start; the rest are hot starts);
2. the same generation in this process (``Generation`` on one torch thread, the server's
   decoding setting), interleaved with the API requests so that other load on the machine
   slows both alike, tokens/s measured the same way ((new tokens − 1) over first token →
   last token): the API overhead is 1 − median API / median in-process;
3. ``--clients`` concurrent streaming clients × ``--requests`` each: requests/s, total
   tokens/s, first-token p50/p99, errors.

Targets (issue 14): 8 clients × 25 requests with 0 errors, API overhead ≤ 10 % of single-stream
tokens/s. The machine line heads the output and the JSON (``--json``, default
``runs/bench-serve-<name>.json``) records it.

    python benchmarks/serve.py [CHECKPOINT] [--clients 8] [--requests 25] [--num-predict 64]

Without CHECKPOINT a tiny-preset checkpoint with random weights is written to a temporary
folder (its speed is what matters here, not its text).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time"


def tiny_checkpoint(root: Path) -> Path:
    import torch

    from h2q_tui.checkpoints import save_checkpoint
    from h2q_tui.config import resolve
    from h2q_tui.models import build_model

    config = resolve("tiny")
    torch.manual_seed(0)
    run = root / "tiny"
    save_checkpoint(run, build_model(config.model), config, 1, "bench-tiny", {})
    return run


def start_server(checkpoint: Path, queue: int) -> tuple[subprocess.Popen, str, str]:
    """``h2q-tui serve`` on a free port; (process, base URL, served name)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "h2q_tui",
            "serve",
            str(checkpoint),
            "--port",
            "0",
            "--queue",
            str(queue),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    header = process.stdout.readline()
    if " on http://" not in header:
        process.kill()
        raise SystemExit(f"serve did not start: {header}{process.stderr.read()}")
    url = header.split(" on ")[1].split(" ")[0]
    name = process.stdout.readline().split()[0]
    return process, url, name


def one_request(client, name: str, options: dict) -> dict:
    stream = client.generate(name, PROMPT, options)
    started = time.perf_counter()
    first = None
    for _ in stream:
        if first is None:
            first = time.perf_counter()
    done = time.perf_counter()
    r = stream.result
    streamed = (
        (r.eval_count - 1) / (done - first) if first and r.eval_count and done > first else None
    )
    return {
        "first_token_s": r.first_token_s,
        "client_tokens_per_s": streamed,
        "server_tokens_per_s": r.tokens_per_s,
        "load_s": r.load_s,
        "eval_count": r.eval_count,
        "wall_s": done - started,
    }


class InProcess:
    """The same generation in this process, on one torch thread (the server's setting)."""

    def __init__(self, checkpoint: Path, options: dict) -> None:
        from h2q_tui.generation.generate import load_for_generation, use_decoding_threads

        use_decoding_threads()
        _, self.model, self.codec = load_for_generation(str(checkpoint))
        self.options = options
        self.rate()  # warm-up

    def rate(self) -> float:
        """(new tokens − 1) over first token → last token."""
        from h2q_tui.generation.generate import Generation
        from h2q_tui.generation.sampling import SamplingConfig

        o = self.options
        sampling = SamplingConfig(max_new_tokens=o["num_predict"], seed=o["seed"])
        generation = Generation(self.model, self.codec, PROMPT, sampling=sampling)
        first = last = 0.0
        for _ in generation:
            last = time.perf_counter()
            first = first or last
        return (generation.stats.new_tokens - 1) / (last - first)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", nargs="?", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument(
        "--single", type=int, default=12, help="sequential requests (each beside one in-process)"
    )
    parser.add_argument("--num-predict", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from h2q_tui.ollama.client import BridgeError, OllamaClient
    from h2q_tui.system import hardware

    temp = tempfile.TemporaryDirectory()
    checkpoint = args.checkpoint or tiny_checkpoint(Path(temp.name))
    options = {"num_predict": args.num_predict, "seed": 1}
    process, url, name = start_server(checkpoint, queue=args.clients * 2)
    try:
        with OllamaClient(url) as client:
            client.probe()
            local_run = InProcess(checkpoint, options)
            single, local = [], []
            for _ in range(args.single):  # interleaved, so a busy machine slows both alike
                single.append(one_request(client, name, options))
                local.append(local_run.rate())

        results: list[dict] = []
        errors: list[str] = []
        lock = threading.Lock()

        def worker() -> None:
            with OllamaClient(url) as client:
                for _ in range(args.requests):
                    try:
                        row = one_request(client, name, options)
                    except BridgeError as exc:
                        with lock:
                            errors.append(str(exc))
                        continue
                    with lock:
                        results.append(row)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(10)
        temp.cleanup()

    hot = single[1:]
    api_rate = statistics.median(r["client_tokens_per_s"] for r in hot)
    server_rate = statistics.median(r["server_tokens_per_s"] for r in hot)
    local_rate = statistics.median(local)
    overhead = 1 - api_rate / local_rate
    firsts = [r["first_token_s"] for r in results if r["first_token_s"] is not None]
    tokens = sum(r["eval_count"] or 0 for r in results)
    summary = {
        "checkpoint": str(checkpoint if args.checkpoint else "tiny (random weights)"),
        "name": name,
        "num_predict": args.num_predict,
        "cold_load_ms": 1000 * single[0]["load_s"],
        "hot_load_ms": 1000 * statistics.median(r["load_s"] for r in hot),
        "first_token_ms": 1000 * statistics.median(r["first_token_s"] for r in hot),
        "api_tokens_per_s": api_rate,
        "server_tokens_per_s": server_rate,
        "in_process_tokens_per_s": local_rate,
        "api_overhead": overhead,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "requests_ok": len(results),
        "errors": len(errors),
        "error_examples": errors[:3],
        "requests_per_s": len(results) / elapsed,
        "total_tokens_per_s": tokens / elapsed,
        "concurrent_first_token_p50_ms": 1000 * percentile(firsts, 0.5) if firsts else None,
        "concurrent_first_token_p99_ms": 1000 * percentile(firsts, 0.99) if firsts else None,
        "seconds": elapsed,
    }
    print(f"machine: {hardware.machine_line()}")
    print(f"serve {summary['checkpoint']} as {name}: {args.num_predict} tokens per request")
    print(
        f"single stream: cold load {summary['cold_load_ms']:.1f} ms, hot start "
        f"{summary['hot_load_ms']:.3f} ms, first token {summary['first_token_ms']:.1f} ms, "
        f"{api_rate:,.0f} tok/s through the API (server says {server_rate:,.0f}) vs "
        f"{local_rate:,.0f} in process: overhead {100 * overhead:+.1f} % (target ≤ 10 %)"
    )
    print(
        f"{args.clients} clients × {args.requests} requests: {len(results)} ok, "
        f"{len(errors)} errors, {summary['requests_per_s']:.2f} requests/s, "
        f"{summary['total_tokens_per_s']:,.0f} tokens/s in all, first token p50 "
        f"{summary['concurrent_first_token_p50_ms']:.0f} ms / p99 "
        f"{summary['concurrent_first_token_p99_ms']:.0f} ms"
    )
    out = args.json or REPO / "runs" / f"bench-serve-{name.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": hardware.machine_info(), **summary}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
