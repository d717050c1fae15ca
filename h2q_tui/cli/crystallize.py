"""The ``crystallize`` subcommand's flags (the logic is :mod:`h2q_tui.crystal.crystallize`, and
:mod:`h2q_tui.crystal.tensor_report` for ``--tensors-only``)."""

from __future__ import annotations

from h2q_tui.cli.parser import Parser, add_device_flag
from h2q_tui.cli.progress import WindowProgressBar
from h2q_tui.codecs.method import METHOD_HELP
from h2q_tui.crystal import crystallize, tensor_report
from h2q_tui.errors import UserError


def main(argv: list[str]) -> int:
    """``h2q-tui crystallize``: parse the flags, run the command (a progress bar on stderr)."""
    args = build_parser().parse_args(argv)
    request = crystallize.Request(
        checkpoint=args.checkpoint,
        method=args.method,
        data=args.data,
        out=args.out,
        json=args.json,
        keep=args.keep,
        windows=_windows(args.windows),
        batch=args.batch,
        device=args.device,
        calibrate=_calibrate(args.calibrate),
        details=args.details,
    )
    if args.tensors_only:
        tensor_report.run(request)
    else:
        crystallize.run(request, progress=_progress_bar)
    return 0


def build_parser() -> Parser:
    """The subcommand's flags."""
    parser = Parser(
        prog="h2q-tui crystallize",
        description="Compress a checkpoint (int8, int4, Kronecker rank, SVD, ...) into "
        "crystallized checkpoints every command loads, and measure each on held-out text "
        "beside the original; or, with --tensors-only, any safetensors file tensor by tensor.",
    )
    parser.add_argument(
        "checkpoint",
        help="checkpoint folder, model.safetensors or run dir (with --tensors-only: any "
        "safetensors file)",
    )
    parser.add_argument(
        "--method",
        required=True,
        help=f"comma-separated methods, or sweep (the standard ladder): {METHOD_HELP}",
    )
    parser.add_argument(
        "--data",
        help="held-out text to measure on (default: the last 5%% of the embedded corpus)",
    )
    parser.add_argument(
        "--out",
        help="folder for the crystallized checkpoints, one <method>/ each (default: RUN/crystal, "
        "or crystal/ beside the checkpoint folder)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="default: crystallize.json in --out (tensors-only: <file stem>.tensors.json here)",
    )
    parser.add_argument(
        "--keep",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="tensor-name globs left at full precision (repeatable)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        metavar="N",
        help="measure on the first N windows (N >= 1; left out: all)",
    )
    parser.add_argument("--batch", type=int, default=32, help="windows per forward pass")
    parser.add_argument(
        "--calibrate",
        type=int,
        metavar="BYTES",
        help="calibrate the +cal methods (e.g. int4-g32+cal; a sweep adds them) on the last "
        "BYTES bytes of the held-out data: int rounding that lowers each layer's output error on "
        "them (GPTQ-style error feedback, per row the best of it, weighted and plain rounding)",
    )
    parser.add_argument(
        "--details",
        action="store_true",
        help="also print the percentiles of Δp and KLD per method (always in the JSON)",
    )
    parser.add_argument(
        "--tensors-only",
        action="store_true",
        help="any safetensors file: per-tensor bytes and reconstruction error, no model",
    )
    add_device_flag(parser)
    return parser


def _progress_bar(label: str, windows: int, batch: int) -> WindowProgressBar:
    """A measuring pass's progress, drawn on stderr."""
    return WindowProgressBar(windows, batch, label=label)


def _windows(flag: int | None) -> int:
    """--windows as the request takes it (0: all); an explicit count below 1 is refused."""
    if flag is not None and flag < 1:
        raise UserError(f"--windows must be >= 1 (leave it out for all windows), got {flag}")
    return flag or 0


def _calibrate(flag: int | None) -> int:
    """--calibrate as the request takes it (0: none); an explicit count below 1 is refused."""
    if flag is not None and flag < 1:
        raise UserError(f"--calibrate must be at least 1 byte (leave it out: none), got {flag}")
    return flag or 0
