"""Command line: ``h2q-tui`` (dashboard), ``--no-ui`` (headless training), ``eval``,
``attach``, ``generate``, ``steer-eval``, ``presets``; ``--version``.

User errors exit 2 with one line on stderr; Ctrl-C during training saves and exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from h2q_tui.cli import train
from h2q_tui.errors import UserError
from h2q_tui.system.budget import add_budget_flags

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default, unless the text already says it or there is none.

    Text with line breaks (the main help's list of subcommands) is printed as written.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        text = " ".join(text.split())  # never break inside a flag such as --no-ui
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, (str, list, tuple)) and len(default) == 0)
        ):
            return text
        if isinstance(default, str) and not default.strip():
            return text + f" (default: {default!r})"  # make a blank default visible
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2, like every other user error
        raise UserError(f"{message} (see {self.prog} --help)")


def version_text() -> str:
    """``h2q-tui 0.1.0 (torch 2.x, Python 3.x)``: the package metadata's version first."""
    import platform

    import torch

    from h2q_tui import __version__

    return f"h2q-tui {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


class _VersionAction(argparse.Action):
    """``--version``, imported lazily so that ``--help`` does not pay for torch."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit(EXIT_OK)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        help="preset name (list them: h2q-tui presets) or a .toml path (default: microstream-cpu)",
    )
    parser.add_argument(
        "--data", help="text file, directory of text files, or tinystories|wikitext2|shakespeare"
    )
    parser.add_argument(
        "--heldout", help="held-out text file (default: a tail of the corpus never trained on)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a preset value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    parser.add_argument(
        "--run-dir", help="where metrics.jsonl and checkpoints go (default runs/<preset>-<time>)"
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop when the run's total step count reaches N (0: set up, report, exit); "
        "left out: train.max_steps of the preset or resumed run (-1 = no limit)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="stop after S seconds of training in all (0: no step); left out: "
        "train.max_seconds of the preset or resumed run (-1 = no limit)",
    )
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads for training (train.threads; default 0 = auto: the faster of 1 "
        "and all cores, timed on the first steps and again when the step time drifts)",
    )
    parser.add_argument(
        "--tokenizer", help="a local BPE tokenizer.json (tokenizers library); default: bytes"
    )
    add_budget_flags(parser)
    add_device_flag(parser)


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N (default: auto)",
    )


def main_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="h2q-tui",
        usage="h2q-tui [--no-ui] [options]  |  h2q-tui SUBCOMMAND ...",
        description="Train, watch and compare Hamiltonian/quaternion byte LMs. Without a "
        "subcommand: the dashboard (press t to train), or headless training with --no-ui.",
        epilog=subcommands_epilog(),
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument(
        "--no-ui", action="store_true", help="train headless: progress lines on stdout"
    )
    parser.add_argument(
        "--autostart", action="store_true", help="dashboard: start training at once"
    )
    add_run_flags(parser)
    return parser


def eval_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="h2q-tui eval",
        description="Cross-entropy of a checkpoint on a file, in nats and bits per byte.",
    )
    parser.add_argument(
        "checkpoint", help="checkpoint folder, model.safetensors file, or run dir (its latest)"
    )
    parser.add_argument("--data", required=True, help="file to evaluate on (any bytes)")
    parser.add_argument(
        "--windows",
        type=int,
        metavar="N",
        help="evaluate only the first N context windows (N >= 1; left out: the whole file)",
    )
    parser.add_argument("--batch", type=int, default=32, help="windows per forward pass")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default 0 = auto: the faster of 1 and all cores, timed on the "
        "first batches)",
    )
    add_device_flag(parser)
    return parser


def run_attach(argv: list[str]) -> int:
    from h2q_tui.app import make_app, run_app

    parser = Parser(
        prog="h2q-tui attach", description="The dashboard on runs other processes are writing."
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run dirs holding metrics.jsonl")
    args = parser.parse_args(argv)
    from h2q_tui.training.tail import not_regular
    from h2q_tui.training.writers import METRICS_FILE

    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"run dir not found: {run_dir}")
        problem = not_regular(run_dir / METRICS_FILE)  # a FIFO or a device: never read
        if problem:
            raise UserError(f"{problem}: attach reads only a regular file")
    from h2q_tui.app.signals import end_with_web_parent

    end_with_web_parent()  # a web tab's process: it ends with its server
    return run_app(make_app(attach=args.run_dirs))  # non-zero if the app crashed


def run_eval(argv: list[str]) -> int:
    import math

    import torch

    from h2q_tui import checkpoints
    from h2q_tui.cli.progress import WindowProgressBar
    from h2q_tui.models import count_parameters
    from h2q_tui.system import hardware
    from h2q_tui.system.thread_choice import BatchPacer
    from h2q_tui.training.evaluate import heldout_cross_entropy
    from h2q_tui.training.events import bits_per_byte

    args = eval_parser().parse_args(argv)
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0 (0 = auto), got {args.threads}")
    if args.batch < 1:
        raise UserError(f"--batch must be at least 1 (windows per forward pass), got {args.batch}")
    if args.windows is not None and args.windows < 1:
        raise UserError(
            f"--windows must be >= 1 (leave it out for the whole file), got {args.windows}"
        )
    if not Path(args.data).is_file():
        raise UserError(f"data file not found: {args.data}")
    device = hardware.resolve_device(args.device)
    info = checkpoints.read_info(args.checkpoint)
    say_note(info)
    model = checkpoints.load_checkpoint(info, device=device).model  # crystallized: decoded there
    path = Path(args.data)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    if not raw:
        raise UserError(
            f"data file {path} is empty; evaluation needs at least "
            f"{info.config.model.context + 1} bytes"
        )
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    unit, bytes_per_token = "byte", 1.0
    tokenizer = checkpoints.tokenizer_of(info)
    if tokenizer is not None:  # a BPE model: bits per byte = bits per token / bytes per token
        data = tokenizer.encode(raw)
        unit, bytes_per_token = "token", len(raw) / max(1, data.numel())
    context = info.config.model.context
    if data.numel() < context + 1:
        raise UserError(
            f"data file {path} has {data.numel()} {unit}s; evaluation needs at least {context + 1}"
        )
    max_bytes = args.windows * context + 1 if args.windows else None
    windows = (min(data.numel(), max_bytes or data.numel()) - 1) // context
    print(
        f"checkpoint {info.weights} | step {info.step} | {info.config.model.family} | "
        f"{count_parameters(model):,} parameters"
    )
    print(f"data {path} | {len(raw):,} bytes | {windows:,} windows of {context} {unit}s")
    bar = WindowProgressBar(windows, args.batch)  # on stderr; stdout keeps the results
    pacer = BatchPacer(args.threads, torch.set_num_threads)  # auto: batches timed at 1 and N

    def progress(done: int, total: int) -> None:
        pacer()
        bar(done, total)

    nats = heldout_cross_entropy(
        model, data, context, device, max_bytes, batch=args.batch, progress=progress
    )
    print(f"threads {pacer.choice.describe()}")
    if not math.isfinite(nats):
        raise UserError(
            f"checkpoint {info.weights} gives a non-finite loss ({nats}): its weights diverged "
            "or are damaged; evaluate an earlier checkpoint"
        )
    bpb = bits_per_byte(nats) / bytes_per_token
    print(f"cross-entropy {nats:.4f} nats/{unit} | {bpb:.4f} bits/byte")
    print(f"bpb={bpb:.4f}")
    return EXIT_OK


def load_for_decoding(args: argparse.Namespace):
    """Load CHECKPOINT for batch-1 decoding on --device, on --threads torch threads (else
    the batch-1 rule: one); ``args.thread_choice`` says which and why."""
    from h2q_tui import checkpoints
    from h2q_tui.generation.decoder import check_output
    from h2q_tui.generation.generate import use_decoding_threads
    from h2q_tui.generation.text import Codec
    from h2q_tui.system import hardware

    _check_threads(args.threads)
    args.thread_choice = use_decoding_threads(args.threads)
    device = hardware.resolve_device(args.device)
    loaded = checkpoints.load_checkpoint(args.checkpoint)
    check_output(loaded.model)  # weights that overflow: refused here, before anything is printed
    say_note(loaded.info)
    return loaded.info, loaded.model.to(device), Codec(loaded.tokenizer)


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")


def say_threads(choice) -> None:
    """One stderr line: the decoding thread count and why."""
    print(f"decoding on {choice.describe()}", file=sys.stderr)


def say_note(info) -> None:
    """Tell the user when a damaged latest checkpoint was skipped, and what a crystallized
    checkpoint is ("int8 of run X step N, 3.8× smaller")."""
    if info.note:
        print(f"note: {info.note}", file=sys.stderr)
    if getattr(info, "crystal", None) is not None:
        print(f"loaded {info.describe()}", file=sys.stderr)


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """Sampling, mode and steering flags shared by ``generate`` and ``steer-eval``."""
    from h2q_tui.generation.generate import DECODE_THREADS, MODES, ModeConfig
    from h2q_tui.generation.sampling import SamplingConfig

    s, m = SamplingConfig(), ModeConfig()
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=s.temperature, help="0 = greedy")
    group.add_argument("--top-k", type=int, default=s.top_k, help="0 = off")
    group.add_argument("--top-p", type=float, default=s.top_p, help="1 = off")
    group.add_argument(
        "--repetition-penalty", type=float, default=s.repetition_penalty, help="CTRL-style; 1 = off"
    )
    group.add_argument(
        "--max-new-tokens", type=int, default=s.max_new_tokens, help="tokens to generate"
    )
    group.add_argument("--seed", type=int, default=s.seed, help="sampling seed")
    group.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    group.add_argument("--no-cache", action="store_true", help="recompute the context every token")
    group.add_argument(
        "--threads",
        type=int,
        help=f"torch threads for decoding (default: {DECODE_THREADS}; batch-1 decoding of these "
        "small models is fastest on one thread, and leaves the other cores to training)",
    )
    add_device_flag(group)
    group = parser.add_argument_group("modes")
    group.add_argument(
        "--mode", choices=MODES, default="sample", help="how the next token is picked"
    )
    group.add_argument("--lookahead", type=int, default=m.lookahead, help="L of mode lookahead")
    group.add_argument("--flow-weight", type=float, default=m.flow_weight, help="w of mode flow")
    group = parser.add_argument_group("steering")
    group.add_argument("--layer", type=int, default=0, help="block whose input is steered")
    group.add_argument(
        "--direction",
        choices=("embedding", "contrast"),
        default="embedding",
        help="the word's embedding rows, or its activations minus the contrast prompt's",
    )
    group.add_argument("--contrast", default=" ", help="contrast prompt of --direction contrast")
    group.add_argument(
        "--positions",
        choices=("all", "front"),
        default="all",
        help="steer every position or the prompt's",
    )


def _check_decoding_args(args: argparse.Namespace) -> None:
    """The sampling, mode and steering flags of generate/steer-eval, before any model loads;
    the sampling ranges are the generator's own (``sampling.LIMITS``)."""
    import math

    from h2q_tui.generation.sampling import limit_problem

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


