"""What the decoding commands (``generate``, ``steer-eval``) and ``eval`` share: loading a
checkpoint for batch-1 decoding, checking the generation flags, and the lines they print."""

from __future__ import annotations

import argparse
import math
import sys

from h2q_tui import checkpoints
from h2q_tui.errors import UserError
from h2q_tui.generation.decoder import check_output
from h2q_tui.generation.generate import ModeConfig, use_decoding_threads
from h2q_tui.generation.sampling import SamplingConfig, limit_problem
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.generation.text import Codec
from h2q_tui.system import hardware


def load_for_decoding(args: argparse.Namespace):
    """Load CHECKPOINT for batch-1 decoding on --device, on --threads torch threads (else
    the batch-1 rule: one); ``args.thread_choice`` says which and why."""
    check_threads(args.threads)
    args.thread_choice = use_decoding_threads(args.threads)
    device = hardware.resolve_device(args.device)
    dequantize = getattr(args, "dequantize", False)
    loaded = checkpoints.load_checkpoint(args.checkpoint, device=device, dequantize=dequantize)
    check_output(loaded.model)  # weights that overflow: refused here, before anything is printed
    say_note(loaded.info, loaded.model)
    return loaded.info, loaded.model, Codec(loaded.tokenizer)


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")


def say_threads(choice) -> None:
    """One stderr line: the decoding thread count and why."""
    print(f"decoding on {choice.describe()}", file=sys.stderr)


def say_note(info, model=None) -> None:
    """Tell the user when a damaged latest checkpoint was skipped, and what a crystallized
    checkpoint is and how it runs ("int8 of run X step N, 3.8× smaller; int8 products on 17
    matrices")."""
    if info.note:
        print(f"note: {info.note}", file=sys.stderr)
    if getattr(info, "crystal", None) is not None:
        account = checkpoints.crystal_account(model) if model is not None else ""
        print(f"loaded {info.describe()}" + (f"; {account}" if account else ""), file=sys.stderr)


def check_decoding_args(args: argparse.Namespace) -> None:
    """The sampling, mode and steering flags of generate/steer-eval, before any model loads;
    the sampling ranges are the generator's own (``sampling.LIMITS``)."""
    fields = ["temperature", "top_k", "top_p", "repetition_penalty", "seed"]
    if getattr(args, "strength", None) is not None:
        fields.append("strength")
    flags = {field: "--" + field.replace("_", "-") for field in fields}
    for field in fields:
        problem = limit_problem(field, getattr(args, field), flags)
        if problem:
            raise UserError(problem)
    if not math.isfinite(args.flow_weight):
        raise UserError("--flow-weight must be a finite number")
    checks = [
        (
            args.max_new_tokens >= 1,
            f"--max-new-tokens must be at least 1, got {args.max_new_tokens}",
        ),
        (args.lookahead >= 0, f"--lookahead must be >= 0, got {args.lookahead}"),
        (args.layer >= 0, f"--layer must be >= 0 (0 = the embedding output), got {args.layer}"),
        (all(args.stop), "--stop needs a non-empty string"),
        (
            args.direction != "contrast" or bool(args.contrast),
            "--contrast needs a non-empty prompt with --direction contrast",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def check_layer(args: argparse.Namespace, info, model) -> None:
    """--layer names one of the model's blocks."""
    blocks = len(model.residual_blocks())
    if args.layer >= blocks:
        raise UserError(
            f"--layer {args.layer} is out of range: layer must be in 0..{blocks - 1} (this "
            f"{info.config.model.family} model has {blocks} blocks)"
        )


def generation_settings(
    args: argparse.Namespace,
) -> tuple[SamplingConfig, ModeConfig, SteerConfig]:
    """The sampling, mode and steering settings the parsed flags ask for."""
    sampling = SamplingConfig(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    mode = ModeConfig(mode=args.mode, lookahead=args.lookahead, flow_weight=args.flow_weight)
    steer = SteerConfig(
        word=getattr(args, "steer", None) or getattr(args, "word", None) or "",
        strength=getattr(args, "strength", 0.0),
        layer=args.layer,
        direction=args.direction,
        contrast=args.contrast,
        positions=args.positions,
    )
    return sampling, mode, steer
