"""``h2q-tui generate CHECKPOINT``: stream a continuation in one of four modes, follow a run's
new checkpoints (``--follow``), or pick modes from the interactive menu."""

from __future__ import annotations

import argparse
import sys

from h2q_tui.checkpoints import tokenizer_of
from h2q_tui.cli.decoding import (
    check_decoding_args,
    check_layer,
    check_threads,
    generation_settings,
    load_for_decoding,
    say_threads,
)
from h2q_tui.cli.parser import Parser, add_generation_flags
from h2q_tui.errors import UserError
from h2q_tui.generation.follow import RunFollower, follow
from h2q_tui.generation.generate import Generation, use_decoding_threads
from h2q_tui.generation.text import Codec


def parser() -> Parser:
    p = Parser(
        prog="h2q-tui generate",
        description="Stream a continuation from a checkpoint in one of four modes "
        "(sample, steer, lookahead, flow).",
    )
    p.add_argument("checkpoint", help="checkpoint folder, model.safetensors, or run dir")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--interactive", action="store_true", help="the source's menu loop")
    p.add_argument(
        "--follow",
        action="store_true",
        help="CHECKPOINT is a run dir: regenerate each time training saves a new checkpoint "
        "(swapped into the running model in place); Ctrl+C stops",
    )
    p.add_argument(
        "--follow-seconds",
        type=float,
        metavar="S",
        help="with --follow: stop after S seconds (default: until Ctrl+C)",
    )
    p.add_argument("--steer", metavar="WORD", help="target word (mode steer)")
    p.add_argument(
        "--strength", type=float, help="signed, × residual norm (default 0.5; needs --steer)"
    )
    add_generation_flags(p)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    check_decoding_args(args)
    if args.steer is not None and not args.steer.strip():
        raise UserError("--steer needs a target word, got an empty one")
    if args.strength is not None and args.steer is None:
        raise UserError("--strength needs --steer WORD (the word to steer towards)")
    if args.strength is None:
        args.strength = 0.5
    if args.steer and args.strength != 0 and args.mode == "sample":
        args.mode = "steer"  # --steer alone means steering
    if args.follow_seconds is not None and not args.follow:
        raise UserError("--follow-seconds needs --follow")
    if args.follow:
        return _generate_following(args)
    info, model, codec = load_for_decoding(args)
    check_layer(args, info, model)
    header = (
        f"checkpoint {info.weights.parent} | step {info.step} | {info.config.model.family} | "
        f"{args.thread_choice.describe()}"
    )
    if args.interactive:
        print(header, file=sys.stderr)
        return _interactive(model, codec, args)
    sampling, mode, steer = generation_settings(args)
    if args.mode not in ("steer",) and not args.steer:
        steer.strength = 0.0
    try:
        generation = Generation(model, codec, args.prompt, sampling, mode, steer, not args.no_cache)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(header, file=sys.stderr)
    _stream(generation, args.prompt)
    return 0


def _generate_following(args: argparse.Namespace) -> int:
    """``generate RUN --follow``: the same prompt and seed again on every new checkpoint."""
    if args.interactive:
        raise UserError("--follow and --interactive do not go together")
    if args.follow_seconds is not None and args.follow_seconds <= 0:
        raise UserError(f"--follow-seconds must be > 0, got {args.follow_seconds:g}")
    check_threads(args.threads)
    say_threads(use_decoding_threads(args.threads))
    follower = RunFollower(args.checkpoint)
    sampling, mode, steer = generation_settings(args)
    if args.mode not in ("steer",) and not args.steer:
        steer.strength = 0.0

    def regenerate(model, info, swapped) -> None:
        check_layer(args, info, model)
        try:
            generation = Generation(
                model, Codec(tokenizer_of(info)), args.prompt, sampling, mode, steer,
                not args.no_cache,
            )  # fmt: skip
        except ValueError as exc:
            raise UserError(str(exc)) from None
        _stream(generation, args.prompt)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        taken = follow(follower, regenerate, say, args.follow_seconds)
    except KeyboardInterrupt:
        print("stopped following", file=sys.stderr)
        return 0
    say(f"followed {follower.run_dir} for {args.follow_seconds:g} s: {taken} checkpoint(s)")
    return 0


def _stream(generation: Generation, prompt: str) -> None:
    """The prompt and its continuation on stdout as it comes; steering and speed on stderr."""
    steer = generation.steer
    if steer.active:
        print(
            f"steering towards {steer.word!r} with strength {steer.strength:+g} at layer "
            f"{steer.layer} ({steer.direction}, {steer.positions} positions)",
            file=sys.stderr,
        )
    sys.stdout.write(prompt)
    for piece in generation:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    s = generation.stats
    print(
        f"{s.new_tokens} tokens in {s.seconds:.2f} s ({s.tokens_per_s:.1f} tokens/s, first token "
        f"{1000 * s.first_token_s:.0f} ms, stop: {s.stop_reason})",
        file=sys.stderr,
    )


MENU = """
1) sample     2) steer (word + signed strength)
3) lookahead  4) Hamiltonian flow
Select Mode (1-4/q): """
MENU_MODES = {"1": "sample", "2": "steer", "3": "lookahead", "4": "flow"}


def _interactive(model, codec, args: argparse.Namespace) -> int:
    """The Hamiltonian-LLM source's menu: pick a mode, answer its questions, read the text."""
    sampling, mode, steer = generation_settings(args)
    try:
        while True:
            choice = input(MENU).strip().lower()
            if choice in ("q", "quit", "exit"):
                return 0
            if choice not in MENU_MODES:
                print("choose 1, 2, 3, 4 or q")
                continue
            mode.mode = MENU_MODES[choice]
            steer.strength = 0.0
            try:
                _ask_mode_settings(mode, steer)
                prompt = input("Prompt: ")
                generation = Generation(
                    model, codec, prompt, sampling, mode, steer, not args.no_cache
                )
            except ValueError as exc:
                print(f"error: {exc}")
                continue
            _stream(generation, prompt)
    except EOFError:
        print()
        return 0


def _ask_mode_settings(mode, steer) -> None:
    """The menu's questions for the chosen mode (ValueError on an answer that is no number)."""
    if mode.mode == "steer":
        steer.word = input("Target word: ").strip()
        steer.strength = float(input("Strength (e.g. 0.5 or -0.5): ") or 0.5)
    elif mode.mode == "lookahead":
        mode.lookahead = int(input(f"Lookahead L [{mode.lookahead}]: ") or mode.lookahead)
    elif mode.mode == "flow":
        mode.flow_weight = float(input(f"Flow weight w [{mode.flow_weight}]: ") or mode.flow_weight)
