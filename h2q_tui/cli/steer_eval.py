"""``h2q-tui steer-eval CHECKPOINT --word W``: what steering does to a checkpoint, per strength.

The table goes to stdout, the whole report to a JSON file (the measuring is
:mod:`h2q_tui.generation.steer_eval`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from h2q_tui.cli.decoding import (
    check_decoding_args,
    check_layer,
    generation_settings,
    load_for_decoding,
)
from h2q_tui.cli.parser import Parser, add_generation_flags
from h2q_tui.errors import UserError
from h2q_tui.generation import steer_eval
from h2q_tui.generation.sampling import SamplingConfig, limit_problem
from h2q_tui.generation.text import DEFAULT_PROMPT


def parser() -> Parser:
    p = Parser(
        prog="h2q-tui steer-eval",
        description="Measure steering: hit rate, Δ log-prob, fluency cost and repetition per "
        "strength, beside the strength-0 row.",
    )
    p.add_argument("checkpoint", help="checkpoint folder, model.safetensors, or run dir")
    p.add_argument("--word", required=True, help="target word")
    p.add_argument("--strengths", default="-1,0,0.5,1", help="comma-separated signed strengths")
    p.add_argument("--samples", type=int, default=16, help="seeded samples per strength")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt every sample continues")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="default: RUN/reports/steer-eval-WORD-STEP.json for a checkpoint of a run, else "
        "steer-eval-WORD.json beside the checkpoint",
    )
    add_generation_flags(p)
    p.set_defaults(max_new_tokens=160)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(_glue_negative_list(argv, "--strengths"))
    strengths = _strengths(args.strengths)
    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    if not args.word.strip():
        raise UserError("--word needs a target word, got an empty one")
    check_decoding_args(args)
    info, model, codec = load_for_decoding(args)
    check_layer(args, info, model)
    sampling, _, steer = generation_settings(args)
    steer.word = args.word
    print(
        f"checkpoint {info.weights.parent} | step {info.step} | {info.config.model.family} | "
        f"word {args.word!r} | layer {args.layer} | {args.direction} | {args.samples} samples of "
        f"{sampling.max_new_tokens} tokens after {args.prompt!r} | "
        f"{args.thread_choice.describe()}",
        file=sys.stderr,
    )

    def progress(strength: float, seed: int) -> None:
        print(
            f"\rstrength {strength:+.2f} sample {seed + 1}/{args.samples}",
            end="",
            file=sys.stderr,
            flush=True,
        )

    try:
        rows = steer_eval.evaluate_steering(
            model, codec, steer, strengths, args.prompt, args.samples, sampling, progress
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(file=sys.stderr)
    print(steer_eval.format_table(rows))
    out = Path(args.json) if args.json else steer_eval.report_path(info.weights, args.word)
    _write_report(out, _report(args, info, sampling, rows))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _strengths(text: str) -> list[float]:
    """--strengths as numbers, each finite and within the steering limit."""
    try:
        strengths = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--strengths must be numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(s) for s in strengths):
        raise UserError(f"--strengths must be finite numbers, got {text!r}")
    for strength in strengths:
        problem = limit_problem("strength", strength, {"strength": "--strengths"})
        if problem:
            raise UserError(f"{problem} in {text!r}")
    return strengths


def _report(args: argparse.Namespace, info, sampling: SamplingConfig, rows) -> dict:
    """The JSON report: what was measured, with which settings, and the rows."""
    return {
        "checkpoint": str(info.weights.parent),
        "step": info.step,
        "family": info.config.model.family,
        "word": args.word,
        "prompt": args.prompt,
        "steer": {
            "layer": args.layer,
            "direction": args.direction,
            "positions": args.positions,
            "contrast": args.contrast,
        },
        "sampling": {
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "repetition_penalty": sampling.repetition_penalty,
            "max_new_tokens": sampling.max_new_tokens,
        },
        "samples": args.samples,
        "rows": steer_eval.rows_as_dicts(rows),
    }


def _write_report(out: Path, payload: dict) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}") from None


def _glue_negative_list(argv: list[str], flag: str) -> list[str]:
    """``FLAG -1,0,1`` → ``FLAG=-1,0,1`` (argparse would take ``-1,0,1`` for an option)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == flag and out[i + 1].startswith("-") and out[i + 1][1:2].isdigit():
            out[i : i + 2] = [f"{flag}={out[i + 1]}"]
            break
    return out