def _check_layer(args: argparse.Namespace, info, model) -> None:
    """--layer names one of the model's blocks."""
    blocks = len(model.residual_blocks())
    if args.layer >= blocks:
        raise UserError(
            f"--layer {args.layer} is out of range: layer must be in 0..{blocks - 1} (this "
            f"{info.config.model.family} model has {blocks} blocks)"
        )


def _generation_settings(args: argparse.Namespace):
    from h2q_tui.generation.generate import ModeConfig
    from h2q_tui.generation.sampling import SamplingConfig
    from h2q_tui.generation.steering import SteerConfig

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


def run_generate(argv: list[str]) -> int:
    from h2q_tui.generation.generate import Generation

    parser = Parser(
        prog="h2q-tui generate",
        description="Stream a continuation from a checkpoint in one of four modes "
        "(sample, steer, lookahead, flow).",
    )
    parser.add_argument("checkpoint", help="checkpoint folder, model.safetensors, or run dir")
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--interactive", action="store_true", help="the source's menu loop")
    parser.add_argument(
        "--follow",
        action="store_true",
        help="CHECKPOINT is a run dir: regenerate each time training saves a new checkpoint "
        "(swapped into the running model in place); Ctrl+C stops",
    )
    parser.add_argument(
        "--follow-seconds",
        type=float,
        metavar="S",
        help="with --follow: stop after S seconds (default: until Ctrl+C)",
    )
    parser.add_argument("--steer", metavar="WORD", help="target word (mode steer)")
    parser.add_argument(
        "--strength", type=float, help="signed, × residual norm (default 0.5; needs --steer)"
    )
    add_generation_flags(parser)
    args = parser.parse_args(argv)
    _check_decoding_args(args)
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
    _check_layer(args, info, model)
    header = (
        f"checkpoint {info.weights.parent} | step {info.step} | {info.config.model.family} | "
        f"{args.thread_choice.describe()}"
    )
    if args.interactive:
        print(header, file=sys.stderr)
        return _interactive(model, codec, args)
    sampling, mode, steer = _generation_settings(args)
    if args.mode not in ("steer",) and not args.steer:
        steer.strength = 0.0
    try:
        generation = Generation(model, codec, args.prompt, sampling, mode, steer, not args.no_cache)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(header, file=sys.stderr)
    _stream(generation, args.prompt)
    return EXIT_OK


