"""``h2q-tui ollama list|pull|generate``: talk to an Ollama server (or ``h2q-tui serve``).

Bad input is one line on stderr and exit 2, so is a server that cannot be reached or answers
with an error.
"""

from __future__ import annotations

import sys

from h2q_tui.cli.columns import aligned
from h2q_tui.cli.parser import Parser
from h2q_tui.errors import UserError
from h2q_tui.ollama.client import BridgeError, OllamaClient
from h2q_tui.units import format_size


def parser() -> Parser:
    parser = Parser(
        prog="h2q-tui ollama",
        description="Talk to an Ollama server (or h2q-tui serve): OLLAMA_HOST is read as the "
        "official client reads it (default http://127.0.0.1:11434).",
    )
    parser.add_argument("--host", help="server (default: $OLLAMA_HOST, else 127.0.0.1:11434)")
    commands = parser.add_subparsers(dest="command", metavar="list|pull|generate", required=True)
    commands.add_parser("list", help="the server's models", description="The server's models.")
    pull = commands.add_parser("pull", help="pull a model (progress on stderr)")
    pull.add_argument("model")
    gen = commands.add_parser(
        "generate",
        help="stream a completion to stdout (statistics on stderr)",
        description="Stream a completion to stdout; tokens/s, first-token latency, the "
        "server's load_duration (hot start) and done_reason on stderr.",
    )
    gen.add_argument("model")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--chat", action="store_true", help="send the prompt as a chat message")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--repeat-penalty", type=float)
    gen.add_argument("--num-predict", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=[])
    gen.add_argument("--steer", help="h2q-tui serve only: steer towards this word")
    gen.add_argument("--strength", type=float, help="steering strength (with --steer)")
    gen.add_argument("--layer", type=int, help="steered block (with --steer)")
    gen.add_argument("--keep-alive", help="how long the server keeps the model loaded")
    return parser


def _options(args) -> dict:
    names = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repeat_penalty": args.repeat_penalty,
        "num_predict": args.num_predict,
        "seed": args.seed,
        "steer": args.steer,
        "strength": args.strength,
        "layer": args.layer,
    }
    options = {k: v for k, v in names.items() if v is not None}
    if args.stop:
        options["stop"] = args.stop
    return options


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        client = OllamaClient(args.host)
    except ValueError as exc:
        raise UserError(f"bad server address: {exc}") from None
    with client:
        try:
            client.probe()
            if args.command == "list":
                rows = [["NAME", "SIZE", "FAMILY", "PARAMS", "QUANT"]]
                for m in client.list():
                    rows.append(
                        [
                            m.name,
                            format_size(m.size, binary=False),
                            str(m.details.get("family", "")),
                            str(m.details.get("parameter_size", "")),
                            str(m.details.get("quantization_level", "")),
                        ]
                    )
                print("\n".join(aligned(rows, right=(1, 3))))
                return 0
            if args.command == "pull":
                for progress in client.pull(args.model):
                    print(progress.line(), file=sys.stderr, flush=True)
                return 0
            return _generate(client, args)
        except BridgeError as exc:
            raise UserError(str(exc)) from None


def _generate(client, args) -> int:
    options = _options(args)
    if args.chat:
        stream = client.chat(
            args.model, [{"role": "user", "content": args.prompt}], options, args.keep_alive
        )
    else:
        stream = client.generate(args.model, args.prompt, options, args.keep_alive)
    try:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.cancel()  # closing the stream ends the server's generation
        raise
    print()
    print(f"{client.base_url} · {args.model} · {stream.result.stats_line()}", file=sys.stderr)
    return 0
