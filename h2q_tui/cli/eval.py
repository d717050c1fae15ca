"""``h2q-tui eval CHECKPOINT --data FILE``: cross-entropy of a checkpoint on a file."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from h2q_tui import checkpoints
from h2q_tui.cli.decoding import say_note
from h2q_tui.cli.parser import Parser, add_dequantize_flag, add_device_flag
from h2q_tui.cli.progress import WindowProgressBar
from h2q_tui.errors import UserError
from h2q_tui.models import count_parameters
from h2q_tui.system import hardware
from h2q_tui.system.thread_choice import BatchPacer
from h2q_tui.training.evaluate import heldout_cross_entropy
from h2q_tui.training.events import bits_per_byte


def parser() -> Parser:
    p = Parser(
        prog="h2q-tui eval",
        description="Cross-entropy of a checkpoint on a file, in nats and bits per byte.",
    )
    p.add_argument(
        "checkpoint", help="checkpoint folder, model.safetensors file, or run dir (its latest)"
    )
    p.add_argument("--data", required=True, help="file to evaluate on (any bytes)")
    p.add_argument(
        "--windows",
        type=int,
        metavar="N",
        help="evaluate only the first N context windows (N >= 1; left out: the whole file)",
    )
    p.add_argument("--batch", type=int, default=32, help="windows per forward pass")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default 0 = auto: the faster of 1 and all cores, timed on the "
        "first batches)",
    )
    add_device_flag(p)
    add_dequantize_flag(p)
    return p


def _check(args: argparse.Namespace) -> None:
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


def _read_tokens(path: Path, info) -> tuple[bytes, torch.Tensor, str, float]:
    """(raw bytes, tokens, unit, bytes per token) of the file, as the checkpoint's model reads it."""
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
    return raw, data, unit, bytes_per_token


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    _check(args)
    device = hardware.resolve_device(args.device)
    info = checkpoints.read_info(args.checkpoint)
    model = checkpoints.load_checkpoint(info, device=device, dequantize=args.dequantize).model
    say_note(info, model)
    path = Path(args.data)
    raw, data, unit, bytes_per_token = _read_tokens(path, info)
    context = info.config.model.context
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
    return 0
