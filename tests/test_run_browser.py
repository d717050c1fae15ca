"""The run browser: the listing of a folder of runs (live, finished, crashed, malformed), its
filter, multi-select and Enter opening the runs overlaid, new runs appearing, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_engine import scripted_records
from pilot_helpers import screen_lines, wait_until
from run_cli import ENV, h2q
from textual.pilot import Pilot
from textual.widgets import DataTable, TabbedContent

from h2q_tui.app.keys import BROWSER_KEYS
from h2q_tui.app.panes.icu import IcuPane
from h2q_tui.app.run_browser import RunBrowserScreen, age_text
from h2q_tui.app.screens import HelpScreen
from h2q_tui.app.shell import H2QApp, make_app
from h2q_tui.checkpoints import run_lock
from h2q_tui.training import run_files, run_list
from h2q_tui.training.run_list import (
    CRASHED,
    FINISHED,
    LIVE,
    MALFORMED,
    RunScan,
    lock_holder,
    matches,
)
from h2q_tui.training.writers import METRICS_FILE


def write_run(root: Path, name: str, records: list[dict], tail: str = "") -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (run_dir / METRICS_FILE).write_text(lines + tail, encoding="utf-8")
    return run_dir


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def unfinished(steps: int) -> list[dict]:
    """A run's records up to ``steps``, with no run_finished."""
    return scripted_records(steps=steps)


def finished(steps: int) -> list[dict]:
    """A run's records up to ``steps`` and its run_finished."""
    end = {"event": "run_finished", "step": steps, "time": 9.0, "reason": "max_steps"}
    return [*scripted_records(steps=steps), end]


@pytest.fixture
def runs(tmp_path: Path):
    """A folder of runs, one of each status; the live one's lock is held by this process."""
    root = tmp_path / "runs"
    write_run(root, "done", finished(40))
    live = write_run(root, "live", unfinished(20))
    run_lock.acquire(live)
    crashed = write_run(root, "crashed", unfinished(10))
    (crashed / run_lock.LOCK_FILE).write_text(f"{dead_pid()}\n")
    write_run(root, "garbage", [], tail='not json\n{"half": \n')
    (root / "no-log").mkdir()
    (root / "no-log" / "run.json").write_text("{}")
    (root / "dir-log" / METRICS_FILE).mkdir(parents=True)  # not a file: never opened
    (root / "not-a-run").mkdir()  # no run file: not listed
    (root / "notes.txt").write_text("a file beside the runs")
    yield root
    run_lock.release(live)


def test_the_listing_tells_live_finished_crashed_and_malformed(runs):
    rows = {row.name: row for row in RunScan(runs).rows()}
    assert set(rows) == {"done", "live", "crashed", "garbage", "no-log", "dir-log"}
    assert (rows["done"].status, rows["done"].problem) == (FINISHED, "max_steps")
    assert rows["done"].steps == 40 and rows["done"].best_bpb is not None
    assert rows["done"].preset == "tiny"
    assert rows["live"].status == LIVE and rows["live"].steps == 20
    assert lock_holder(runs / "live") == os.getpid()
    assert rows["crashed"].status == CRASHED and lock_holder(runs / "crashed") is None
    assert "no process holds its lock" in rows["crashed"].problem
    assert rows["garbage"].status == MALFORMED
    assert rows["garbage"].problem == "no readable record (2 unparsable lines)"
    assert (rows["no-log"].status, rows["no-log"].problem) == (MALFORMED, "no metrics.jsonl")
    assert rows["dir-log"].status == MALFORMED and "is a directory" in rows["dir-log"].problem


def test_the_listing_knows_the_run_files_by_their_names():
    assert (run_list.LOCK_FILE, run_list.RUN_FILE) == (run_lock.LOCK_FILE, run_files.RUN_FILE)


def test_best_heldout_bpb_is_the_lowest_heldout_eval(tmp_path):
    records = scripted_records(steps=40)
    heldout = [r["val_bpb"] for r in records if r["event"] == "eval" and r["split"] == "heldout"]
    write_run(tmp_path, "run", records)
    (row,) = RunScan(tmp_path).rows()
    assert len(heldout) >= 2 and row.best_bpb == min(heldout)


