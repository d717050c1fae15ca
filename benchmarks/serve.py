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
   last token): the API overhead is 1 − median API / median in-process; and once more
   writing one line-sized chunk per token to a loopback TCP connection that another process
   reads (the floor: one send per token, what any server that flushes each token pays),
   once more writing to a reader that sleeps 20 ms between drains instead of blocking in
   ``recv`` (the same sends, but none has a sleeping reader to wake: the floor less the
   wake-up), and one ``"stream": false`` request (the server's decoding rate without sends);
   and per stack one streaming request read by ``curl`` (where installed), whose final line
   gives the server's own rate while it streams to a light C client;
3. ``--clients`` concurrent streaming clients × ``--requests`` each: requests/s, total
   tokens/s, first-token p50/p99, errors;
4. the OpenAI-compatible layer: per stack, a streaming ``/v1/completions`` request (SSE,
   ``stream_options.include_usage``) read by httpx beside each native one, its tokens/s
   measured the same way; and the cost of structured output: a ``"stream": false`` request
   with ``format`` (a JSON schema) against the same without, the server's own rates.

Targets (issue 14): 8 clients × 25 requests with 0 errors, API overhead ≤ 10 % of single-stream
tokens/s. The machine line heads the output and the JSON (``--json``, default
``runs/bench-serve-<name>.json``) records it.

    python benchmarks/serve.py [CHECKPOINT] [--clients 8] [--requests 25] [--num-predict 64]
                               [--stacks direct,uvloop,asyncio]

``--stacks`` starts one server per ``h2q-tui serve --stack`` value and measures them side by
side (single streams interleaved).

Without CHECKPOINT a tiny-preset checkpoint with random weights is written to a temporary
folder (its speed is what matters here, not its text).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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


def start_server(checkpoint: Path, queue: int, stack: str) -> tuple[subprocess.Popen, str, str]:
    """``h2q-tui serve --stack STACK`` on a free port; (process, base URL, served name)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "h2q_tui", "serve", str(checkpoint), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--queue", str(queue), "--stack", stack],
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
    count = r.final.eval_count
    streamed = (count - 1) / (done - first) if first and count and done > first else None
    return {
        "first_token_s": r.first_token_s,
        "client_tokens_per_s": streamed,
        "server_tokens_per_s": r.tokens_per_s,
        "load_s": r.load_s,
        "eval_count": count,
        "wall_s": done - started,
    }


class InProcess:
    """The same generation in this process, on one torch thread (the server's setting)."""

    def __init__(self, checkpoint: Path, options: dict) -> None:
        from h2q_tui import checkpoints
        from h2q_tui.generation.generate import use_decoding_threads
        from h2q_tui.generation.text import Codec

        use_decoding_threads()
        loaded = checkpoints.load_checkpoint(checkpoint)
        self.model, self.codec = loaded.model, Codec(loaded.tokenizer)
        self.options = options
        self.rate()  # warm-up

    def rate(self, sink: socket.socket | None = None) -> float:
        """(new tokens − 1) over first token → last token; with ``sink``, each token also
        writes one line-sized chunk to it (the floor: what flushing per token costs here)."""
        from h2q_tui.generation.generate import Generation
        from h2q_tui.generation.sampling import SamplingConfig

        o = self.options
        sampling = SamplingConfig(max_new_tokens=o["num_predict"], seed=o["seed"])
        generation = Generation(self.model, self.codec, PROMPT, sampling=sampling)
        chunk = b"60\r\n" + b"x" * 96 + b"\r\n"  # the size of one streamed line
        first = last = 0.0
        for _ in generation:
            if sink is not None:
                os.write(sink.fileno(), chunk)
            last = time.perf_counter()
            first = first or last
        return (generation.stats.new_tokens - 1) / (last - first)


BLOCKING_READ = "while c.recv(1 << 20): pass"  # wakes on every token, as a streaming client
POLLING_READ = (  # drains every 20 ms: no send finds it asleep in recv, so none wakes it
    "import time\nc.setblocking(False)\nwhile True:\n    time.sleep(0.02)\n    try:\n"
    "        if not c.recv(1 << 22): break\n    except BlockingIOError: pass"
)


class Reader:
    """A loopback TCP connection read by another process (``loop``: BLOCKING_READ, as fast as
    the bytes come, as a streaming client reads; POLLING_READ, every 20 ms): ``sock`` is the
    sending end."""

    def __init__(self, loop: str = BLOCKING_READ) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        code = f"import socket\nc = socket.create_connection(('127.0.0.1', {port}))\n"
        self.process = subprocess.Popen([sys.executable, "-c", code + loop])
        self.sock, _ = listener.accept()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn's
        listener.close()

    def close(self) -> None:
        self.sock.close()
        self.process.wait(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


CURL = shutil.which("curl")


def curl_stream(url: str, name: str, options: dict) -> float | None:
    """One streaming request read by curl (a C client, light beside httpx): the server's own
    streamed rate, (eval_count − 1) / eval_duration of the final line; None without curl."""
    if CURL is None:
        return None
    body = json.dumps({"model": name, "prompt": PROMPT, "options": options})
    out = subprocess.run(
        [CURL, "-sN", f"{url}/api/generate", "-d", body], capture_output=True, timeout=120
    )
    lines = out.stdout.splitlines()
    final = json.loads(lines[-1]) if lines else {}
    if not final.get("eval_duration"):  # curl failed, or an error line: no rate to report
        return None
    return (final["eval_count"] - 1) / final["eval_duration"] * 1e9


def whole(url: str, name: str, options: dict, format: dict | None = None) -> float:
    """One ``"stream": false`` request: the server's decoding rate with no per-token sends,
    (eval_count − 1) / eval_duration (eval_duration runs from the first token to the end);
    with ``format``, constrained to that JSON schema."""
    import httpx

    body = {"model": name, "prompt": PROMPT, "stream": False, "options": options}
    if format is not None:
        body["format"] = format
    final = httpx.post(f"{url}/api/generate", json=body, timeout=120).json()
    return (final["eval_count"] - 1) / final["eval_duration"] * 1e9


# what the constrained requests ask for: an object whose one string runs to the token budget
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def v1_stream(url: str, name: str, options: dict) -> dict:
    """One streaming ``/v1/completions`` request (SSE, usage in the last chunk), read by
    httpx: (completion tokens − 1) over first text → last chunk, as one_request measures."""
    import httpx

    body = {
        "model": name,
        "prompt": PROMPT,
        "max_tokens": options["num_predict"],
        "seed": options["seed"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first = last = 0.0
    usage: dict = {}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any(choice.get("text") for choice in chunk.get("choices", [])):
                last = time.perf_counter()
                first = first or last
    count = usage.get("completion_tokens", 0)
    return {"client_tokens_per_s": (count - 1) / (last - first) if last > first else None}


def concurrent(url: str, name: str, options: dict, clients: int, requests: int) -> dict:
    """``clients`` threads × ``requests`` streaming requests each."""
    from h2q_tui.ollama.client import BridgeError, OllamaClient

    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with OllamaClient(url) as client:
            for _ in range(requests):
                try:
                    row = one_request(client, name, options)
                except BridgeError as exc:
                    with lock:
                        errors.append(str(exc))
                    continue
                with lock:
                    results.append(row)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    firsts = [r["first_token_s"] for r in results if r["first_token_s"] is not None]
    return {
        "clients": clients,
        "requests_per_client": requests,
        "requests_ok": len(results),
        "errors": len(errors),
        "error_examples": errors[:3],
        "requests_per_s": len(results) / elapsed,
        "total_tokens_per_s": sum(r["eval_count"] or 0 for r in results) / elapsed,
        "first_token_p50_ms": 1000 * percentile(firsts, 0.5) if firsts else None,
        "first_token_p99_ms": 1000 * percentile(firsts, 0.99) if firsts else None,
        "seconds": elapsed,
    }


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
    parser.add_argument(
        "--stacks",
        default="direct",
        help="serve --stack values, comma-separated, measured side by side "
        "(e.g. direct,uvloop,asyncio)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from h2q_tui.ollama.client import OllamaClient
    from h2q_tui.system import hardware

    stacks = [s for s in args.stacks.split(",") if s]
    temp = tempfile.TemporaryDirectory()
    checkpoint = args.checkpoint or tiny_checkpoint(Path(temp.name))
    options = {"num_predict": args.num_predict, "seed": 1}
    servers = {}
    try:
        for stack in stacks:
            servers[stack] = start_server(checkpoint, queue=args.clients * 2, stack=stack)
        clients = {stack: OllamaClient(url) for stack, (_, url, _) in servers.items()}
        for client in clients.values():
            client.probe()
        local_run, reader, poller = InProcess(checkpoint, options), Reader(), Reader(POLLING_READ)
        single: dict[str, list[dict]] = {stack: [] for stack in stacks}
        openai: dict[str, list[dict]] = {stack: [] for stack in stacks}
        curled: dict[str, list[float]] = {stack: [] for stack in stacks}
        local, floor, unwoken, unstreamed, constrained = [], [], [], [], []
        first_url, first_name = servers[stacks[0]][1], servers[stacks[0]][2]
        for _ in range(args.single):  # interleaved, so a busy machine slows all alike
            for stack, client in clients.items():
                single[stack].append(one_request(client, servers[stack][2], options))
                openai[stack].append(v1_stream(servers[stack][1], servers[stack][2], options))
                rate = curl_stream(servers[stack][1], servers[stack][2], options)
                if rate is not None:
                    curled[stack].append(rate)
            local.append(local_run.rate())
            floor.append(local_run.rate(reader.sock))
            unwoken.append(local_run.rate(poller.sock))
            unstreamed.append(whole(first_url, first_name, options))
            constrained.append(whole(first_url, first_name, options, SCHEMA))
        reader.close()
        poller.close()
        for client in clients.values():
            client.close()
        loaded = {
            stack: concurrent(url, name, options, args.clients, args.requests)
            for stack, (_, url, name) in servers.items()
        }
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(10)
        temp.cleanup()

    name = next(iter(servers.values()))[2]
    local_rate, floor_rate = statistics.median(local), statistics.median(floor)
    unwoken_rate = statistics.median(unwoken)
    unstreamed_rate = statistics.median(unstreamed[1:])
    constrained_rate = statistics.median(constrained)
    print(f"machine: {hardware.machine_line()}")
    print(
        f"serve {checkpoint if args.checkpoint else 'tiny (random weights)'} as {name}: "
        f"{args.num_predict} tokens per request; in process {local_rate:,.0f} tok/s "
        f"(median of {len(local)}, one torch thread)"
    )
    print(
        f"floor: the same, writing each token to a loopback TCP reader: {floor_rate:,.0f} "
        f"tok/s, {100 * (1 - floor_rate / local_rate):+.1f} % (what any per-token flush costs "
        "on this machine)"
    )
    print(
        f"the same sends to a reader that polls every 20 ms (no wake-ups): {unwoken_rate:,.0f} "
        f"tok/s, {100 * (1 - unwoken_rate / local_rate):+.1f} % (the floor less waking the "
        "reader's process)"
    )
    print(
        f"structured output (format: a JSON schema, stream false): {constrained_rate:,.0f} "
        f"tok/s against {unstreamed_rate:,.0f} without, "
        f"{100 * (1 - constrained_rate / unstreamed_rate):+.1f} %"
    )
    report = {
        "checkpoint": str(checkpoint if args.checkpoint else "tiny (random weights)"),
        "name": name,
        "num_predict": args.num_predict,
        "in_process_tokens_per_s": local_rate,
        "floor_tokens_per_s": floor_rate,
        "floor_overhead": 1 - floor_rate / local_rate,
        "unwoken_tokens_per_s": unwoken_rate,
        "unwoken_overhead": 1 - unwoken_rate / local_rate,
        "unstreamed_server_tokens_per_s": unstreamed_rate,
        "constrained_server_tokens_per_s": constrained_rate,
        "constraint_cost": 1 - constrained_rate / unstreamed_rate,
        "stacks": {},
    }
    for stack in stacks:
        hot = single[stack][1:]
        api_rate = statistics.median(r["client_tokens_per_s"] for r in hot)
        v1_rates = [r["client_tokens_per_s"] for r in openai[stack][1:] if r["client_tokens_per_s"]]
        v1_rate = statistics.median(v1_rates) if v1_rates else None
        floor_points = 100 * (1 - floor_rate / local_rate)
        row = {
            "cold_load_ms": 1000 * single[stack][0]["load_s"],
            "hot_load_ms": 1000 * statistics.median(r["load_s"] for r in hot),
            "first_token_ms": 1000 * statistics.median(r["first_token_s"] for r in hot),
            "api_tokens_per_s": api_rate,
            "server_tokens_per_s": statistics.median(r["server_tokens_per_s"] for r in hot),
            "api_overhead": 1 - api_rate / local_rate,
            "api_points_over_floor": 100 * (1 - api_rate / local_rate) - floor_points,
            "v1_tokens_per_s": v1_rate,
            "v1_overhead": None if v1_rate is None else 1 - v1_rate / local_rate,
            "v1_points_over_floor": None
            if v1_rate is None
            else 100 * (1 - v1_rate / local_rate) - floor_points,
            "curl_server_tokens_per_s": statistics.median(curled[stack]) if curled[stack] else None,
            "concurrent": loaded[stack],
        }
        report["stacks"][stack] = row
        c = row["concurrent"]
        print(
            f"--stack {stack}: cold load {row['cold_load_ms']:.1f} ms, hot start "
            f"{row['hot_load_ms']:.3f} ms, first token {row['first_token_ms']:.1f} ms, "
            f"{api_rate:,.0f} tok/s through the API (server says "
            f"{row['server_tokens_per_s']:,.0f}): overhead {100 * row['api_overhead']:+.1f} % "
            f"({row['api_points_over_floor']:+.1f} points over the floor)"
        )
        if v1_rate is not None:
            print(
                f"  /v1/completions (SSE): {v1_rate:,.0f} tok/s, overhead "
                f"{100 * row['v1_overhead']:+.1f} % ({row['v1_points_over_floor']:+.1f} points "
                "over the floor)"
            )
        if row["curl_server_tokens_per_s"]:
            curl_rate = row["curl_server_tokens_per_s"]
            print(
                f"  streaming to curl instead (a C client): the server's rate {curl_rate:,.0f} "
                f"tok/s, {100 * (1 - curl_rate / local_rate):+.1f} % against in process"
            )
        print(
            f"  {c['clients']} clients × {c['requests_per_client']} requests: "
            f"{c['requests_ok']} ok, {c['errors']} errors, {c['requests_per_s']:.2f} "
            f"requests/s, {c['total_tokens_per_s']:,.0f} tokens/s in all, first token p50 "
            f"{c['first_token_p50_ms']:.0f} ms / p99 {c['first_token_p99_ms']:.0f} ms"
        )
    out = args.json or REPO / "runs" / f"bench-serve-{name.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": hardware.machine_info(), **report}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