def _generate_following(args: argparse.Namespace) -> int:
    """``generate RUN --follow``: the same prompt and seed again on every new checkpoint."""
    from h2q_tui.checkpoints import tokenizer_of
    from h2q_tui.generation.follow import RunFollower, follow
    from h2q_tui.generation.generate import Generation, use_decoding_threads
    from h2q_tui.generation.text import Codec

    if args.interactive:
        raise UserError("--follow and --interactive do not go together")
    if args.follow_seconds is not None and args.follow_seconds <= 0:
        raise UserError(f"--follow-seconds must be > 0, got {args.follow_seconds:g}")
    _check_threads(args.threads)
    say_threads(use_decoding_threads(args.threads))
    follower = RunFollower(args.checkpoint)
    sampling, mode, steer = _generation_settings(args)
    if args.mode not in ("steer",) and not args.steer:
        steer.strength = 0.0

    def regenerate(model, info, swapped) -> None:
        _check_layer(args, info, model)
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
        return EXIT_OK
    say(f"followed {follower.run_dir} for {args.follow_seconds:g} s: {taken} checkpoint(s)")
    return EXIT_OK


def _stream(generation, prompt: str) -> None:
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


def _interactive(model, codec, args: argparse.Namespace) -> int:
    """The Hamiltonian-LLM source's menu: pick a mode, answer its questions, read the text."""
    from h2q_tui.generation.generate import Generation

    sampling, mode, steer = _generation_settings(args)
    modes = {"1": "sample", "2": "steer", "3": "lookahead", "4": "flow"}
    try:
        while True:
            choice = input(MENU).strip().lower()
            if choice in ("q", "quit", "exit"):
                return EXIT_OK
            if choice not in modes:
                print("choose 1, 2, 3, 4 or q")
                continue
            mode.mode = modes[choice]
            steer.strength = 0.0
            try:
                if mode.mode == "steer":
                    steer.word = input("Target word: ").strip()
                    steer.strength = float(input("Strength (e.g. 0.5 or -0.5): ") or 0.5)
                elif mode.mode == "lookahead":
                    mode.lookahead = int(
                        input(f"Lookahead L [{mode.lookahead}]: ") or mode.lookahead
                    )
                elif mode.mode == "flow":
                    mode.flow_weight = float(
                        input(f"Flow weight w [{mode.flow_weight}]: ") or mode.flow_weight
                    )
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
        return EXIT_OK


