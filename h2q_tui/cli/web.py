"""``h2q-tui web [RUN_DIR...] [--host 127.0.0.1] [--port 8000]``: the dashboard in a browser.

textual-serve (aiohttp) serves a page with a terminal (xterm.js) and starts one app process
per browser tab. A tab must never start training of its own, so every tab runs
``h2q-tui attach`` on the run dirs given, or on ``runs/``: the run browser, which lists the
runs there (the listing of h2q_tui.training.run_list) to open one or several. The same ICU,
System, Generate, Crystal and Ollama panes as the terminal, on runs that ``--no-ui``
processes write. Closing the tab asks the app to quit (textual-serve's ``quit`` message);
one that has not ended a few seconds later is terminated, then killed. When ``web`` ends, by
Ctrl-C, SIGTERM, SIGHUP or even SIGKILL, every tab's process ends too: it gets SIGTERM when
its parent dies (``PR_SET_PDEATHSIG``, set by ``attach`` when WEB_PARENT_ENV names its
parent) and sees its stdin pipe close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import psutil

from h2q_tui.cli.parser import Parser
from h2q_tui.errors import UserError
from h2q_tui.system import net
from h2q_tui.training.run_list import RunScan

DEFAULT_PORT = 8000
# each tab's environment names this server's pid (h2q_tui.app.signals.end_with_web_parent;
# the dashboard package is not imported here: it loads torch)
WEB_PARENT_ENV = "H2Q_TUI_WEB_PARENT"
QUIT_GRACE_S = 3.0  # a closed tab's process has this long to quit, then as long after SIGTERM


def parser() -> Parser:
    p = Parser(
        prog="h2q-tui web",
        description="Serve the dashboard to a browser (textual-serve): each tab attaches to "
        "the run dirs given, or opens the run browser on runs/, and never trains by itself. "
        "There is no authentication: it binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument(
        "run_dirs", nargs="*", type=Path, help="run dirs to show (default: the browser of --runs)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000)")
    p.add_argument(
        "--runs",
        type=Path,
        default=Path("runs"),
        help="without RUN_DIR: each tab lists the runs here to pick from (default runs/)",
    )
    return p


def listed_runs(root: Path) -> list[Path]:
    """The runs a tab's browser lists under ``root``, the most recently changed first."""
    return [row.path for row in RunScan(root).rows()]


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
        if not listed_runs(args.runs):
            raise UserError(
                f"no run to show: {args.runs}/ holds no run dir; start one "
                "(h2q-tui --no-ui ...) or name a RUN_DIR"
            )
        run_dirs = [args.runs]  # a folder of runs: each tab opens the run browser on it
    try:
        # lazy: textual-serve (~0.3 s) loads once the flags are read; missing, it is one line
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
    shows = f"opens the run browser on {names}" if not args.run_dirs else f"attaches to {names}"
    print(f"h2q-tui web: http://{args.host}:{args.port} · each tab {shows}", flush=True)
    os.environ[WEB_PARENT_ENV] = str(os.getpid())  # tabs inherit it: see end_with_web_parent
    server = Server(attach_command(run_dirs), host=args.host, port=args.port, title="h2q-tui")
    with tab_processes_ended():
        server.serve()
    return 0


@contextlib.contextmanager
def tab_processes_ended():
    """While serving: a closed tab's process that does not quit is terminated, SIGHUP stops
    the server as SIGTERM does, and on the way out every tab process still running ends."""
    from textual_serve import server as serve_module  # lazy: ~0.3 s, found by main already

    tabs: set[int] = set()

    class TabProcess(serve_module.AppService):
        async def start(self, width: int, height: int) -> None:
            await super().start(width, height)
            tabs.add(self._process.pid)

        async def stop(self) -> None:
            process, self._process = self._process, None
            if process is None:  # stopped already (textual-serve calls it twice)
                return
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(super().stop(), QUIT_GRACE_S)  # the app's own quit
            self._task = None
            for send in (process.terminate, process.kill):
                if process.returncode is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    send()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(process.wait(), QUIT_GRACE_S)
            tabs.discard(process.pid)

    original = serve_module.AppService
    serve_module.AppService = TabProcess  # the server makes one per tab by this name
    previous = signal.signal(signal.SIGHUP, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    try:
        yield
    finally:
        serve_module.AppService = original
        signal.signal(signal.SIGHUP, previous)
        for pid in tabs:
            end_process(pid)


def end_process(pid: int) -> None:
    """SIGTERM, then SIGKILL if ``pid`` still runs QUIT_GRACE_S later (without reaping it:
    asyncio's child watcher does that)."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + QUIT_GRACE_S
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.1)
