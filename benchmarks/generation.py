"""Generation speed per CPU preset: the KV cache against recomputing the context, side by side.

For each preset, one process, the same (untrained, seeded) model and the same prompt:
- "recompute, source style": the whole window every token and every HamLinear weight
  rebuilt on each call — how the source systems generated (and this repo's Thought
  Stream did before the cache);
- "recompute": ``Generation(use_cache=False)`` (whole window per token, weights frozen);
- "KV cache, today's form": ``Generation(use_cache=True)`` under ``reference_decoding()`` —
  the model forward with a DecodeState (``torch.cat`` per token) and reference sampling, the
  cached form before issue 15 item 4;
- "KV cache": ``Generation(use_cache=True)`` — the decoder's step program (preallocated
  caches, fused q/k/v, direct torch calls; h2q_tui/generation/steps.py).
Variants are interleaved over the repeats (this VM's speed drifts); medians are reported,
and the ratio of the two cached forms is the median of the per-repeat ratios.
"Its matrix products alone" replays one cached step's matrix products on the model's own
weights, back to back: the ceiling at batch 1 on this machine (each weight is read from
memory once per token), beside which the rest of a token's time is the overhead to remove.
First-token latency is prompt encoding + prefill + the first choice, for a short and a
full-context prompt. Speed does not depend on the weights' values, so no checkpoint is needed.
Decoding runs in fp32 (no autocast) whatever the CPU; the table and the JSON name the machine.

    python benchmarks/generation.py [--presets ...] [--tokens 256] [--repeats 5] [--threads 1]
        [--no-recompute] [--levers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from h2q_kernels.hamiltonian import frozen_weights
from torch.utils._python_dispatch import TorchDispatchMode

from h2q_tui.config import resolve
from h2q_tui.generation import decoder, sampling, steps, steps_transformer
from h2q_tui.generation.decoder import reference_decoding
from h2q_tui.generation.generate import Generation
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import Codec
from h2q_tui.models import build_model, count_parameters
from h2q_tui.system import hardware

PRESETS = ["gpt-cpu", "microstream-cpu", "h2q-transformer-cpu", "qrlm-cpu", "hamiltonian-llm"]
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside."


aten = torch.ops.aten
PRODUCTS = {aten.linear.default, aten.mm.default, aten.addmm.default, aten.bmm.default,
            aten.baddbmm.default, aten.mv.default, aten.addmv.default}  # fmt: skip


class ProductRecorder(TorchDispatchMode):
    """Keeps every matrix product dispatched while active, with its very operands."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in PRODUCTS:
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def products_alone_rate(model, repeats: int = 200) -> float:
    """tokens/s if a cached decoding step were nothing but its matrix products: one step's
    products after the prompt, on the model's own weight tensors (so the same memory traffic:
    at batch 1 each weight is read once per token), replayed back to back. The ceiling of
    this machine for the model in fp32 on this thread count with torch's products (recorded
    from the torch step: the C step of the pre-LN families makes no torch calls); the rest of
    a token's time is everything else (small ops, Python, sampling)."""
    prompt, recorder = list(PROMPT.encode()), ProductRecorder()

    def replay(times: int) -> None:
        for _ in range(times):
            for func, args, kwargs in recorder.calls:
                func(*args, **kwargs)

    fused, steps_transformer.FUSED = steps_transformer.FUSED, False  # the torch step's products
    try:
        with torch.no_grad(), frozen_weights(model):
            step = decoder.Decoder(model)
            step(prompt)
            with recorder:
                step([*prompt, 32])
    finally:
        steps_transformer.FUSED = fused
    with torch.no_grad(), frozen_weights(model):
        with torch.inference_mode():  # the operands are the step program's inference tensors
            replay(10)  # warm-up
            started = time.perf_counter()
            replay(repeats)
            return repeats / (time.perf_counter() - started)


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


