"""Measured steering (SPEC §6): what a (word, strength, layer) does to seeded samples.

Per strength, over N samples seeded 0 … N−1 (the same seeds for every strength, so rows
differ only by the steering):
- hit rate: share of continuations that contain the word (case-insensitive, anywhere:
  SPEC's definition; "catch" counts for "cat");
- word hit rate: the same for the word as a whole word ("The cat sat", not "catch" or byte
  soup like "toaccaticat") — byte-level models steered hard raise the first, not the second;
- Δ log-prob: log p(word right after the prompt) steered minus unsteered, in nats;
- fluency cost: bits per byte of the steered continuation under the *unsteered* model;
- distinct-2: distinct word bigrams / word bigrams, averaged over samples;
- longest repeat: the longest substring (characters) that occurs twice in a continuation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from h2q_kernels.hamiltonian import frozen_weights
from torch import nn

from h2q_tui.generation.generate import Generation, ModeConfig
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.steering import SteerConfig, Steering, build_steering
from h2q_tui.generation.text import DEFAULT_PROMPT, Codec

REPORTS = "reports"  # a run dir's folder for measurements: never pruned or replaced


def report_path(weights: Path, word: str) -> Path:
    """Where steer-eval's JSON goes by default: ``RUN/reports/steer-eval-WORD-step_N.json``
    for a checkpoint of a run (its ``checkpoints/`` or ``crystal/`` folders are pruned and
    replaced), else ``steer-eval-WORD.json`` beside the checkpoint."""
    folder = weights.parent
    word_slug = "".join(c if c.isalnum() else "_" for c in word)[:40] or "word"
    run = folder.parent.parent
    if folder.parent.name == "checkpoints":
        return run / REPORTS / f"steer-eval-{word_slug}-{folder.name}.json"
    if folder.parent.name == "crystal" and (run / "checkpoints").is_dir():
        return run / REPORTS / f"steer-eval-{word_slug}-crystal-{folder.name}.json"
    return folder / f"steer-eval-{word_slug}.json"


@dataclass
class SteerRow:
    strength: float
    hit_rate: float
    word_hit_rate: float
    delta_logprob: float
    fluency_bpb: float
    distinct_2: float
    longest_repeat: float
    samples: list[str] = field(default_factory=list)


@torch.no_grad()
def continuation_nats(
    model: nn.Module, prompt_ids: list[int], continuation: list[int], steering=None
) -> float:
    """−log p(continuation | prompt) in nats, in windows that fit the model's context."""
    context = model.config.context
    device = next(model.parameters()).device
    sequence = list(prompt_ids) + list(continuation)
    total, target = 0.0, len(prompt_ids)
    while target < len(sequence):
        end = min(len(sequence), target + max(1, context // 2))  # score targets [target, end)
        start = max(0, end - 1 - context)
        if steering is not None:
            steering.start = 0
        logits, _ = model(torch.tensor([sequence[start : end - 1]], device=device))
        log_probs = F.log_softmax(logits[0].float(), dim=-1)  # (T, V)
        rows = torch.arange(target - 1 - start, end - 1 - start, device=device)
        ids = torch.tensor(sequence[target:end], device=device)
        total -= log_probs[rows, ids].sum().item()
        target = end
    return total


def contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def distinct_2(text: str) -> float:
    words = text.split()
    pairs = list(zip(words, words[1:], strict=False))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def longest_repeat(text: str) -> int:
    """Length of the longest substring that occurs at least twice (overlaps allowed)."""
    best = 0
    for shift in range(1, len(text)):
        run = 0
        for i in range(len(text) - shift):
            run = run + 1 if text[i] == text[i + shift] else 0
            best = max(best, run)
    return best


def target_text(prompt: str, word: str) -> str:
    """The word as it would follow the prompt: with a space unless the prompt ends in one."""
    return word if not prompt or prompt[-1].isspace() else " " + word


def evaluate_steering(
    model: nn.Module,
    codec: Codec,
    steer: SteerConfig,
    strengths: list[float],
    prompt: str = DEFAULT_PROMPT,
    samples: int = 8,
    sampling: SamplingConfig | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> list[SteerRow]:
    """One row per strength (a 0 row is added when missing), for ``steer``'s word and layer."""
    sampling = sampling or SamplingConfig(max_new_tokens=80)
    strengths = sorted(set(strengths) | {0.0})
    prompt_ids = codec.encode(prompt) or codec.encode("\n")
    target_ids = codec.encode(target_text(prompt, steer.word))
    model.eval()
    with torch.no_grad(), frozen_weights(model):  # W built once for every sample and score
        base_logprob = -continuation_nats(model, prompt_ids, target_ids)
        rows = []
        for strength in strengths:
            config = replace(steer, strength=strength)
            texts, bits, n_bytes = [], 0.0, 0
            for seed in range(samples):
                if progress is not None:
                    progress(strength, seed)
                generation = Generation(
                    model, codec, prompt, replace(sampling, seed=seed), ModeConfig(), config
                )
                for _ in generation:
                    pass
                texts.append(generation.text)
                bits += continuation_nats(model, prompt_ids, generation.tokens) / math.log(2)
                n_bytes += len(generation.text.encode("utf-8"))
            steered_logprob = _steered_logprob(model, codec, config, prompt_ids, target_ids)
            rows.append(
                SteerRow(
                    strength=strength,
                    hit_rate=sum(steer.word.lower() in t.lower() for t in texts) / samples,
                    word_hit_rate=sum(contains_word(t, steer.word) for t in texts) / samples,
                    delta_logprob=(
                        0.0 if steered_logprob is None else steered_logprob - base_logprob
                    ),
                    fluency_bpb=bits / max(1, n_bytes),
                    distinct_2=sum(map(distinct_2, texts)) / samples,
                    longest_repeat=sum(map(longest_repeat, texts)) / samples,
                    samples=texts,
                )
            )
    return rows


def _steered_logprob(model, codec, config, prompt_ids, target_ids) -> float | None:
    """log p(target | prompt) with the steering of ``config``; None when it steers nothing."""
    steering: Steering | None = build_steering(model, config, codec.encode, prompt_ids)
    if steering is None:
        return None
    steering.attach(model)
    try:
        return -continuation_nats(model, prompt_ids, target_ids, steering)
    finally:
        steering.detach()


def format_table(rows: list[SteerRow]) -> str:
    lines = [
        f"{'strength':>9} {'hit rate':>9} {'word hits':>9} {'Δ logp':>8} {'fluency bpb':>12} "
        f"{'distinct-2':>10} {'longest repeat':>15}"
    ]
    for r in rows:
        lines.append(
            f"{r.strength:>+9.2f} {r.hit_rate:>9.0%} {r.word_hit_rate:>9.0%} {r.delta_logprob:>+8.2f} "
            f"{r.fluency_bpb:>12.3f} {r.distinct_2:>10.2f} {r.longest_repeat:>15.1f}"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: list[SteerRow]) -> list[dict]:
    return [asdict(r) for r in rows]
