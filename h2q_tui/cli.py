"""Command line: ``h2q-tui`` (dashboard), ``--no-ui`` (headless training), ``eval``.

User errors exit 2 with one line on stderr; Ctrl-C during training saves and exits 130.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from h2q_tui.errors import UserError

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        raise UserError(f"{message} (see {self.prog} --help)")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="preset name (see presets/) or a .toml path")
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
        "--max-steps", type=int, help="stop when the run's total step count reaches N"
    )
    parser.add_argument("--max-seconds", type=float, help="stop after this much training time")
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument(
        "--tokenizer", help="a local BPE tokenizer.json (tokenizers library); default: bytes"
    )


def main_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="h2q-tui",
        description="Train, watch and compare Hamiltonian/quaternion byte LMs. "
        "Subcommands: eval CHECKPOINT --data FILE | attach RUN_DIR [RUN_DIR ...]",
    )
    parser.add_argument(
        "--no-ui", action="store_true", help="train headless: progress lines on stdout"
    )
    parser.add_argument(
        "--autostart", action="store_true", help="dashboard: start training at once"
    )
    add_run_flags(parser)
    return parser


def eval_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        default=0,
        help="evaluate only the first N context windows (default: whole file)",
    )
    parser.add_argument("--batch", type=int, default=32, help="windows per forward pass")
    return parser


def run_headless(args: argparse.Namespace) -> int:
    from h2q_tui.run_setup import RunRequest, prepare_run
    from h2q_tui.training.trainer import Trainer
    from h2q_tui.training.writers import ConsolePrinter, JsonlWriter

    request = RunRequest(**{k: getattr(args, k) for k in RunRequest.__dataclass_fields__})
    prepared = prepare_run(request, progress=_download_progress())
    writer = JsonlWriter(prepared.run_dir)
    printer = ConsolePrinter(prepared.config.log.log_interval, prepared.config.train.max_steps)

    def emit(event) -> None:
        writer(event)
        printer(event)

    trainer = Trainer(
        prepared.config,
        prepared.corpus,
        prepared.run_dir,
        emit,
        preset=prepared.preset,
        resume_from=prepared.resume_from,
        tokenizer=prepared.tokenizer,
    )
    print(f"run dir: {prepared.run_dir}", flush=True)

    def on_sigint(signum, frame) -> None:
        trainer.stop_requested = "interrupted"
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        reason = trainer.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        writer.close()
    if reason == "interrupted":
        return EXIT_INTERRUPTED
    return 1 if reason == "nan" else EXIT_OK


def run_dashboard(args: argparse.Namespace) -> int:
    from h2q_tui.app import make_app
    from h2q_tui.app.engine_link import LiveEngine
    from h2q_tui.run_setup import RunRequest, prepare_run

    request = RunRequest(**{k: getattr(args, k) for k in RunRequest.__dataclass_fields__})
    engine = LiveEngine(prepare_run(request, progress=_download_progress()))
    result = make_app(engine, autostart=args.autostart).run()
    return result or EXIT_OK


def run_attach(argv: list[str]) -> int:
    from h2q_tui.app import make_app

    parser = _Parser(
        prog="h2q-tui attach", description="The dashboard on runs other processes are writing."
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run dirs holding metrics.jsonl")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"run dir not found: {run_dir}")
    return make_app(attach=args.run_dirs).run() or EXIT_OK


def run_eval(argv: list[str]) -> int:
    import torch

    from h2q_tui.data.tokenizer import BpeTokenizer
    from h2q_tui.models import count_parameters
    from h2q_tui.training import checkpoint
    from h2q_tui.training.evaluate import heldout_cross_entropy
    from h2q_tui.training.events import bits_per_byte

    args = eval_parser().parse_args(argv)
    info = checkpoint.read_info(args.checkpoint)
    model = checkpoint.load_model_from(info)
    path = Path(args.data)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    raw = path.read_bytes()
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    unit, bytes_per_token = "byte", 1.0
    tokenizer_file = info.weights.with_name("tokenizer.json")
    if tokenizer_file.is_file():  # a BPE model: bits per byte = bits per token / bytes per token
        data = BpeTokenizer(tokenizer_file).encode(raw)
        unit, bytes_per_token = "token", len(raw) / max(1, data.numel())
    context = info.config.model.context
    if data.numel() < context + 1:
        raise UserError(
            f"data file {path} has {data.numel()} {unit}s; evaluation needs at least {context + 1}"
        )
    max_bytes = args.windows * context + 1 if args.windows > 0 else None
    windows = (min(data.numel(), max_bytes or data.numel()) - 1) // context
    print(
        f"checkpoint {info.weights} | step {info.step} | {info.config.model.family} | "
        f"{count_parameters(model):,} parameters"
    )
    print(f"data {path} | {len(raw):,} bytes | {windows:,} windows of {context} {unit}s")
    nats = heldout_cross_entropy(
        model, data, context, torch.device("cpu"), max_bytes, batch=args.batch
    )
    bpb = bits_per_byte(nats) / bytes_per_token
    print(f"cross-entropy {nats:.4f} nats/{unit} | {bpb:.4f} bits/byte")
    print(f"bpb={bpb:.4f}")
    return EXIT_OK


def _download_progress():
    """A stderr progress line for named-corpus downloads."""

    def report(done: int, total: int | None) -> None:
        share = f" {100 * done / total:5.1f}%" if total else ""
        end = "\n" if total and done >= total else ""
        print(f"\rdownloading {done / 1e6:7.2f} MB{share}", end=end, file=sys.stderr, flush=True)

    return report


SUBCOMMANDS = {"eval": run_eval, "attach": run_attach}


def dispatch(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = main_parser().parse_args(argv)
    if args.no_ui:
        return run_headless(args)
    return run_dashboard(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``h2q-tui`` script."""
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