def generation(
    model, prompt: str, tokens: int, use_cache: bool, reference: bool = False
) -> Generation:
    """One sampled generation (the default SamplingConfig: T 0.7, top-k 50, penalty 1.2)."""
    run = Generation(
        model, Codec(), prompt, SamplingConfig(max_new_tokens=tokens, seed=0), use_cache=use_cache
    )
    if reference:
        with reference_decoding():
            list(run)
    else:
        list(run)
    return run


LEVERS = {  # name: (step program, fast sampling, inference_mode, the programs' GELU, C step)
    "today": (False, False, False, steps.exact_gelu, False),
    "fast sampling": (False, True, False, steps.exact_gelu, False),
    "step program": (True, False, False, steps.exact_gelu, False),
    "both, F.gelu": (True, True, False, F.gelu, False),
    "both": (True, True, False, steps.exact_gelu, False),
    "both + inference_mode": (True, True, True, steps.exact_gelu, False),
    "both + one C call a token (the default)": (True, True, False, steps.exact_gelu, True),
}


def lever_rate(model, tokens: int, levers: tuple) -> float:
    """tokens/s of one cached generation with the levers set (module flags, restored after).
    The C step (steps_transformer.FUSED) applies to the pre-LN families (GPT, QRLM)."""
    program, fast_sampling, inference, gelu, fused = levers
    flags = decoder.FAST_DECODING, sampling.FAST_SAMPLING, steps.GELU, steps_transformer.FUSED
    decoder.FAST_DECODING, sampling.FAST_SAMPLING, steps.GELU = program, fast_sampling, gelu
    steps_transformer.FUSED = fused
    try:
        if inference:
            with torch.inference_mode():
                return generation(model, PROMPT, tokens, True).stats.tokens_per_s
        return generation(model, PROMPT, tokens, True).stats.tokens_per_s
    finally:
        decoder.FAST_DECODING, sampling.FAST_SAMPLING, steps.GELU = flags[:3]
        steps_transformer.FUSED = flags[3]


def measure_levers(preset: str, tokens: int, repeats: int) -> dict:
    """Each lever of the cached decoder alone and together, interleaved, medians."""
    torch.manual_seed(0)
    model = build_model(resolve(preset).model).eval()
    rates: dict[str, list[float]] = {name: [] for name in LEVERS}
    for levers in LEVERS.values():  # warm-up
        lever_rate(model, 8, levers)
    for _ in range(repeats):
        for name, levers in LEVERS.items():
            rates[name].append(lever_rate(model, tokens, levers))
    return {"preset": preset, **{k: statistics.median(v) for k, v in rates.items()}, "runs": rates}


