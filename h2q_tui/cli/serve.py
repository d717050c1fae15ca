"""``h2q-tui serve`` and ``h2q-tui ollama list|pull|generate``.

Bad input is one line on stderr and exit 2 (``h2q_tui.cli.Parser`` and UserError), so is a
server that cannot be reached or answers with an error.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from h2q_tui.cli.main import Parser, add_device_flag
from h2q_tui.errors import UserError
from h2q_tui.ollama import protocol
from h2q_tui.system import net

# ----------------------------------------------------------------------------- serve
# uvicorn (loop, http) per --stack. Through the event loop, every streamed token wakes the
# loop thread, which holds the GIL while the decoder wants it; "direct" lets the generation
# thread write each token's chunk to the socket itself (h2q_tui/ollama/direct.py). Measured
# side by side by benchmarks/serve.py --stacks direct,uvloop,asyncio.
STACKS = {
    "direct": ("uvloop", "httptools"),
    "uvloop": ("uvloop", "httptools"),
    "asyncio": ("asyncio", "h11"),
}


def serve_parser() -> Parser:
    parser = Parser(
        prog="h2q-tui serve",
        description="Serve checkpoints, run dirs and crystallized folders through the Ollama "
        "API, so any Ollama client (the ollama CLI's API, the official Python package, curl) "
        "works with them. A run dir is NAME:latest and each of its crystallized folders "
        "NAME:METHOD. There is no authentication: it binds 127.0.0.1 unless --host says "
        "otherwise.",
    )
    parser.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT_OR_RUN_DIR", help="what to serve"
    )
    parser.add_argument("--host", default=protocol.DEFAULT_HOST, help="address to bind")
    parser.add_argument("--port", type=int, default=protocol.DEFAULT_PORT, help="port to bind")
    parser.add_argument(
        "--keep-alive",
        default="5m",
        help="how long a model stays loaded after its last request (a request's keep_alive "
        "overrides it; -1: forever, 0: unload at once)",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="serve each run dir's newest checkpoint: when training saves a new one, the "
        "next request loads it (between requests, never during one)",
    )
    parser.add_argument(
        "--queue", type=int, default=32, help="requests that may wait for one model (then 503)"
    )
    parser.add_argument(
        "--max-predict",
        type=int,
        default=protocol.MAX_PREDICT,
        help="most tokens one request may ask for (num_predict -1 means this)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn)")
    parser.add_argument(
        "--stack",
        choices=sorted(STACKS),
        default="direct",
        help="how streamed tokens leave: direct = the generation thread writes each to the "
        "socket (uvloop + httptools; the default), uvloop = every token through uvicorn's "
        "event loop (uvloop + httptools), asyncio = through the loop on asyncio + h11 (pure "
        "Python). benchmarks/serve.py --stacks compares them",
    )
    add_device_flag(parser)
    return parser


def stack(name: str) -> tuple[str, Any, str]:
    """(uvicorn loop, uvicorn http, label) for --stack NAME; the asyncio stack, with a
    notice, where uvloop or httptools is missing."""
    loop, http = STACKS[name]
    try:
        if loop == "uvloop":
            import uvloop  # noqa: F401
        if name == "direct":
            from h2q_tui.ollama.direct import Protocol  # imports httptools

            return loop, Protocol, f"{loop} + {http}, tokens written by their thread"
        if http == "httptools":
            import httptools  # noqa: F401
    except ImportError as exc:
        print(
            f"h2q-tui serve: {exc.name} is not installed: using asyncio + h11 (slower streaming)",
            file=sys.stderr,
        )
        loop, http = STACKS["asyncio"]
    return loop, http, f"{loop} + {http}"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; UserError (one line) when it cannot be had."""
    return net.bind(host, port, holder="another Ollama or h2q-tui serve?")


def serve_main(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.queue < 0:
        raise UserError(f"--queue must be >= 0, got {args.queue}")
    if args.max_predict < 1:
        raise UserError(f"--max-predict must be >= 1, got {args.max_predict}")
    try:
        keep_alive = protocol.parse_duration(args.keep_alive)
    except ValueError as exc:
        raise UserError(f"--keep-alive: {exc}") from None

    import uvicorn

    from h2q_tui.ollama.models import Registry
    from h2q_tui.ollama.server import ServeConfig, make_app
    from h2q_tui.system import hardware
    from h2q_tui.system.openmp import wait_policy
    from h2q_tui.system.thread_choice import decoding_choice

    device = hardware.resolve_device(args.device)
    registry = Registry.discover(args.checkpoints, follow=args.follow, queue=args.queue)
    for warning in registry.warnings:
        print(f"h2q-tui serve: warning: {warning}", file=sys.stderr)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = protocol.parse_host(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    loop, http, label = stack(args.stack)
    config = ServeConfig(
        keep_alive=keep_alive, queue=args.queue, max_predict=args.max_predict, device=device
    )
    app = make_app(registry, config)
    print(
        f"h2q-tui serve: {len(registry.entries)} model(s) on {url} · keep-alive "
        f"{protocol.format_duration(keep_alive)} · {device} · {label}"
        + (" · --follow" if args.follow else ""),
        flush=True,
    )
    rows = [[e.name, e.family, e.describe or e.error] for e in registry.entries.values()]
    for line in aligned(rows):
        print(f"  {line}", flush=True)
    print(f"  decoding on {decoding_choice().describe()}; {wait_policy().describe()}", flush=True)
    if not net.is_loopback(args.host):
        print(
            f"h2q-tui serve: warning: --host {args.host} accepts connections from other "
            "machines and there is no authentication: anyone who can reach this port can use "
            "these models",
            file=sys.stderr,
            flush=True,
        )
    print(
        f'try: curl {url}/api/generate -d \'{{"model": "{next(iter(registry.entries))}", '
        '"prompt": "Once upon a time"}\'',
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop=loop,
            http=http,
            log_level="info" if args.access_log else "warning",
            access_log=args.access_log,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


# ----------------------------------------------------------------------------- ollama
def aligned(rows: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    """Rows of cells as lines whose columns line up however long a name is: each column as
    wide as its widest cell, two spaces apart; ``right``: the columns aligned right."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def ollama_parser() -> Parser:
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


def ollama_main(argv: list[str]) -> int:
    from h2q_tui.ollama.client import BridgeError, OllamaClient
    from h2q_tui.units import format_size

    args = ollama_parser().parse_args(argv)
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
