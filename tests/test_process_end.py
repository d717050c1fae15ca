"""Every way out of the dashboard ends the process promptly with the run saved and its lock
free: a closed terminal (with or without the SIGHUP a controlling terminal sends), Ctrl-C,
SIGTERM, and a UI that fails with an exception. The real CLI runs in a pseudo-terminal."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from process_helpers import Terminal, all_gone, family, last_record, lock_is_free
from test_bad_input import TEXT

TINY = ["--preset", "tiny", "--data", "data.txt", "--run-dir", "run", "--autostart"]
DASHBOARD = ["-m", "h2q_tui", *TINY]
GONE_S = 30  # generous: the step in flight, a tiny checkpoint, then Python's exit on 2 busy cores
# the dashboard with a redraw that raises once training has logged a step: any UI failure
FAILING_UI = [
    "-c",
    "import sys\n"
    "from h2q_tui.app import shell as app\n"
    "def redraw(self, force=False):\n"
    "    if any(h.last_step for h in self.runs.histories.values()):\n"
    "        raise RuntimeError('injected UI failure')\n"
    "app.H2QApp.redraw = redraw\n"
    "from h2q_tui.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n",
    *TINY,
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "data.txt").write_bytes(TEXT)
    return tmp_path


# a final held-out eval of tens of seconds: the stop path must save first and not wait on it
SLOW_FINAL_EVAL = ["--heldout", "held.txt", "--set", "eval.heldout_bytes=1000000"]
SLOW_FINAL_EVAL += ["--set", "eval.heldout_interval=100000"]


def assert_ended(terminal: Terminal, run: Path, code: int, reason: str) -> None:
    """Exit ``code`` within GONE_S, no process of its family left, run saved, lock free."""
    members = family(terminal.proc.pid)
    try:
        exited = terminal.wait_exit(GONE_S)
        assert exited == code, f"exit {exited}, not {code}: {terminal.screen[-300:]!r}"
        assert all_gone(members, 5) == []
    finally:
        terminal.kill()
    finished = last_record(run)
    assert finished["event"] == "run_finished" and finished["reason"] == reason, finished
    checkpoint = [r for r in (run / "metrics.jsonl").read_text().splitlines() if "checkpoint" in r]
    assert checkpoint, "no checkpoint was saved"
    assert lock_is_free(run)


@pytest.mark.parametrize(
    "controlling",
    [True, pytest.param(False, marks=pytest.mark.slow)],  # no-sighup: the same path, ~11 s
    ids=["sighup", "no-sighup"],
)
def test_closing_the_terminal_saves_and_ends_the_process_with_129(workdir, controlling):
    """tmux kill-session, a closed window or a dropped SSH session, while a long final eval
    is due. Without a controlling terminal no SIGHUP comes: the closed pty alone must end it."""
    (workdir / "held.txt").write_bytes(TEXT * 50)
    terminal = Terminal([*DASHBOARD, *SLOW_FINAL_EVAL], workdir, controlling=controlling)
    terminal.wait_for_steps(workdir / "run" / "metrics.jsonl", 3)
    terminal.close()
    assert_ended(terminal, workdir / "run", 129, "hangup")


def test_ctrl_c_in_the_dashboard_saves_and_exits_130(workdir):
    terminal = Terminal(DASHBOARD, workdir)
    terminal.wait_for_steps(workdir / "run" / "metrics.jsonl", 3)
    terminal.type(b"\x03")
    assert_ended(terminal, workdir / "run", 130, "interrupted")


@pytest.mark.slow  # a regression guard (this one held before): ~20 s on 2 busy cores
def test_sigterm_to_the_dashboard_saves_and_exits_143(workdir):
    terminal = Terminal(DASHBOARD, workdir)
    terminal.wait_for_steps(workdir / "run" / "metrics.jsonl", 3)
    terminal.proc.send_signal(signal.SIGTERM)
    assert_ended(terminal, workdir / "run", 143, "terminated")


def test_a_failing_ui_stops_training_saves_and_exits_1(workdir):
    terminal = Terminal(FAILING_UI, workdir)
    terminal.wait_for_steps(workdir / "run" / "metrics.jsonl", 1)
    assert_ended(terminal, workdir / "run", 1, "stopped")
    assert b"injected UI failure" in terminal.screen  # the traceback is shown
    assert b"\x1b[?1049l" in terminal.screen  # and the terminal is back from the alt screen