def measure(preset: str, tokens: int, repeats: int, recompute: bool) -> dict:
    config = resolve(preset)
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    context = config.model.context
    prompt_ids = list(PROMPT.encode())
    long_prompt = (PROMPT * 20)[: context - 1]  # nearly fills the window
    names = ["kv_cache_today", "kv_cache"]
    if recompute:
        names = ["source_style", "recompute", *names]
    rates: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, list[float]] = {"today": [], "new": [], "today_long": [], "new_long": []}
    alone: list[float] = []
    same_tokens = True
    today = generation(model, PROMPT, 8, True, reference=True)  # warm-up, both forms
    same_tokens &= today.tokens == generation(model, PROMPT, 8, True).tokens
    for _ in range(repeats):
        if recompute:
            rates["source_style"].append(source_style_rate(model, prompt_ids, tokens))
            rates["recompute"].append(generation(model, PROMPT, tokens, False).stats.tokens_per_s)
        today = generation(model, PROMPT, tokens, True, reference=True)
        new = generation(model, PROMPT, tokens, True)
        same_tokens &= today.tokens == new.tokens
        rates["kv_cache_today"].append(today.stats.tokens_per_s)
        rates["kv_cache"].append(new.stats.tokens_per_s)
        first["today"].append(today.stats.first_token_s)
        first["new"].append(new.stats.first_token_s)
        long_today = generation(model, long_prompt, 1, True, reference=True).stats.first_token_s
        first["today_long"].append(long_today)
        first["new_long"].append(generation(model, long_prompt, 1, True).stats.first_token_s)
        alone.append(products_alone_rate(model))
    ratios = [n / t for n, t in zip(rates["kv_cache"], rates["kv_cache_today"], strict=True)]
    return {
        "preset": preset,
        "family": config.model.family,
        "parameters": count_parameters(model),
        "context": context,
        "new_tokens": tokens,
        "prompt_tokens": len(prompt_ids),
        "long_prompt_tokens": len(long_prompt.encode()),
        **{f"{k}_tokens_per_s": statistics.median(v) for k, v in rates.items()},
        "kv_cache_speedup": statistics.median(ratios),
        "matrix_products_alone_tokens_per_s": statistics.median(alone),
        "same_tokens": same_tokens,
        **{f"first_token_{k}_ms": 1000 * statistics.median(v) for k, v in first.items()},
        "repeats": repeats,
        "runs": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 suits batch-1 decoding)"
    )
    parser.add_argument(
        "--no-recompute",
        dest="recompute",
        action="store_false",
        help="only the two cached forms (skip the slow recomputing variants)",
    )
    parser.add_argument(
        "--levers", action="store_true", help="also each lever alone (a second table)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-generation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    levers = [measure_levers(p, args.tokens, args.repeats) for p in args.presets if args.levers]
    rows = [measure(p, args.tokens, args.repeats, args.recompute) for p in args.presets]
    print(f"machine: {hardware.machine_line()}")
    print(
        f"batch-1 decoding, {args.tokens} new tokens after a {rows[0]['prompt_tokens']}-byte "
        f"prompt, fp32, {args.threads} thread(s), interleaved, median of {args.repeats}"
    )
    print(
        "| preset | parameters | KV cache, today's form (tok/s) | KV cache, step program "
        "(tok/s) | speed-up | same tokens | first token today / new (ms) "
        "| full-context prompt today / new (ms) | its matrix products alone (tok/s) |"
    )
    print("|---|---:|---:|---:|---:|:-:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['parameters']:,} | {r['kv_cache_today_tokens_per_s']:,.0f} | "
            f"{r['kv_cache_tokens_per_s']:,.0f} | {r['kv_cache_speedup']:.2f}x | "
            f"{'yes' if r['same_tokens'] else 'NO'} | "
            f"{r['first_token_today_ms']:.1f} / {r['first_token_new_ms']:.1f} | "
            f"{r['first_token_today_long_ms']:.1f} / {r['first_token_new_long_ms']:.1f} | "
            f"{r['matrix_products_alone_tokens_per_s']:,.0f} |"
        )
    if args.recompute:
        print()
        print(
            "| preset | recompute, source style (tok/s) | recompute (tok/s) | KV cache (tok/s) "
            "| cache vs recompute | cache vs source style |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            cached = r["kv_cache_tokens_per_s"]
            print(
                f"| {r['preset']} | {r['source_style_tokens_per_s']:,.0f} | "
                f"{r['recompute_tokens_per_s']:,.0f} | {cached:,.0f} | "
                f"{cached / r['recompute_tokens_per_s']:.1f}x | "
                f"{cached / r['source_style_tokens_per_s']:.1f}x |"
            )
    if levers:
        print()
        print("levers, KV cache tok/s (× today's form), interleaved, median of", args.repeats)
        print("| preset | " + " | ".join(LEVERS) + " |")
        print("|---|" + "---:|" * len(LEVERS))
        for r in levers:
            cells = [f"{r[name]:,.0f} ({r[name] / r['today']:.2f}×)" for name in LEVERS]
            print(f"| {r['preset']} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "threads": args.threads,
        "precision": "fp32",
        "machine": hardware.machine_info(),
        "machine_line": hardware.machine_line(),
        "rows": rows,
        "levers": levers,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
