"""Generation speed per CPU preset: the KV cache against recomputing the context, side by side.

For each preset, one process, the same (untrained, seeded) model and the same prompt:
- "recompute, source style": the whole window every token and every HamLinear weight
  rebuilt on each call — how the source systems generated (and this repo's Thought
  Stream did before the cache);
- "recompute": ``Generation(use_cache=False)`` (whole window per token, weights frozen);
- "KV cache": ``Generation(use_cache=True)``.
Variants are interleaved over the repeats (this VM's speed drifts); medians are reported.
First-token latency is prompt encoding + prefill + the first choice, for a short and a
full-context prompt. Speed does not depend on the weights' values, so no checkpoint is needed.
Decoding runs in fp32 (no autocast) whatever the CPU; the table and the JSON name the machine.

    python benchmarks/generation.py [--presets ...] [--tokens 256] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from h2q_tui.config import resolve
from h2q_tui.generation.generate import Generation
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import Codec
from h2q_tui.models import build_model, count_parameters
from h2q_tui.system import hardware

PRESETS = ["gpt-cpu", "microstream-cpu", "h2q-transformer-cpu", "qrlm-cpu", "hamiltonian-llm"]
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside."


@torch.no_grad()
def source_style_rate(model, prompt_ids: list[int], tokens: int) -> float:
    """Recompute the last ``context`` tokens for every new token, weights rebuilt per call."""
    generator = torch.Generator().manual_seed(0)
    sequence = list(prompt_ids)
    started = time.perf_counter()
    for _ in range(tokens):
        logits, _ = model(torch.tensor([sequence[-model.config.context :]]))
        probs = torch.softmax(logits[0, -1] / 0.7, dim=-1)
        sequence.append(int(torch.multinomial(probs, 1, generator=generator)))
    return tokens / (time.perf_counter() - started)


def generation(model, prompt: str, tokens: int, use_cache: bool) -> Generation:
    run = Generation(
        model, Codec(), prompt, SamplingConfig(max_new_tokens=tokens, seed=0), use_cache=use_cache
    )
    for _ in run:
        pass
    return run


def measure(preset: str, tokens: int, repeats: int) -> dict:
    config = resolve(preset)
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    context = config.model.context
    prompt_ids = list(PROMPT.encode())
    long_prompt = (PROMPT * 20)[: context - 1]  # nearly fills the window
    rates: dict[str, list[float]] = {"source_style": [], "recompute": [], "kv_cache": []}
    first_short, first_long = [], []
    generation(model, PROMPT, 8, True)  # warm-up
    for _ in range(repeats):
        rates["source_style"].append(source_style_rate(model, prompt_ids, tokens))
        rates["recompute"].append(generation(model, PROMPT, tokens, False).stats.tokens_per_s)
        cached = generation(model, PROMPT, tokens, True)
        rates["kv_cache"].append(cached.stats.tokens_per_s)
        first_short.append(cached.stats.first_token_s)
        first_long.append(generation(model, long_prompt, 1, True).stats.first_token_s)
    return {
        "preset": preset,
        "family": config.model.family,
        "parameters": count_parameters(model),
        "context": context,
        "new_tokens": tokens,
        "prompt_tokens": len(prompt_ids),
        "long_prompt_tokens": len(long_prompt.encode()),
        **{f"{k}_tokens_per_s": statistics.median(v) for k, v in rates.items()},
        "first_token_ms": 1000 * statistics.median(first_short),
        "first_token_long_prompt_ms": 1000 * statistics.median(first_long),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 suits batch-1 decoding)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-generation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(preset, args.tokens, args.repeats) for preset in args.presets]
    print(f"machine: {hardware.machine_line()}")
    print(
        f"generation, {args.tokens} new tokens after a {rows[0]['prompt_tokens']}-byte prompt, "
        f"batch 1, fp32, {args.threads} thread(s), median of {args.repeats}"
    )
    print(
        "| preset | parameters | recompute, source style (tok/s) | recompute (tok/s) "
        "| KV cache (tok/s) | cache vs recompute | cache vs source style "
        "| first token (ms) | first token, full-context prompt (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['parameters']:,} | {r['source_style_tokens_per_s']:,.0f} | "
            f"{r['recompute_tokens_per_s']:,.0f} | {r['kv_cache_tokens_per_s']:,.0f} | "
            f"{r['kv_cache_tokens_per_s'] / r['recompute_tokens_per_s']:.1f}x | "
            f"{r['kv_cache_tokens_per_s'] / r['source_style_tokens_per_s']:.1f}x | "
            f"{r['first_token_ms']:.1f} | {r['first_token_long_prompt_ms']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "threads": args.threads,
        "precision": "fp32",
        "machine": hardware.machine_info(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
