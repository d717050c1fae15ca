"""Pilot tests of the Generate pane: keys, strength bar, streaming, seeds, errors, model sources."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from fake_engine import FINAL_STEP, FakeEngine
from pilot_helpers import text_of, wait_until
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static, TabbedContent

from h2q_tui.app.panes.generate import GeneratePane
from h2q_tui.app.panes.steer_readout import strength_bar
from h2q_tui.app.shell import H2QApp, make_app
from h2q_tui.config import resolve
from h2q_tui.generation.generate import ModeConfig, generate_text
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.generation.text import Codec
from h2q_tui.models import build_model
from h2q_tui.training import commands

SIZE = (160, 48)


# ---------------------------------------------------------------------- helpers
def pane_of(app: H2QApp) -> GeneratePane:
    return app.query_one(GeneratePane)


def shown(app: H2QApp, widget_id: str) -> str:
    return text_of(pane_of(app).query_one(f"#{widget_id}", Static))


def message(app: H2QApp) -> str:
    return shown(app, "gen-message")


def tiny_model():
    torch.manual_seed(0)
    return build_model(resolve("tiny").model)


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def engine(tmp_path: Path, model):
    fake = FakeEngine(tmp_path / "fake-run", model=model)
    fake.run_dir.mkdir()
    yield fake
    fake.close()


def live_app(engine: FakeEngine) -> H2QApp:
    return make_app(engine, monitor=False, refresh_s=0.05)


async def open_pane(pilot: Pilot) -> GeneratePane:
    await pilot.press("3")
    pane = pane_of(pilot.app)
    await wait_until(pilot, lambda: pilot.app.focused is pane, "the pane to take the focus")
    return pane


async def give_model(pilot: Pilot, model, source: str = "a test model") -> GeneratePane:
    pane = await open_pane(pilot)
    pane.use_model(model, Codec(), source)
    await wait_until(pilot, lambda: pane.model is model, "the model")
    return pane


def set_field(pane: GeneratePane, widget_id: str, value: str) -> None:
    pane.query_one(f"#{widget_id}", Input).value = value


async def generate(pilot: Pilot, pane: GeneratePane) -> str:
    await pilot.press("g")
    await wait_until(pilot, lambda: pane.busy is None, "the generation to end")
    return pane.output


# ---------------------------------------------------------------------- the pane
async def test_3_shows_the_generate_pane_and_g_without_a_model_says_so(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        assert app.query_one(TabbedContent).active == "generate"
        assert "model: none yet" in shown(app, "gen-source")
        assert pane.query_one("#gen-prompt", Input).value == "Once upon a time"
        await pilot.press("g")
        assert "no model yet" in message(app) and pane.busy is None
        await pilot.press("1")
        assert app.query_one(TabbedContent).active == "icu"
        assert app.focused is None  # the hidden pane keeps no keys
        await pilot.press("right")
        assert pane.strength == 0.0


async def test_arrows_and_0_change_the_strength_and_its_bar(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        assert "strength 0.0" in shown(app, "gen-strength")
        await pilot.press("right", "right", "right")
        assert pane.strength == 0.3
        bar = shown(app, "gen-strength")
        assert "strength +0.3" in bar
        assert bar == str(strength_bar(0.3))
        left, right = bar.split("│")
        assert left.count("━") == 20 and right.count("━") == 20  # 20 cells a side
        filled = pane.query_one("#gen-strength", Static).content.spans
        assert any(s.style == "bold green" and s.end - s.start == 3 for s in filled)
        await pilot.press(*["left"] * 5)
        assert pane.strength == -0.2
        assert "strength -0.2" in shown(app, "gen-strength")
        spans = pane.query_one("#gen-strength", Static).content.spans
        assert any(s.style == "bold red" and s.end - s.start == 2 for s in spans)
        await pilot.press("0")
        assert pane.strength == 0.0 and "strength 0.0" in shown(app, "gen-strength")
        await pilot.press(*["right"] * 25)
        assert pane.strength == 2.0  # clamped at +2
        await pilot.press("0", *["left"] * 25)
        assert pane.strength == -2.0
        # in a text field the arrows move the cursor instead
        await pilot.press("0", "tab")  # Tab goes to the first text field
        assert isinstance(app.focused, Input)
        await pilot.press("right", "0")
        assert pane.strength == 0.0
        await pilot.press("escape")  # leaves the text field: the keys work again
        assert app.focused is pane
        await pilot.press("right")
        assert pane.strength == 0.1


async def test_generating_streams_text_shows_tokens_per_s_and_repeats_with_a_seed(model, engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        set_field(pane, "gen-tokens", "40")
        first = await generate(pilot, pane)
        assert first and not pane.last_error
        # the pane's defaults are the engine's: the same text as a plain generate_text call
        assert first == generate_text(
            model, Codec(), "Once upon a time", sampling=SamplingConfig(max_new_tokens=40)
        )
        output = shown(app, "gen-output")
        assert output.startswith("Once upon a time") and len(output) > len("Once upon a time")
        stats = shown(app, "gen-stats")
        assert "40 tokens" in stats and "tokens/s" in stats and "stop: length" in stats
        assert "first token" in stats
        assert "a test model" in message(app)
        assert await generate(pilot, pane) == first  # same seed, same text
        set_field(pane, "gen-seed", "1")
        assert await generate(pilot, pane) != first
        set_field(pane, "gen-seed", "0")
        assert await generate(pilot, pane) == first


async def test_generation_runs_on_a_thread_that_ends(model, engine, monkeypatch):
    """Not on Textual's pooled executor threads: an OpenMP team made there would outlive the
    generation and slow the training thread (h2q_tui/system/threads.py)."""
    import h2q_tui.app.panes.generate as generate_pane

    threads: set[threading.Thread] = set()
    set_threads = generate_pane.use_decoding_threads

    def recording(*args, **kwargs):  # the worker's first call, on the thread that decodes
        threads.add(threading.current_thread())
        return set_threads(*args, **kwargs)

    monkeypatch.setattr(generate_pane, "use_decoding_threads", recording)
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        set_field(pane, "gen-tokens", "5")
        assert await generate(pilot, pane)
    assert threads and all(t.name == "h2q-generate_worker" for t in threads)
    assert not any(t.is_alive() for t in threads)


async def test_a_long_generation_streams_and_escape_cancels_it(model, engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        set_field(pane, "gen-tokens", "100000")
        await pilot.press("g")
        await wait_until(pilot, lambda: len(pane.output) > 20, "the first pieces")
        assert pane.busy == "generating"
        assert "generating…" in shown(app, "gen-stats") and "tokens/s" in shown(app, "gen-stats")
        await pilot.press("escape")
        await wait_until(pilot, lambda: pane.busy is None, "the cancellation")
        assert "stop: cancelled" in shown(app, "gen-stats")
        assert pane.generation is not None and pane.generation.stats.new_tokens < 100000


async def test_enter_in_the_prompt_generates_and_hands_the_keys_back(model, engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        set_field(pane, "gen-tokens", "10")
        prompt = pane.query_one("#gen-prompt", Input)
        prompt.focus()
        prompt.value = ""
        await pilot.press(*"Hello", "enter")
        await wait_until(pilot, lambda: pane.busy is None and pane.output, "the generation")
        assert shown(app, "gen-output").startswith("Hello")
        assert app.focused is pane
        assert engine.received == []  # typing t, p, x... in a field never reaches the app


async def test_mode_steer_without_a_word_is_an_error_line_not_a_crash(model, engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        pane.query_one("#gen-mode", Select).value = "steer"
        await pilot.press("right", "right", "g")
        assert "mode steer needs a target word" in message(app)
        assert pane.last_error and pane.busy is None and app.is_running
        set_field(pane, "gen-word", "cat")
        set_field(pane, "gen-tokens", "10")
        await pilot.press("0", "g")  # a word but strength 0: still an error
        assert "non-zero strength" in message(app)
        set_field(pane, "gen-temperature", "hot")
        await pilot.press("right", "g")
        assert message(app) == "temp must be a number, got 'hot'"
        set_field(pane, "gen-temperature", "0.7")
        await generate(pilot, pane)
        assert not pane.last_error and "stop: length" in shown(app, "gen-stats")
        assert pane.generation.steer.active and pane.generation.stats.residual_norm > 0


async def test_a_word_and_a_strength_steer_in_sample_mode_as_the_cli_does(model, engine):
    """``generate --steer WORD`` steers with mode sample; the pane's sample mode did not."""
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        assert pane.query_one("#gen-mode", Select).value == "sample"
        set_field(pane, "gen-tokens", "40")
        set_field(pane, "gen-word", "the")
        plain = await generate(pilot, pane)  # strength 0: plain sampling
        assert not pane.generation.steer.active
        await pilot.press("right", "right", "right")  # +0.3
        steered = await generate(pilot, pane)
        assert not pane.last_error and steered != plain
        assert pane.generation.steer.active and pane.generation.mode.mode == "steer"
        assert "towards 'the' at +0.3" in message(app)
        expected = generate_text(
            model,
            Codec(),
            "Once upon a time",
            sampling=SamplingConfig(max_new_tokens=40),
            mode=ModeConfig(mode="steer"),
            steer=SteerConfig(word="the", strength=0.3, layer=0),
        )
        assert steered == expected  # what `generate --steer the --strength 0.3` streams


