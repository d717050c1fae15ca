"""Pilot tests of the Ollama pane (key 5): server status, its models, the same prompt on an
Ollama model (our own ``serve`` on a real uvicorn) and a local model side by side, with
tokens/s, first-token latency and load; network calls off the UI thread; 80×24."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from fake_engine import FINAL_STEP, FakeEngine
from ollama_helpers import LiveServer, free_port, hooked, make_run
from pilot_helpers import text_of, wait_until
from textual.widgets import Input, Select, Static, TabbedContent

from h2q_tui.app.panes.ollama import OllamaPane
from h2q_tui.app.shell import H2QApp, make_app
from h2q_tui.config import resolve
from h2q_tui.models import build_model
from h2q_tui.ollama.client import OllamaClient
from h2q_tui.ollama.models import Registry
from h2q_tui.ollama.server import Server

SMALL = (80, 24)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("pane")
    run = make_run(root, "tiny")
    server = Server(Registry.discover([run]))
    with LiveServer(server.app) as live:
        yield server, live.url, run


@pytest.fixture
def engine(tmp_path: Path):
    torch.manual_seed(0)
    fake = FakeEngine(tmp_path / "fake-run", model=build_model(resolve("tiny").model))
    fake.run_dir.mkdir()
    yield fake
    fake.close()


def app_for(engine) -> H2QApp:
    return make_app(engine, monitor=False, refresh_s=0.05)


def shown(pane: OllamaPane, widget_id: str) -> str:
    return text_of(pane.query_one(f"#{widget_id}", Static))


async def open_pane(pilot) -> OllamaPane:
    await pilot.press("5")
    pane = pilot.app.query_one(OllamaPane)
    await wait_until(pilot, lambda: pilot.app.focused is pane, "the pane to take the focus")
    assert pilot.app.query_one(TabbedContent).active == "ollama"
    return pane


async def test_an_unreachable_server_is_one_line(engine, monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    async with app_for(engine).run_test(size=SMALL) as pilot:
        pane = await open_pane(pilot)
        await wait_until(pilot, lambda: "no Ollama server" in shown(pane, "oll-server"), "probe")
        line = shown(pane, "oll-server")
        assert "\n" not in line and "connection refused" in line
        await pilot.press("r")  # nothing to run: says so, no crash
        assert "nothing to run" in pane.last_error
        assert pilot.app.is_running


async def test_the_same_prompt_on_ollama_and_a_local_model(served, engine, monkeypatch) -> None:
    server, url, run = served
    threads = []
    real_probe = OllamaClient.probe

    def probe(self, *args, **kwargs):
        threads.append(threading.current_thread())
        return real_probe(self, *args, **kwargs)

    monkeypatch.setattr(OllamaClient, "probe", probe)
    monkeypatch.setenv("OLLAMA_HOST", url)
    async with app_for(engine).run_test(size=SMALL) as pilot:
        pane = await open_pane(pilot)
        await wait_until(pilot, lambda: "running" in shown(pane, "oll-server"), "the server")
        assert "1 model(s)" in shown(pane, "oll-server")
        assert pane.query_one("#oll-model", Select).value == "tiny:latest"
        assert threads and all(t is not threading.main_thread() for t in threads)
        pane.query_one("#oll-local", Input).value = str(run)
        pane.load_local(str(run))
        await wait_until(pilot, lambda: pane.local is not None, "the local model")
        pane.query_one("#oll-tokens", Input).value = "12"
        await pilot.press("r")
        await wait_until(pilot, lambda: not pane.busy, "the run to end")
        for side in ("ollama", "local"):
            assert pane.outputs[side], side
            assert "12 tokens" in pane.stats[side] and "tok/s" in pane.stats[side]
            assert "first" in pane.stats[side]
        assert "hot start" in pane.stats["ollama"] and "load" in pane.stats["local"]
        # same checkpoint, same seed and settings: the same text on both sides
        assert pane.outputs["ollama"] == pane.outputs["local"]
        # readable at 80×24: both sides and their statistics are on the screen
        for side in ("ollama", "local"):
            region = pane.query_one(f"#oll-{side}-stats").region
            assert region.height >= 1 and region.bottom <= SMALL[1] and region.width >= 30
        assert pane.query_one("#oll-prompt").region.width >= 20


async def test_escape_cancels_and_the_servers_generation_ends(served, engine, monkeypatch) -> None:
    server, url, run = served
    monkeypatch.setenv("OLLAMA_HOST", url)
    async with app_for(engine).run_test(size=SMALL) as pilot:
        pane = await open_pane(pilot)
        await wait_until(pilot, lambda: "running" in shown(pane, "oll-server"), "the server")
        model = server.registry.get("tiny:latest")
        pane.query_one("#oll-tokens", Input).value = "4000"
        await pilot.press("r")
        await wait_until(pilot, lambda: model.model is not None and pane.outputs["ollama"], "text")
        with hooked(model.model, delay_s=0.005):
            jobs = list(server.jobs)
            await pilot.press("escape")
            await wait_until(pilot, lambda: not pane.busy, "the run to stop")
        assert "cancelled" in pane.stats["ollama"]
        await wait_until(pilot, lambda: not any(j.thread.is_alive() for j in jobs), "the worker")


async def test_a_snapshot_of_the_live_run_is_the_local_model(engine, monkeypatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    async with app_for(engine).run_test(size=SMALL) as pilot:
        await pilot.press("t")
        await wait_until(pilot, engine.script_done.is_set, "the script")
        pane = await open_pane(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: pane.local is not None, "the snapshot")
        assert pane.local[2] == f"live snapshot of run fake-run at step {FINAL_STEP:,}"
        pane.query_one("#oll-tokens", Input).value = "5"
        await pilot.press("r")  # no Ollama model: the local side alone
        await wait_until(pilot, lambda: not pane.busy, "the run to end")
        assert "5 tokens" in pane.stats["local"] and pane.stats["ollama"] == ""
