"""``h2q-tui serve CHECKPOINT_OR_RUN_DIR...``: checkpoints and run dirs through the Ollama API.

Bad input is one line on stderr and exit 2 (``h2q_tui.cli.parser.Parser`` and UserError).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from h2q_tui.cli.columns import aligned
from h2q_tui.cli.parser import Parser, add_dequantize_flag, add_device_flag
from h2q_tui.errors import UserError
from h2q_tui.ollama import protocol
from h2q_tui.system import net
from h2q_tui.system.openmp import wait_policy
from h2q_tui.system.thread_choice import decoding_choice

# uvicorn (loop, http) per --stack. Through the event loop, every streamed token wakes the
# loop thread, which holds the GIL while the decoder wants it; "direct" lets the generation
# thread write each token's chunk to the socket itself (h2q_tui/ollama/direct.py). Measured
# side by side by benchmarks/serve.py --stacks direct,uvloop,asyncio.
STACKS = {
    "direct": ("uvloop", "httptools"),
    "uvloop": ("uvloop", "httptools"),
    "asyncio": ("asyncio", "h11"),
}


def parser() -> Parser:
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
    parser.add_argument(
        "--registry",
        metavar="PATH",
        help="the JSON file keeping the names made by /api/create and /api/copy across "
        "restarts (default: h2q-serve-models.json in the first served folder; a read-only "
        "folder: names last until serve stops)",
    )
    parser.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder inside which /api/create and /api/swap may name checkpoints, besides "
        "the folders served (repeatable)",
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
    add_dequantize_flag(parser)
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


def checked(args) -> float | None:
    """The flags' refusals (UserError, one line); the keep-alive in seconds (None: forever)."""
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
    for root in args.allow_root:
        if not Path(root).is_dir():
            raise UserError(f"--allow-root: {root} is not a folder")
    if args.registry and not Path(args.registry).parent.is_dir():
        raise UserError(f"--registry: folder {Path(args.registry).parent} does not exist")
    return keep_alive


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    keep_alive = checked(args)
    # lazy: uvicorn and the models (torch) load once the flags are known to be good
    import uvicorn

    from h2q_tui.ollama import registry_file
    from h2q_tui.ollama.models import Registry
    from h2q_tui.ollama.server import ServeConfig, make_app
    from h2q_tui.system import hardware

    device = hardware.resolve_device(args.device)
    registry = Registry.discover(args.checkpoints, follow=args.follow, queue=args.queue)
    names = registry_file.attach(
        registry,
        registry_file.Roots.of(args.checkpoints, args.allow_root),
        Path(args.registry) if args.registry else registry_file.default_path(args.checkpoints),
        args.queue,
        args.max_predict,
    )
    for warning in registry.warnings:
        print(f"h2q-tui serve: warning: {warning}", file=sys.stderr)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = protocol.parse_host(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    loop, http, label = stack(args.stack)
    config = ServeConfig(
        keep_alive=keep_alive,
        queue=args.queue,
        max_predict=args.max_predict,
        device=device,
        dequantize=args.dequantize,
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
    print(f"  names made through the API: {names.path or 'in memory only'}", flush=True)
    print(f"  OpenAI-compatible clients: base_url {url}/v1", flush=True)
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