def test_a_failed_run_is_crashed_and_a_resumed_one_goes_on(tmp_path):
    failed = {"event": "run_failed", "step": 3, "message": "CUDA out of memory"}
    write_run(tmp_path, "failed", [*unfinished(3), failed])
    resumed = write_run(tmp_path, "resumed", [*finished(20), *unfinished(5)])
    run_lock.acquire(resumed)
    try:
        rows = {row.name: row for row in RunScan(tmp_path).rows()}
    finally:
        run_lock.release(resumed)
    assert rows["failed"].status == CRASHED
    assert rows["failed"].problem == "run_failed: CUDA out of memory"
    assert rows["resumed"].status == LIVE and rows["resumed"].steps == 20


def test_a_pid_reused_after_the_lock_was_written_is_not_live(tmp_path):
    run_dir = write_run(tmp_path, "old", unfinished(5))
    lock = run_dir / run_lock.LOCK_FILE
    lock.write_text(f"{os.getpid()}\n")  # this process started long after that lock
    os.utime(lock, (1_000_000, 1_000_000))
    assert lock_holder(run_dir) is None
    lock.write_text("not a pid\n")
    assert lock_holder(run_dir) is None
    lock.unlink()
    os.mkfifo(lock)  # never opened: reading it would wait for a writer
    assert lock_holder(run_dir) is None
    (row,) = RunScan(tmp_path).rows()
    assert row.status == CRASHED


def test_new_runs_appear_and_appended_lines_are_read(tmp_path):
    scan = RunScan(tmp_path)
    assert scan.rows() == []
    run_dir = write_run(tmp_path, "a", unfinished(5))
    assert [row.steps for row in scan.rows()] == [5]
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as log:
        step = {"event": "step", "step": 9, "tokens": 9 * 128, "time": 9.0, "train_loss_nats": 2.5}
        log.write(json.dumps(step) + "\n")
    write_run(tmp_path, "b", unfinished(2))
    os.utime(run_dir / METRICS_FILE, (1, 1))  # a is now the older one
    rows = scan.rows()
    assert [(row.name, row.steps) for row in rows] == [("b", 2), ("a", 9)]


def test_the_filter_is_a_substring_of_name_or_preset(runs):
    rows = RunScan(runs).rows()
    assert [row.name for row in rows if matches(row, "LOG")] == ["dir-log", "no-log"]
    assert {row.name for row in rows if matches(row, "tin")} == {"done", "live", "crashed"}
    assert age_text(42) == "42 s" and age_text(3600 * 5 + 1) == "5 h"
    assert age_text(-3) == "0 s" and age_text(86400 * 3) == "3 d"


# ---------------------------------------------------------------------------- the screen
def browser_app(root: Path) -> H2QApp:
    app = make_app(browse=root, monitor=False, refresh_s=0.05)
    app.browser.scan_s = 0.1  # type: ignore[union-attr]
    return app


def browser(app: H2QApp) -> RunBrowserScreen:
    assert isinstance(app.screen, RunBrowserScreen)
    return app.screen


def table_names(app: H2QApp) -> list[str]:
    table = browser(app).query_one(DataTable)
    return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]


async def listed(pilot: Pilot) -> None:
    app: H2QApp = pilot.app  # type: ignore[assignment]
    await wait_until(pilot, lambda: browser(app).scans > 0 and browser(app).rows, "the listing")


async def test_typing_filters_and_esc_clears(runs):
    app = browser_app(runs)
    async with app.run_test(size=(120, 30)) as pilot:
        await listed(pilot)
        assert len(table_names(app)) == 6
        await pilot.press("l", "o", "g")
        assert sorted(table_names(app)) == ["dir-log", "no-log"]
        assert "filter: log" in "\n".join(screen_lines(app))
        await pilot.press("backspace", "backspace", "backspace", "t", "1", "q")  # q is typed
        assert table_names(app) == [] and browser(app).filter == "t1q"
        await pilot.press("escape")
        assert browser(app).filter == "" and len(table_names(app)) == 6
        footer = {binding.action for _, binding, *_ in browser(app).active_bindings.values()}
        assert {r.action for r in BROWSER_KEYS if r.bind} <= footer
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert [key for key, _ in app.screen.bindings] == [r.keys for r in BROWSER_KEYS]
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(browser(app))]
        assert "Theme" in " ".join(titles) and not any("Export" in t for t in titles)
        await pilot.press("q")  # an empty filter: q quits
        await pilot.pause()
    assert app.return_code in (0, None)


