"""``h2q-tui web``: the dashboard in a real headless Chromium while a ``--no-ui`` run writes
metrics; two screenshots that differ; closing the tab leaves no app process behind."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from browser import Browser, chromium_path
from run_cli import ENV, h2q

from h2q_tui.cli.web import attach_command, listed_runs
from h2q_tui.training.run_list import is_runs_folder

README_SHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "web.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def app_processes(server: subprocess.Popen) -> list[psutil.Process]:
    """The attach processes textual-serve started for browser tabs."""
    try:
        children = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "attach" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def responds(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(
    chromium_path() is None,
    reason="chromium is not installed (make test installs Debian's chromium with apt-get; "
    "without it this browser test cannot run)",
)
def test_the_browser_shows_the_live_run_and_closing_the_tab_ends_its_process(tmp_path):
    training = subprocess.Popen(
        [sys.executable, "-m", "h2q_tui", "--no-ui", "--preset", "tiny", "--max-steps",
         "100000", "--max-seconds", "120", "--run-dir", "run"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    port = free_port()
    server = None
    try:
        wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").is_file(), 60, "metrics.jsonl")
        server = subprocess.Popen(
            [sys.executable, "-m", "h2q_tui", "web", "run", "--port", str(port)],
            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: responds(port), 30, "the web server")
        shots = asyncio.run(two_screenshots(f"http://127.0.0.1:{port}/", tmp_path, server))
        first, second, open_apps, closed_ok = shots
        assert open_apps == 1, "one app process per tab"
        assert first != second, "the page did not change while the run trained"
        assert len(first) > 20_000  # a rendered dashboard, not a blank page
        assert closed_ok
        wait_for(lambda: not app_processes(server), 15, "the tab's app process to end")
        if os.environ.get("H2Q_WRITE_README_SHOT"):  # refresh the README's picture
            README_SHOT.parent.mkdir(parents=True, exist_ok=True)
            README_SHOT.write_bytes(second)
    finally:
        for process in (server, training):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()


async def two_screenshots(url: str, folder: Path, server: subprocess.Popen):
    async with Browser(width=1280, height=800) as browser:
        tab = await browser.open(url)
        state = "document.body.className"
        for _ in range(150):  # the app process starts and sends its first screen
            classes = await tab.evaluate(state) or ""
            if "-first-byte" in classes:
                break
            await asyncio.sleep(0.2)
        assert "-first-byte" in classes, f"the dashboard never drew (body: {classes!r})"
        await asyncio.sleep(3)
        first = await tab.screenshot(folder / "first.png")
        await asyncio.sleep(5)
        second = await tab.screenshot(folder / "second.png")
        classes = await tab.evaluate(state) or ""
        assert "-closed" not in classes, "the session ended: the app failed in the browser"
        open_apps = len(app_processes(server))
        await tab.close()
        return first, second, open_apps, True


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = h2q("web", "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "h2q-tui: error: run dir not found: nope"
    none = h2q("web", cwd=tmp_path)
    assert none.returncode == 2 and "no run to show" in none.stderr
    assert len(none.stderr.strip().splitlines()) == 1
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        busy = h2q("web", "run", "--port", str(port), cwd=tmp_path)
    assert busy.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
    bad = h2q("web", "run", "--port", "70000", cwd=tmp_path)
    assert bad.returncode == 2 and "--port must be in 1..65535" in bad.stderr


def test_each_tab_attaches_and_the_run_browser_is_the_default(tmp_path):
    for name, when in (("old", 100), ("new", 200)):
        (tmp_path / name).mkdir()
        log = tmp_path / name / "metrics.jsonl"
        log.write_text("")
        os.utime(log, (when, when))
    (tmp_path / "not-a-run").mkdir()
    assert listed_runs(tmp_path) == [tmp_path / "new", tmp_path / "old"]  # the browser's rows
    assert is_runs_folder(tmp_path)  # attach on it opens the browser
    command = attach_command([tmp_path])
    assert command.startswith("exec ") and " -m h2q_tui attach " in command
    assert "--no-ui" not in command  # a tab never trains
