"""``h2q-tui web [RUN_DIR...] [--host 127.0.0.1] [--port 8000]``: the dashboard in a browser.

textual-serve (aiohttp) serves a page with a terminal (xterm.js) and starts one app process
per browser tab. A tab must never start training of its own, so every tab runs
``h2q-tui attach`` on the run dirs given (or on the newest runs under ``runs/``): the same
ICU, System, Generate, Crystal and Ollama panes as the terminal, on runs that ``--no-ui``
processes write. Closing the tab asks the app to quit (textual-serve's ``quit`` message),
so no process is left behind.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from h2q_tui.cli import Parser
from h2q_tui.errors import UserError
from h2q_tui.system import net

DEFAULT_PORT = 8000
NEWEST = 4  # runs under runs/ attached when no run dir is given
METRICS = "metrics.jsonl"


def parser() -> Parser:
    p = Parser(
        prog="h2q-tui web",
        description="Serve the dashboard to a browser (textual-serve): each tab attaches to "
        "the run dirs given, or to the newest runs under runs/, and never trains by itself. "
        "There is no authentication: it binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("run_dirs", nargs="*", type=Path, help="run dirs to show (default: newest)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000)")
    p.add_argument(
        "--runs",
        type=Path,
        default=Path("runs"),
        help=f"without RUN_DIR: the {NEWEST} newest run dirs here (default runs/)",
    )
    return p


def newest_runs(root: Path, limit: int = NEWEST) -> list[Path]:
    """The run dirs under ``root`` with a metrics.jsonl, newest first (by its mtime)."""
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if (d / METRICS).is_file()]
    found.sort(key=lambda d: (d / METRICS).stat().st_mtime, reverse=True)
    return found[:limit]


def attach_command(run_dirs: list[Path]) -> str:
    """The shell command each browser tab runs: this Python, ``-m h2q_tui attach``."""
    parts = [sys.executable, "-m", "h2q_tui", "attach", *(str(d.resolve()) for d in run_dirs)]
    return "exec " + " ".join(shlex.quote(p) for p in parts)  # exec: no shell left behind


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    run_dirs = list(args.run_dirs)
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"run dir not found: {run_dir}")
    if not run_dirs:
        run_dirs = newest_runs(args.runs)
        if not run_dirs:
            raise UserError(
                f"no run to show: {args.runs}/ holds no run dir with {METRICS}; start one "
                "(h2q-tui --no-ui ...) or name a RUN_DIR"
            )
    try:
        from textual_serve.server import Server
    except ImportError:
        raise UserError("h2q-tui web needs textual-serve: pip install 'textual-serve'") from None
    net.bind(args.host, args.port, holder="another h2q-tui web?").close()  # in use: one line
    if not net.is_loopback(args.host):
        print(
            f"h2q-tui web: warning: --host {args.host} accepts connections from other machines "
            "and there is no authentication: anyone who can reach this port sees these runs",
            file=sys.stderr,
            flush=True,
        )
    names = ", ".join(str(d) for d in run_dirs)
    print(f"h2q-tui web: http://{args.host}:{args.port} · each tab attaches to {names}", flush=True)
    Server(attach_command(run_dirs), host=args.host, port=args.port, title="h2q-tui").serve()
    return 0