async def test_space_selects_several_and_enter_opens_them_overlaid(runs):
    app = browser_app(runs)
    async with app.run_test(size=(160, 48)) as pilot:
        await listed(pilot)
        await pilot.press("d", "o", "n", "e", "space", "escape")
        await pilot.press("l", "i", "v", "e", "space", "escape")
        screen = browser(app)
        assert [p.name for p in screen.selected] == ["done", "live"]
        assert "2 selected" in "\n".join(screen_lines(app))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.attached is not None, "the dashboard")
        histories = app.runs.histories
        await wait_until(pilot, lambda: all(h.records for h in histories.values()), "both logs")
        assert list(histories) == ["done", "live"]
        assert app.query_one(IcuPane).histories is histories  # the panes show the picked runs
        assert "done + live (attached)" == app.sub_title
        await wait_until(pilot, lambda: app.settled, "the redraw")


async def test_enter_opens_the_highlighted_run_and_new_runs_appear(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "first", finished(20))
    app = browser_app(root)
    async with app.run_test(size=(80, 24)) as pilot:
        await listed(pilot)
        write_run(root, "second", unfinished(3))
        await wait_until(pilot, lambda: "second" in table_names(app), "the new run")
        await pilot.press("f", "i", "r", "enter")
        await wait_until(pilot, lambda: app.attached is not None, "the dashboard")
        assert app.attached.run_dirs == [root / "first"]
        assert list(app.runs.histories) == ["first"]
        await pilot.press("2", "1")  # the dashboard's keys work on the new panes
        assert app.query_one(TabbedContent).active == "icu"
        await pilot.press("q")
        await wait_until(pilot, lambda: not app.is_running, "the quit")


# ---------------------------------------------------------------------------- the CLI
def test_attach_refuses_a_folder_of_runs_beside_other_runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "a", unfinished(2))
    other = write_run(tmp_path, "other", unfinished(2))
    result = h2q("attach", str(other), str(root), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"h2q-tui: error: {root} is a folder of runs, not a run: attach it alone to pick from it"
    )


@pytest.mark.slow
def test_a_real_run_is_live_while_it_trains_and_finished_after(tmp_path):
    """A --no-ui run holds its lock while it trains: the listing says live, then finished."""
    root = tmp_path / "runs"
    training = subprocess.Popen(
        [sys.executable, "-m", "h2q_tui", "--no-ui", "--preset", "tiny", "--max-steps",
         "100000", "--max-seconds", "120", "--run-dir", str(root / "real")],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        scan = RunScan(root)
        for _ in range(600):
            rows = scan.rows()
            if rows and rows[0].steps:
                break
            time.sleep(0.1)
        (row,) = scan.rows()
        assert (row.status, row.preset) == (LIVE, "tiny") and row.steps
        assert lock_holder(root / "real") == training.pid
        training.send_signal(signal.SIGTERM)
        assert training.wait(timeout=60) is not None
    finally:
        training.kill()
        training.wait()
    (row,) = scan.rows()
    assert row.status == FINISHED and row.problem == "terminated"


async def test_highlight_and_selection_stay_on_their_runs_as_the_listing_moves(tmp_path):
    root = tmp_path / "runs"
    older = write_run(root, "older", unfinished(4))
    os.utime(older / METRICS_FILE, (1_000, 1_000))
    write_run(root, "newer", unfinished(2))
    app = browser_app(root)
    async with app.run_test(size=(100, 20)) as pilot:
        await listed(pilot)
        assert table_names(app) == ["newer", "older"]
        await pilot.press("down", "space")
        screen = browser(app)
        with open(older / METRICS_FILE, "a", encoding="utf-8") as log:  # now the newest
            step = {"event": "step", "step": 7, "tokens": 896, "time": 7.0, "train_loss_nats": 2.5}
            log.write(json.dumps(step) + "\n")
        await wait_until(pilot, lambda: table_names(app) == ["older", "newer"], "the new order")
        assert screen.highlighted is not None and screen.highlighted.name == "older"
        assert screen.highlighted.steps == 7 and [p.name for p in screen.selected] == ["older"]
