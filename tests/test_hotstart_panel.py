"""The Crystal pane's hot-start half: what generation uses, the last load's phases, swaps,
and ``h`` running hotstart on a worker thread (issue 13 item 4)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pilot_helpers import text_of, wait_until
from textual.widgets import Input, Static

from h2q_tui.app.panes import hotstart_panel
from h2q_tui.app.panes.crystal import CrystalPane
from h2q_tui.app.panes.generate import GeneratePane
from h2q_tui.app.panes.hotstart_panel import HotStartPanel
from h2q_tui.app.shell import make_app
from h2q_tui.checkpoints import timing as timeline


@pytest.fixture(scope="module")
def trained(tiny_20_steps) -> Path:
    """A tiny run with checkpoints at steps 10 and 20 (conftest's, shared by the session)."""
    return tiny_20_steps


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    (copy / "checkpoints" / "latest").write_text("step_00000010\n")
    return copy


def lines(panel: HotStartPanel) -> str:
    return "\n".join(text_of(w) for w in panel.query(Static))


async def test_the_panel_shows_what_generation_uses_its_load_and_the_swaps(run, monkeypatch):
    timeline.clear()
    monkeypatch.setattr(hotstart_panel, "HOTSTART_REPEATS", 1)
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        panel = app.query_one(HotStartPanel)
        assert "generation uses: no model loaded" in lines(panel)
        assert "last load: none yet" in lines(panel)
        await pilot.press("3")
        generate = app.query_one(GeneratePane)
        await pilot.press("f")
        await wait_until(pilot, lambda: generate.model is not None, "the first load")
        (run / "checkpoints" / "latest").write_text("step_00000020\n")
        await wait_until(pilot, lambda: "step 20, swapped" in generate.source, "the swap")
        await pilot.press("4")
        panel.refresh_lines()
        shown = lines(panel)
        assert "generation uses: following" in shown and "now step 20, swapped in" in shown
        last = next(e for e in reversed(timeline.events()) if e.kind == "load")
        assert set(last.phases) >= {"info", "build", "read", "assign"}
        assert abs(sum(last.phases.values()) - last.total_s) < 1e-9
        assert all(v >= 0 for v in last.phases.values()) and last.total_s > 0
        assert "last load: load" in shown and "by generate pane" in shown
        assert "build " in shown and "read " in shown  # the phases, in ms
        assert "swaps: step 20 in " in shown
        # h: hotstart on the checkpoint typed in the Crystal pane, on a worker thread
        crystal = app.query_one(CrystalPane)
        crystal.query_one("#cry-checkpoint", Input).value = str(run)
        crystal.focus()
        await pilot.press("h")
        assert panel.running == str(run)
        await wait_until(pilot, lambda: panel.running is None, "hotstart", tries=1200)
        report = text_of(panel.query_one("#hot-report", Static))
        assert report.startswith("hotstart run ") and "to first token: in-process " in report
        assert "fresh process " in report and "import torch " in report
        assert panel.report["columns"]["fresh"]["total_s"]["median"] > 0
        crystal.query_one("#cry-checkpoint", Input).value = str(run / "nope")
        await pilot.press("h")
        assert "needs a checkpoint on disk" in text_of(crystal.query_one("#cry-message", Static))
