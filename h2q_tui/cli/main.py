"""The ``h2q-tui`` command: the dashboard (or ``--no-ui`` headless training) without a
subcommand, else the subcommand named in :data:`SUBCOMMANDS`.

User errors exit 2 with one line on stderr; Ctrl-C during training saves and exits 130.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from h2q_tui.cli import train
from h2q_tui.cli.parser import main_parser
from h2q_tui.errors import UserError
from h2q_tui.system.openmp import prefer_passive_waiting

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class Subcommand(NamedTuple):
    """A subcommand: the module whose ``main(argv) -> int`` runs it, and its line in --help."""

    module: str
    usage: str
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "eval": Subcommand(
        "h2q_tui.cli.eval",
        "CHECKPOINT --data FILE",
        "cross-entropy of a checkpoint on a file (last line bpb=…)",
    ),
    "attach": Subcommand(
        "h2q_tui.cli.attach",
        "RUN_DIR [RUN_DIR ...]",
        "the dashboard on runs other processes write",
    ),
    "generate": Subcommand(
        "h2q_tui.cli.generate",
        "CHECKPOINT --prompt TEXT",
        "stream a continuation (sample/steer/lookahead/flow)",
    ),
    "steer-eval": Subcommand(
        "h2q_tui.cli.steer_eval",
        "CHECKPOINT --word W",
        "measure what steering does, per strength",
    ),
    "crystallize": Subcommand(
        "h2q_tui.cli.crystallize",
        "CHECKPOINT --method M",
        "compress a checkpoint, measure the cost",
    ),
    "export": Subcommand(
        "h2q_tui.cli.export",
        "gguf CHECKPOINT --out FILE",
        "a GPT as a llama.cpp GGUF file (f32/f16/q8_0/q4_0)",
    ),
    "hotstart": Subcommand(
        "h2q_tui.cli.hotstart",
        "CHECKPOINT [--cold]",
        "time load → first token, by phase, fresh and warm",
    ),
    "presets": Subcommand(
        "h2q_tui.cli.presets",
        "",
        "list the bundled presets with their parameter counts",
    ),
    "serve": Subcommand(
        "h2q_tui.cli.serve",
        "CHECKPOINT_OR_RUN_DIR ...",
        "serve models through the Ollama and OpenAI-compatible APIs",
    ),
    "ollama": Subcommand(
        "h2q_tui.cli.ollama",
        "list|pull|generate ...",
        "talk to an Ollama server ($OLLAMA_HOST)",
    ),
    "web": Subcommand(
        "h2q_tui.cli.web",
        "[RUN_DIR ...] [--port 8000]",
        "the dashboard in a browser (attach, textual-serve)",
    ),
    "torchrun": Subcommand(
        "h2q_tui.cli.torchrun",
        "[TORCHRUN ARGS] -m h2q_tui --no-ui ...",
        "torchrun with a clean Ctrl-C (130)",
    ),
}


def subcommands_epilog() -> str:
    """The main --help's list of subcommands (each has its own --help)."""
    lines = ["subcommands (h2q-tui SUBCOMMAND --help for each):"]
    for name, command in SUBCOMMANDS.items():
        lines.append(f"  {f'{name} {command.usage}'.strip():<42} {command.summary}")
    return "\n".join(lines)


def dispatch(argv: list[str]) -> int:
    """Run the subcommand ``argv`` names, else train (headless or in the dashboard)."""
    if argv and argv[0] in SUBCOMMANDS:
        # imported only when it runs: start-up time (most subcommands load torch)
        module = importlib.import_module(SUBCOMMANDS[argv[0]].module)
        return module.main(argv[1:])
    args = main_parser(subcommands_epilog()).parse_args(argv)
    if args.threads is not None:  # --threads N is --set train.threads=N (checked there)
        args.overrides.append(f"train.threads={args.threads}")
    if args.no_ui:
        return train.run_headless(args)
    from h2q_tui.training.distributed import launched_by_torchrun  # start-up time: torch

    if launched_by_torchrun():
        raise UserError(
            "under torchrun the trainer runs headless: add --no-ui (watch it with h2q-tui attach RUN_DIR)"
        )
    return train.run_dashboard(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``h2q-tui`` script."""
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
