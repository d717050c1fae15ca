"""``h2q-tui web`` leaves no process behind: a tab's ``attach`` process ends when the tab
closes and when ``web`` ends in any way (Ctrl-C, SIGTERM, SIGHUP, SIGKILL), also when that
process's event loop is stuck and cannot hear textual-serve's ``quit``. A websocket client
plays the browser (textual-serve's own protocol); psutil checks the processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
from process_helpers import all_gone, family
from run_cli import ENV

from h2q_tui.app import signals
from h2q_tui.cli import web as command

GONE_S = 20  # generous: SIGTERM, a 3 s grace, then Python's exit on 2 busy cores
# `web` whose tabs run an attach dashboard that blocks its event loop on a redraw once it has
# drawn (and, where the app has one, once its signal handling is installed)
STUCK_WEB = textwrap.dedent(
    """
    import shlex, sys
    from h2q_tui.cli import web as command
    STUCK = (
        "import sys, time\\n"
        "from h2q_tui.app import shell as app\\n"
        "calls = []\\n"
        "original = app.H2QApp.redraw\\n"
        "def redraw(self, force=False):\\n"
        "    calls.append(1)\\n"
        "    if len(calls) >= 3 and getattr(self, 'lifeline', True) is not None:\\n"
        "        time.sleep(3600)\\n"
        "    return original(self, force)\\n"
        "app.H2QApp.redraw = redraw\\n"
        "from h2q_tui.cli.main import main\\n"
        "sys.exit(main(sys.argv[1:]))\\n"
    )
    def stuck_command(run_dirs):
        parts = [sys.executable, "-c", STUCK, "attach", *(str(d.resolve()) for d in run_dirs)]
        return "exec " + " ".join(shlex.quote(p) for p in parts)
    command.attach_command = stuck_command
    sys.exit(command.main(sys.argv[1:]))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"event":"step","step":1,"tokens":128,"time":0.1,"train_loss_nats":5.0}\n'
    )
    return run


def start_web(run: Path, stuck: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    entry = ["-c", STUCK_WEB] if stuck else ["-m", "h2q_tui", "web"]
    server = subprocess.Popen(
        [sys.executable, *entry, str(run), "--port", str(port)],
        cwd=run.parent,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, port
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "web did not start"
            time.sleep(0.2)


async def open_tab(port: int, session: aiohttp.ClientSession):
    """A tab whose dashboard has drawn its first screen (and, stuck, has had time to stick)."""
    tab = await session.ws_connect(f"http://127.0.0.1:{port}/ws?width=100&height=30")
    received = 0
    while received < 20_000:
        message = await tab.receive(timeout=120)
        assert message.type == aiohttp.WSMsgType.BINARY, message
        received += len(message.data)
    await asyncio.sleep(3)
    return tab


def tab_processes(server: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in family(server.pid) if p.pid != server.pid]


@pytest.mark.parametrize(
    "stuck",
    [pytest.param(False, id="quits", marks=pytest.mark.slow), pytest.param(True, id="stuck")],
)
def test_closing_a_tab_ends_its_process(run_dir, stuck):
    server, port = start_web(run_dir, stuck)
    apps: list[psutil.Process] = []
    try:

        async def visit() -> None:
            async with aiohttp.ClientSession() as session:
                tab = await open_tab(port, session)
                apps.extend(tab_processes(server))
                await tab.close()

        asyncio.run(visit())
        assert len(apps) == 1, apps
        assert all_gone(apps, GONE_S) == []
        assert server.poll() is None  # the server serves on
    finally:
        kill_all([*family(server.pid), *apps])


@pytest.mark.parametrize(
    ("signum", "stuck"),
    [
        pytest.param(signal.SIGKILL, True, id="SIGKILL-stuck", marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, True, id="SIGTERM-stuck", marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, False, id="SIGINT", marks=pytest.mark.slow),
        pytest.param(signal.SIGHUP, False, id="SIGHUP"),
    ],
)
def test_web_ending_ends_every_tab_process(run_dir, signum, stuck):
    server, port = start_web(run_dir, stuck)
    apps: list[psutil.Process] = []
    try:

        async def visit() -> None:
            async with aiohttp.ClientSession() as session:
                await open_tab(port, session)
                apps.extend(tab_processes(server))
                os.kill(server.pid, signum)

        asyncio.run(visit())
        assert len(apps) == 1, apps
        assert all_gone([psutil.Process(server.pid)], GONE_S) == []
        assert all_gone(apps, GONE_S) == []
    finally:
        kill_all([*family(server.pid), *apps])


def kill_all(processes: list[psutil.Process]) -> None:
    """Whatever a failed test left running (orphans included) goes."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def test_web_and_the_dashboard_agree_on_the_parent_variable():
    assert command.WEB_PARENT_ENV == signals.WEB_PARENT_ENV
