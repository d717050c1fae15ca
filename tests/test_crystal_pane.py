"""Pilot tests of the Crystal pane (issue 12 item 5): source, methods, rows, plot, Generate.

One tiny microstream is trained once per module (3 steps, in-process through the CLI); each
sweep measures it on a few windows of a small data file.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from pilot_helpers import text_of, wait_until
from test_bad_input import english_text
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, SelectionList, Static, TabbedContent

from h2q_tui.app.panes.crystal import CrystalPane
from h2q_tui.app.panes.crystal_results import COLUMNS, NARROW_COLUMNS
from h2q_tui.app.panes.generate import GeneratePane
from h2q_tui.app.shell import H2QApp, make_app
from h2q_tui.cli import main as cli

SIZE = (160, 48)
DATA = "data.txt"
WINDOWS = "6"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crystal-pane")
    (root / DATA).write_bytes(english_text(4_000))
    code = cli.main(
        [
            "--no-ui",
            "--preset",
            "tiny",
            "--max-steps",
            "3",
            "--run-dir",
            str(root / "run"),
            "--data",
            str(root / DATA),
        ]
    )
    assert code == 0
    return root


@pytest.fixture
def work(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained / "run", tmp_path / "run")
    shutil.copyfile(trained / DATA, tmp_path / DATA)
    return tmp_path


def pane_of(app: H2QApp) -> CrystalPane:
    return app.query_one(CrystalPane)


def message(app: H2QApp) -> str:
    return text_of(pane_of(app).query_one("#cry-message", Static))


async def open_pane(pilot: Pilot) -> CrystalPane:
    await pilot.press("4")
    pane = pane_of(pilot.app)
    await wait_until(pilot, lambda: pilot.app.focused is pane, "the pane to take the focus")
    return pane


async def load(pilot: Pilot, pane: CrystalPane, path: str) -> None:
    await pilot.press("o")
    pane.query_one("#cry-checkpoint", Input).value = path
    await pilot.press("enter")
    await wait_until(pilot, lambda: pane.busy is None, "the source to load", tries=600)


def tick_only(pane: CrystalPane, methods: list[str]) -> None:
    picker = pane.query_one("#cry-methods", SelectionList)
    picker.deselect_all()
    for method in methods:
        picker.select(method)


async def sweep(pilot: Pilot, pane: CrystalPane, work: Path, methods: list[str]) -> None:
    tick_only(pane, methods)
    pane.query_one("#cry-data", Input).value = str(work / DATA)
    pane.query_one("#cry-windows", Input).value = WINDOWS
    pane.focus()
    await pilot.press("r")
    await wait_until(pilot, lambda: pane.busy is None, "the sweep", tries=1200)


async def test_4_shows_the_pane_and_r_without_a_source_says_so(engine):
    app = make_app(engine, monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await open_pane(pilot)
        assert app.query_one(TabbedContent).active == "crystal"
        assert "source: none yet" in text_of(pane_of(app).query_one("#cry-source", Static))
        await pilot.press("r")
        assert "no source yet" in message(app)
        await pilot.press("g")
        assert "no row yet" in message(app)
        await pilot.press("s")
        assert "training has not started" in message(app)
        await pilot.press("1")
        assert app.focused is None


async def test_a_sweep_fills_rows_whose_bytes_are_the_files_and_g_opens_one(work, engine):
    threads: set[threading.Thread] = set()
    app = make_app(engine, monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        await load(pilot, pane, str(work / "run"))
        assert not pane.last_error, pane.last_error
        assert "int8" in pane.loaded.methods and "rank:1" in pane.loaded.methods
        assert "svd:0.5+int8" not in pane.loaded.methods  # microstream: no dense matrices
        base_forward = pane.loaded.source.model.forward

        def recording_forward(*args, **kwargs):
            threads.add(threading.current_thread())
            return base_forward(*args, **kwargs)

        pane.loaded.source.model.forward = recording_forward
        await sweep(pilot, pane, work, ["int8", "rank:1", "int4-g32"])
        assert not pane.last_error, pane.last_error
        assert message(app).startswith("done: 3 methods")
        # in the ladder's order, the original first
        assert [r.method for r in pane.rows] == ["original", "int8", "int4-g32", "rank:1"]
        for row in pane.rows:
            folder = Path(row.path)
            files = ("model.safetensors", "tokenizer.json")
            assert row.bytes == sum(
                (folder / f).stat().st_size for f in files if (folder / f).exists()
            )
        assert all(Path(r.path).parent == work / "run" / "crystal" for r in pane.rows[1:])
        assert pane.query_one("#cry-table").row_count == 4
        assert any(r.pareto for r in pane.rows)
        assert threads and all(t.name == "h2q-sweep_worker" for t in threads)
        assert not any(t.is_alive() for t in threads)

        pane.focus()
        await pilot.press("down")  # the pane's ↑/↓ move the table's cursor: row 1 is int8
        assert pane.selected_row().method == "int8"
        await pilot.press("g")
        generate = app.query_one(GeneratePane)
        assert app.query_one(TabbedContent).active == "generate"
        await wait_until(pilot, lambda: generate.model is not None, "the crystallized model")
        assert "int8 of run" in generate.source and "smaller" in generate.source
        generate.query_one("#gen-tokens", Input).value = "8"
        generate.focus()
        await pilot.press("g")
        await wait_until(pilot, lambda: generate.busy is None, "the generation")
        assert generate.output and not generate.last_error


async def test_bad_paths_are_one_line_messages(work, engine, tmp_path):
    app = make_app(engine, monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        missing = tmp_path / "nowhere"
        await load(pilot, pane, str(missing))
        assert pane.last_error == f"checkpoint not found: {missing}"
        assert "\n" not in message(app) and pane.loaded is None
        await load(pilot, pane, str(work / "run"))
        await sweep(pilot, pane, work, ["int8"])
        crystallized = pane.rows[1].path
        await load(pilot, pane, crystallized)
        assert "already crystallized" in pane.last_error
        await load(pilot, pane, str(work / "run"))
        tick_only(pane, ["int8"])
        pane.query_one("#cry-data", Input).value = str(tmp_path / "no-data.txt")
        pane.focus()
        await pilot.press("r")
        await wait_until(pilot, lambda: pane.busy is None, "the refusal")
        assert pane.last_error.startswith("data file not found") and app.is_running


async def test_escape_cancels_between_methods(work, engine):
    app = make_app(engine, monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        await load(pilot, pane, str(work / "run"))
        gate = threading.Event()  # the second method's measurement waits for Esc
        base_forward = pane.loaded.source.model.forward

        def gated_forward(*args, **kwargs):
            if pane.rows:
                gate.wait(10)
            return base_forward(*args, **kwargs)

        pane.loaded.source.model.forward = gated_forward
        tick_only(pane, pane.loaded.methods)
        pane.query_one("#cry-data", Input).value = str(work / DATA)
        pane.query_one("#cry-windows", Input).value = WINDOWS
        pane.focus()
        await pilot.press("r")
        await wait_until(pilot, lambda: len(pane.rows) >= 2, "the first row", tries=1200)
        await pilot.press("escape")
        gate.set()
        await wait_until(pilot, lambda: pane.busy is None, "the cancellation", tries=1200)
        assert message(app).startswith("cancelled")
        assert len(pane.rows) < len(pane.loaded.methods) + 1


async def test_a_live_snapshot_is_saved_in_the_run_dir_and_crystallized(work, engine):
    from h2q_tui import checkpoints
    from h2q_tui.config import resolve

    info = checkpoints.read_info(work / "run")
    engine.model = checkpoints.load_model_from(info).eval()
    engine.prepared = type("Prepared", (), {"config": resolve("tiny"), "tokenizer": None})()
    app = make_app(engine, monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await wait_until(pilot, engine.script_done.is_set, "the script")
        pane = await open_pane(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: pane.loaded is not None or pane.last_error, "snapshot")
        assert not pane.last_error, pane.last_error
        assert "run dir" in message(app)
        assert pane.loaded.source.folder.parent == engine.run_dir / "crystal" / "checkpoints"
        await sweep(pilot, pane, work, ["int8"])
        assert not pane.last_error, pane.last_error
        assert Path(pane.rows[1].path).is_dir()
        assert Path(pane.rows[1].path).parent.parent == engine.run_dir / "crystal"
        assert app.run_active


async def test_attached_runs_use_checkpoints_only(work):
    app = make_app(attach=[work / "run"], monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        assert pane.query_one("#cry-checkpoint", Input).value == str(work / "run")
        await pilot.press("s")
        assert "no live run" in message(app)
        await pilot.press("o", "enter")
        await wait_until(pilot, lambda: pane.loaded is not None, "the source", tries=600)


async def test_an_80_column_terminal_gets_the_narrow_table_that_needs_no_sideways_scroll(
    work, engine
):
    app = make_app(engine, monitor=False, refresh_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await open_pane(pilot)
        await load(pilot, pane, str(work / "run"))
        await sweep(pilot, pane, work, ["int8"])
        table = pane.query_one("#cry-table", DataTable)
        await pilot.pause()
        assert [str(c.label) for c in table.columns.values()] == list(NARROW_COLUMNS)
        assert table.row_count == 2 and table.virtual_size.width <= table.content_region.width
        await pilot.resize_terminal(160, 48)
        await wait_until(pilot, lambda: len(table.columns) == len(COLUMNS), "the full table")
        assert table.row_count == 2 and "±" in str(table.get_row_at(1)[4])
