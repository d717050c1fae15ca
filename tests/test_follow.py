"""Following a run: new checkpoints swapped into a running model in place (issue 13 item 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from run_cli import h2q, h2q_in_process

from h2q_tui import checkpoints
from h2q_tui.checkpoints import timing as timeline
from h2q_tui.errors import UserError
from h2q_tui.generation.follow import RunFollower, swap_weights
from h2q_tui.generation.generate import Generation
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import Codec


@pytest.fixture(scope="module")
def run_dir(tiny_20_steps) -> Path:
    """A tiny run with checkpoints at steps 10 and 20 (conftest's, shared by the session)."""
    return tiny_20_steps


def point_latest(run: Path, step: int) -> None:
    (run / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")


def text_of(model, prompt: str = "Once upon a time", seed: int = 3) -> str:
    sampling = SamplingConfig(max_new_tokens=24, seed=seed)
    generation = Generation(model, Codec(), prompt, sampling=sampling)
    return "".join(generation)


@pytest.fixture
def run(run_dir, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    point_latest(copy, 10)
    return copy


def test_a_swap_keeps_the_parameters_and_gives_what_a_fresh_load_gives(run):
    timeline.clear()
    follower = RunFollower(run)
    first = follower.take(None, follower.poll())
    assert first.kind == "load" and first.info.step == 10
    model = first.model
    identities = [id(p) for p in model.parameters()]
    before = text_of(model)
    assert follower.poll() is None  # nothing new
    point_latest(run, 20)
    info = follower.poll()
    assert info is not None and info.step == 20
    swapped = follower.take(model, info)
    assert swapped.kind == "swap" and swapped.model is model and swapped.previous_step == 10
    assert [id(p) for p in model.parameters()] == identities
    assert swapped.line().startswith("now step 20, swapped in ")
    fresh = checkpoints.load_model_from(checkpoints.read_info(run)).eval()
    assert text_of(model) == text_of(fresh)  # token for token, same seed
    assert text_of(model) != before  # the weights really changed
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    events = [e for e in timeline.events() if e.consumer == "generate --follow"]
    assert [e.kind for e in events] == ["load", "swap"] and events[-1].step == 20
    assert events[-1].note == "step 10 → 20" and events[-1].total_s > 0


def test_a_checkpoint_still_being_written_is_never_picked_up(run):
    follower = RunFollower(run)
    held = follower.take(None, follower.poll())
    # a writer mid-way: the folder exists, its file is half there, latest not moved yet
    partial = run / "checkpoints" / "step_00000030"
    partial.mkdir()
    data = (run / "checkpoints" / "step_00000020" / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert follower.poll() is None
    # even a pointer naming the damaged folder is not followed into it
    point_latest(run, 30)
    info = follower.poll()
    assert info is None or info.step == 20
    assert held.info.step == 10


def test_swap_weights_refuses_another_architecture(run, tmp_path):
    info = checkpoints.read_info(run)
    model = checkpoints.load_model_from(info).eval()
    other = h2q_in_process(
        "--no-ui", "--preset", "tiny", "--set", "model.n_layers=1", "--max-steps", "2",
        "--run-dir", "other", cwd=tmp_path,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    with pytest.raises(UserError, match="does not match"):
        swap_weights(model, checkpoints.read_info(tmp_path / "other"))


def test_following_a_checkpoint_folder_is_refused(run):
    with pytest.raises(UserError, match="not a run dir"):
        RunFollower(run / "checkpoints" / "step_00000010")


def test_generate_follow_regenerates_and_waits_for_a_missing_run(run, tmp_path):
    # subprocesses, with their timeout: a follow loop that never ends must fail, not hang
    result = h2q(
        "generate", str(run), "--follow", "--follow-seconds", "1.5", "--prompt", "Once",
        "--max-new-tokens", "8", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "now step 10, loaded in" in result.stderr and result.stdout.startswith("Once")
    assert "1 checkpoint(s)" in result.stderr
    missing = h2q(
        "generate", "not-yet", "--follow", "--follow-seconds", "0.5", "--prompt", "x",
        cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "waiting for a first complete checkpoint in not-yet (it does not exist yet)" in (
        missing.stderr
    )
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("h2q-tui: error: no complete checkpoint appeared in not-yet")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--follow-seconds", "3"], "--follow-seconds needs --follow"),
        (["--follow", "--follow-seconds", "0"], "--follow-seconds must be > 0"),
        (["--follow", "--interactive"], "do not go together"),
    ],
)
def test_bad_follow_flags_are_one_line(run, tmp_path, args, message):
    result = h2q_in_process("generate", str(run), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"h2q-tui: error: {message}"] or (
        message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    )


async def test_the_generate_pane_follows_an_attached_run(run):
    from pilot_helpers import text_of, wait_until
    from textual.widgets import Static

    from h2q_tui.app.panes.generate import GeneratePane
    from h2q_tui.app.shell import make_app

    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("3")
        pane = app.query_one(GeneratePane)
        source = lambda: text_of(pane.query_one("#gen-source", Static))  # noqa: E731
        await pilot.press("f")
        await wait_until(pilot, lambda: "now step 10, loaded in" in source(), "the first load")
        await wait_until(pilot, lambda: pane.busy is None and pane.output, "a generation")
        model, first_output = pane.model, pane.output
        point_latest(run, 20)
        await wait_until(pilot, lambda: "now step 20, swapped in" in source(), "the swap")
        assert pane.model is model  # swapped in place, not rebuilt
        await wait_until(pilot, lambda: pane.busy is None and pane.output != first_output)
        await pilot.press("f")
        assert "stopped following" in text_of(pane.query_one("#gen-message", Static))
        assert pane.follower is None