async def test_lookahead_and_flow_modes_generate(model, engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        set_field(pane, "gen-tokens", "5")
        for mode in ("lookahead", "flow"):
            pane.query_one("#gen-mode", Select).value = mode
            assert await generate(pilot, pane)
            assert not pane.last_error and pane.generation.mode.mode == mode
        set_field(pane, "gen-lookahead", "-1")
        await pilot.press("g")
        assert "lookahead L must be ≥ 0" in message(app)


async def test_layer_picker_lists_the_models_layers(model, engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        picker = pane.query_one("#gen-layer", Select)
        layers = len(model.residual_blocks())
        assert [v for _, v in picker._options if v is not Select.NULL] == list(range(layers))
        assert picker.value == 0
        picker.value = layers - 1
        set_field(pane, "gen-word", "cat")
        set_field(pane, "gen-tokens", "5")
        pane.query_one("#gen-mode", Select).value = "steer"
        await pilot.press("right")
        await generate(pilot, pane)
        assert pane.generation.steer.layer == layers - 1 and not pane.last_error


# ---------------------------------------------------------------------- where the model comes from
async def test_bad_checkpoint_paths_show_one_line_errors(engine, tmp_path):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        await pilot.press("o")
        assert app.focused is pane.query_one("#gen-checkpoint", Input)
        missing = tmp_path / "nowhere"
        pane.query_one("#gen-checkpoint", Input).value = str(missing)
        await pilot.press("enter")
        await wait_until(pilot, lambda: pane.last_error, "the error line")
        assert pane.last_error == f"checkpoint not found: {missing}"
        assert "\n" not in message(app)
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "model.safetensors").write_bytes(b"not a checkpoint at all")
        pane.query_one("#gen-checkpoint", Input).value = str(broken)
        await pilot.press("enter")
        await wait_until(pilot, lambda: "corrupt" in pane.last_error, "the corrupt error")
        assert "\n" not in message(app)
        assert pane.model is None and app.is_running


async def test_a_run_dir_loads_its_latest_checkpoint(model, engine, tmp_path):
    from h2q_tui.checkpoints import save_checkpoint

    run_dir = tmp_path / "saved-run"
    config = resolve("tiny")
    for step in (5, 7):
        save_checkpoint(run_dir, model, config, step, "run0001", {})
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        await pilot.press("o")
        pane.query_one("#gen-checkpoint", Input).value = str(run_dir)
        await pilot.press("enter")
        await wait_until(pilot, lambda: pane.model is not None, "the checkpoint")
        assert pane.source.startswith("checkpoint ") and pane.source.endswith("(step 7)")
        assert "step_" in pane.source
        assert "model: checkpoint" in shown(app, "gen-source")
        assert "microstream, 2 layers" in shown(app, "gen-source")
        set_field(pane, "gen-tokens", "10")
        pane.focus()
        assert await generate(pilot, pane)
        assert "(step 7)" in str(pane.query_one("#gen-output-box").border_title)


async def test_snapshot_of_the_live_run(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        await pilot.press("s")  # before training: no model to copy
        assert "training has not started" in message(app)
        assert engine.received == []
        await pilot.press("t")
        await wait_until(pilot, engine.script_done.is_set, "the script")
        await pilot.press("3", "s")
        await wait_until(pilot, lambda: pane.model is not None, "the snapshot")
        assert isinstance(engine.received[-1], commands.TakeSnapshot)
        assert app.commands_sent == engine.received
        assert pane.source == f"live snapshot of run fake-run at step {FINAL_STEP}"
        assert f"model: live snapshot of run fake-run at step {FINAL_STEP}" in shown(
            app, "gen-source"
        )
        assert pane.model is not engine.model and not pane.model.training  # a copy
        set_field(pane, "gen-tokens", "10")
        assert await generate(pilot, pane)
        assert app.run_active  # the run goes on


async def test_snapshot_after_the_run_finished_points_to_the_checkpoint(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await wait_until(pilot, engine.script_done.is_set, "the script")
        await pilot.press("x")
        await wait_until(pilot, lambda: not app.run_active, "the run to end")
        await open_pane(pilot)
        await pilot.press("s")
        assert "the run has finished: load its checkpoint" in message(app)


async def test_attached_runs_work_from_checkpoints_only(tmp_path):
    run = tmp_path / "run-a"
    run.mkdir()
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        pane = await open_pane(pilot)
        assert pane.query_one("#gen-checkpoint", Input).value == str(run)
        await pilot.press("s")
        assert "no live run" in message(app)
        await pilot.press("o", "enter")
        await wait_until(pilot, lambda: pane.last_error, "the error line")
        assert pane.last_error.startswith(f"no checkpoint in {run}")


# ---------------------------------------------------------------------- steering readout
async def test_steering_readout_compares_with_strength_0(model, engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        pane.readout_samples, pane.readout_tokens = 2, 8
        await pilot.press("r")
        assert "needs a target word and a non-zero strength" in message(app)
        set_field(pane, "gen-word", "the")
        await pilot.press(*["right"] * 5, "r")
        await wait_until(pilot, lambda: pane.busy is None, "the readout")
        readout = shown(app, "gen-readout")
        assert readout.startswith("'the' @ layer 0, +0.5: hit rate ")
        assert "/2 vs " in readout and "/2 at strength 0 (as a whole word " in readout
        assert "/2) · fluency " in readout
        assert "bits/byte (" in readout and "Δ log p(word)" in readout
        assert not pane.last_error


async def test_steering_readout_shows_progress_and_escape_cancels_it(model, engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        pane = await give_model(pilot, model)
        pane.readout_samples, pane.readout_tokens = 4, 1000
        set_field(pane, "gen-word", "the")
        await pilot.press("left", "r")
        await wait_until(
            pilot, lambda: "readout running: sample " in shown(app, "gen-readout"), "progress"
        )
        assert "/8 (strength " in shown(app, "gen-readout")  # 4 samples at -0.1 and 4 at 0
        await pilot.press("escape")
        assert pane.busy is None and message(app) == "readout cancelled"
        assert shown(app, "gen-readout") == "readout cancelled"
        set_field(pane, "gen-tokens", "5")
        assert await generate(pilot, pane)  # the cancelled readout let go of the model


async def test_command_palette_actions_reach_the_pane(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await app.run_action("generate_pane('strength(1)')")
        await pilot.pause()
        pane = pane_of(app)
        assert app.query_one(TabbedContent).active == "generate"
        assert pane.strength == 0.1
        await app.run_action("generate_pane('strength_reset')")
        assert pane.strength == 0.0
        actions = {action for _, action, _ in H2QApp.ACTIONS}
        assert {"pane('generate')", "generate_pane('generate')", "generate_pane('readout')"} <= (
            actions
        )


# ---------------------------------------------------------------------- the real engine
async def test_real_engine_snapshot_while_training_goes_on(tmp_path, text_file):
    from h2q_tui.app.engine_link import LiveEngine
    from h2q_tui.training.session import RunRequest, prepare_run

    prepared = prepare_run(
        RunRequest(
            preset="tiny",
            data=str(text_file),
            run_dir=str(tmp_path / "real-run"),
            max_steps=100_000,
            overrides=["train.threads=1"],
        )
    )
    app = make_app(LiveEngine(prepared), monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        history = app.histories["real-run"]
        await pilot.press("t")
        await wait_until(pilot, lambda: history.last_step, "the first step", tries=2400)
        pane = await open_pane(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: pane.model is not None, "the snapshot", tries=400)
        assert pane.source.startswith("live snapshot of run real-run at step ")
        set_field(pane, "gen-tokens", "20")
        step_before = history.last_step["step"]
        assert await generate(pilot, pane)
        await wait_until(
            pilot, lambda: history.last_step["step"] > step_before, "more steps", tries=400
        )
        assert app.run_active and history.paused is False
        await pilot.press("x")
        await wait_until(pilot, lambda: not app.run_active, "the run to stop", tries=2400)
