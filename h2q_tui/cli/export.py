"""The ``export`` subcommand's flags (the logic is :mod:`h2q_tui.export.gguf_export`)."""

from __future__ import annotations

from h2q_tui.cli.parser import Parser
from h2q_tui.export import GGUF_TYPES
from h2q_tui.units import format_size

FORMATS = ("gguf",)


def parser() -> Parser:
    p = Parser(
        prog="h2q-tui export",
        description="Write a GPT checkpoint (or a crystallized folder of one, decoded to floats) "
        "as a llama.cpp GGUF file (architecture gpt2, the 256 bytes as its vocabulary) for "
        "llama.cpp and the programs built on it. Other families have no llama.cpp architecture.",
    )
    p.add_argument("format", choices=FORMATS, help="the file format: gguf")
    p.add_argument(
        "checkpoint", help="checkpoint folder, crystallized folder, model.safetensors or run dir"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the .gguf file to write")
    p.add_argument(
        "--type",
        choices=GGUF_TYPES,
        default="f32",
        help="type of the 2-D weights; vectors and the position embedding stay F32, and rows "
        "whose length is not a multiple of 32 stay F16 under q8_0/q4_0; under q4_0 the output "
        "matrix is kept at Q8_0, as llama.cpp's quantizer does",
    )
    return p


def main(argv: list[str]) -> int:
    """``h2q-tui export gguf CHECKPOINT --out FILE [--type T]``: one summary line on stdout."""
    args = parser().parse_args(argv)
    # loaded once the flags are read: --help stays free of torch and numpy
    from h2q_tui.export.gguf_export import export_gguf

    done = export_gguf(args.checkpoint, args.out, args.type)
    counts: dict[str, int] = {}
    for name in done.types.values():
        counts[name] = counts.get(name, 0) + 1
    mix = ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    print(f"wrote {done.path} | gguf gpt2 {args.type} | {format_size(done.bytes)} | tensors: {mix}")
    if done.kept_float:
        print(f"kept at F16 (rows not a multiple of 32): {', '.join(done.kept_float)}")
    return 0
