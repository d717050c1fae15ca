"""The checkpoint box + snapshot button every model pane composes, on its own in a small app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pilot_helpers import wait_until
from textual.app import App, ComposeResult
from textual.widgets import Button, Input

from h2q_tui.app.display import printable
from h2q_tui.app.messages import GenerationSourceChanged
from h2q_tui.app.model_source import EMPTY_PATH, NO_LIVE_RUN, ModelSource
from h2q_tui.app.panes.generate import GeneratePane
from h2q_tui.checkpoints import save_checkpoint
from h2q_tui.config import resolve
from h2q_tui.generation.text import Codec
from h2q_tui.models import build_model


class SourceApp(App):
    """One ModelSource; every message it posts is kept in ``heard``."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.heard: list[Any] = []

    def compose(self) -> ComposeResult:
        yield ModelSource(
            label="checkpoint",
            input_id="box",
            snapshot_id="snap",
            placeholder="a checkpoint",
            consumer="test",
            **self.options,
        )

    def on_model_source_started(self, message: ModelSource.Started) -> None:
        self.heard.append(message)

    def on_model_source_loaded(self, message: ModelSource.Loaded) -> None:
        self.heard.append(message)

    def on_model_source_failed(self, message: ModelSource.Failed) -> None:
        self.heard.append(message)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(resolve("tiny").model)


async def test_enter_loads_the_latest_checkpoint_of_a_run_dir(model, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (5, 7):
        save_checkpoint(run_dir, model, resolve("tiny"), step, "run0001", {})
    app = SourceApp(value=str(run_dir))
    async with app.run_test() as pilot:
        app.query_one("#box", Input).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.heard[-1], ModelSource.Loaded), "the load")
        started, loaded = app.heard
        assert started.text == f"loading {run_dir}…" and started.path == str(run_dir)
        assert loaded.step == 7 and loaded.info.step == 7 and loaded.load_s > 0
        assert loaded.source.startswith("checkpoint ") and loaded.source.endswith("(step 7)")
        assert not loaded.model.training
        for name, tensor in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[name], tensor), name


async def test_bad_requests_are_one_line_failures(tmp_path: Path) -> None:
    app = SourceApp()
    async with app.run_test() as pilot:
        source = app.query_one(ModelSource)
        assert not app.query_one("#snap", Button).display  # no live run: no button
        source.load("   ")
        source.snapshot()
        source.load(str(tmp_path / "nowhere"))
        await wait_until(pilot, lambda: len(app.heard) == 4, "four messages")
        reasons = [m.reason for m in app.heard if isinstance(m, ModelSource.Failed)]
        assert reasons == [EMPTY_PATH, NO_LIVE_RUN, f"checkpoint not found: {tmp_path / 'nowhere'}"]


async def test_a_guard_refuses_and_a_snapshot_arrives_with_its_step(model) -> None:
    asked: list[Any] = []

    def request_snapshot(deliver) -> None:
        asked.append(deliver)

    busy = {"why": "a sweep is running"}
    app = SourceApp(request_snapshot=request_snapshot, live_run="r1", guard=lambda: busy["why"])
    async with app.run_test() as pilot:
        source = app.query_one(ModelSource)
        source.snapshot()
        await wait_until(pilot, lambda: app.heard, "the refusal")
        assert app.heard[-1].reason == "a sweep is running" and not asked
        busy["why"] = ""
        source.snapshot()
        asked[0](model, 1234)  # as the trainer does, on its own thread
        await wait_until(pilot, lambda: isinstance(app.heard[-1], ModelSource.Loaded), "the copy")
        loaded = app.heard[-1]
        assert loaded.model is model and loaded.info is None and loaded.step == 1234
        assert loaded.source == "live snapshot of run r1 at step 1,234"


def test_control_bytes_are_shown_as_symbols() -> None:
    assert printable("a\x00b\tc\nd\x1b\x7f\x85é") == "a␀b\tc\nd␛␡\ufffdé"


class GenerateApp(App):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def compose(self) -> ComposeResult:
        yield GeneratePane()

    def on_generation_source_changed(self, message: GenerationSourceChanged) -> None:
        self.sources.append(message.source)


async def test_the_generate_pane_says_when_its_model_changes(model) -> None:
    app = GenerateApp()
    async with app.run_test() as pilot:
        app.query_one(GeneratePane).use_model(model, Codec(), "a test model")
        await wait_until(pilot, lambda: app.sources, "the message")
        assert app.sources == ["a test model"]