def run_steer_eval(argv: list[str]) -> int:
    import json
    import math

    from h2q_tui.generation import steer_eval
    from h2q_tui.generation.sampling import limit_problem

    parser = Parser(
        prog="h2q-tui steer-eval",
        description="Measure steering: hit rate, Δ log-prob, fluency cost and repetition per "
        "strength, beside the strength-0 row.",
    )
    parser.add_argument("checkpoint", help="checkpoint folder, model.safetensors, or run dir")
    parser.add_argument("--word", required=True, help="target word")
    parser.add_argument(
        "--strengths", default="-1,0,0.5,1", help="comma-separated signed strengths"
    )
    parser.add_argument("--samples", type=int, default=16, help="seeded samples per strength")
    parser.add_argument(
        "--prompt", default=steer_eval.DEFAULT_PROMPT, help="the prompt every sample continues"
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="default: RUN/reports/steer-eval-WORD-STEP.json for a checkpoint of a run, else "
        "steer-eval-WORD.json beside the checkpoint",
    )
    add_generation_flags(parser)
    parser.set_defaults(max_new_tokens=160)
    args = parser.parse_args(_glue_negative_list(argv, "--strengths"))
    try:
        strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    except ValueError:
        raise UserError(
            f"--strengths must be numbers separated by commas, got {args.strengths!r}"
        ) from None
    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    if not all(math.isfinite(s) for s in strengths):
        raise UserError(f"--strengths must be finite numbers, got {args.strengths!r}")
    for strength in strengths:
        problem = limit_problem("strength", strength, {"strength": "--strengths"})
        if problem:
            raise UserError(f"{problem} in {args.strengths!r}")
    if not args.word.strip():
        raise UserError("--word needs a target word, got an empty one")
    _check_decoding_args(args)
    info, model, codec = load_for_decoding(args)
    _check_layer(args, info, model)
    sampling, _, steer = _generation_settings(args)
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
    payload = {
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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}") from None
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def _glue_negative_list(argv: list[str], flag: str) -> list[str]:
    """``FLAG -1,0,1`` → ``FLAG=-1,0,1`` (argparse would take ``-1,0,1`` for an option)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == flag and out[i + 1].startswith("-") and out[i + 1][1:2].isdigit():
            out[i : i + 2] = [f"{flag}={out[i + 1]}"]
            break
    return out


def run_presets(argv: list[str]) -> int:
    import shutil

    from h2q_tui.cli.presets import format_table, summaries

    Parser(
        prog="h2q-tui presets",
        description="The bundled presets: name, model family, parameter count (counted on "
        "torch's meta device, so nothing is allocated) and the first sentence of the "
        "preset's comment. Use one with --preset NAME.",
    ).parse_args(argv)
    # on a terminal the descriptions wrap at its width; piped, one line per preset
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(format_table(summaries(), width))
    return EXIT_OK


def lazy_command(module: str, function: str = "main") -> Callable[[list[str]], int]:
    """A subcommand whose parser and logic live in its own package (``module.main(argv)``),
    imported only when it runs, so cli.py stays a thin table."""

    def run(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(argv)

    return run


SUBCOMMANDS = {
    "eval": run_eval,
    "attach": run_attach,
    "generate": run_generate,
    "steer-eval": run_steer_eval,
    "crystallize": lazy_command("h2q_tui.cli.crystallize"),
    "hotstart": lazy_command("h2q_tui.cli.hotstart"),
    "presets": run_presets,
    "serve": lazy_command("h2q_tui.cli.serve", "serve_main"),
    "ollama": lazy_command("h2q_tui.cli.serve", "ollama_main"),
    "web": lazy_command("h2q_tui.cli.web"),
    "torchrun": lazy_command("h2q_tui.training.launcher"),
}

SUBCOMMAND_USAGE = {
    "eval": ("CHECKPOINT --data FILE", "cross-entropy of a checkpoint on a file (last line bpb=…)"),
    "attach": ("RUN_DIR [RUN_DIR ...]", "the dashboard on runs other processes write"),
    "generate": ("CHECKPOINT --prompt TEXT", "stream a continuation (sample/steer/lookahead/flow)"),
    "steer-eval": ("CHECKPOINT --word W", "measure what steering does, per strength"),
    "crystallize": ("CHECKPOINT --method M", "compress a checkpoint, measure the cost"),
    "hotstart": ("CHECKPOINT [--cold]", "time load → first token, by phase, fresh and warm"),
    "presets": ("", "list the bundled presets with their parameter counts"),
    "serve": ("CHECKPOINT_OR_RUN_DIR ...", "serve models through the Ollama API"),
    "ollama": ("list|pull|generate ...", "talk to an Ollama server ($OLLAMA_HOST)"),
    "web": ("[RUN_DIR ...] [--port 8000]", "the dashboard in a browser (attach, textual-serve)"),
    "torchrun": ("[TORCHRUN ARGS] -m h2q_tui --no-ui ...", "torchrun with a clean Ctrl-C (130)"),
}


def subcommands_epilog() -> str:
    """The main --help's list of subcommands (each has its own --help)."""
    lines = ["subcommands (h2q-tui SUBCOMMAND --help for each):"]
    for name in SUBCOMMANDS:
        usage, summary = SUBCOMMAND_USAGE.get(name, ("", ""))
        lines.append(f"  {f'{name} {usage}'.strip():<42} {summary}")
    return "\n".join(lines)


def dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = main_parser().parse_args(argv)
    if args.threads is not None:  # --threads N is --set train.threads=N (checked there)
        args.overrides.append(f"train.threads={args.threads}")
    if args.no_ui:
        return train.run_headless(args)
    from h2q_tui.training.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise UserError(
            "under torchrun the trainer runs headless: add --no-ui (watch it with h2q-tui attach RUN_DIR)"
        )
    return train.run_dashboard(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``h2q-tui`` script."""
    from h2q_tui.system.openmp import prefer_passive_waiting

    prefer_passive_waiting()  # first: libgomp reads it once, when torch loads it
    try:
        return dispatch(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"h2q-tui: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("h2q-tui: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
