"""One loader: the CLI and the Generate pane turn the same checkpoint into the same weights,
bit for bit, for a plain checkpoint and for a crystallized folder (issue 28)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from h2q_tui import checkpoints
from h2q_tui.config import ModelConfig, RunConfig
from h2q_tui.models import build_model

SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "context": 16, "factor_size": 8, "rank": 3}


def save_small(root: Path, family: str) -> Path:
    """An untrained small checkpoint of ``family``: its run dir."""
    model_config = ModelConfig(family=family, **SMALL)
    torch.manual_seed(0)
    run = root / family
    checkpoints.save_checkpoint(
        run, build_model(model_config), RunConfig(model=model_config), 5, "r1", {}
    )
    return run


def crystallized(run: Path, root: Path, capsys) -> Path:
    """The int8 crystallized folder of ``run``."""
    from h2q_tui.cli.crystallize import main as crystallize

    data = root / "heldout.txt"
    data.write_bytes(b"Once upon a time there was a little cat. " * 100)
    out = root / "crystal"
    assert crystallize([str(run), "--method", "int8", "--data", str(data), "--out", str(out)]) == 0
    capsys.readouterr()
    return next(path.parent for path in out.rglob("model.safetensors"))


def cli_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict ``h2q-tui generate PATH`` decodes with."""
    from h2q_tui.cli.decoding import load_for_decoding

    threads = torch.get_num_threads()
    try:
        args = argparse.Namespace(checkpoint=str(path), threads=None, device="cpu")
        _, model, _ = load_for_decoding(args)
    finally:
        torch.set_num_threads(threads)
    return model.state_dict()


def pane_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict the Generate pane's load worker hands to its generator."""
    from h2q_tui.app.model_source import load_for_pane

    _, model, _ = load_for_pane(str(path), "generate pane")
    return model.state_dict()


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name, tensor in a.items():
        assert b[name].dtype == tensor.dtype and torch.equal(b[name], tensor), name


@pytest.mark.parametrize("family", ["gpt", "qrlm", "hamiltonian-llm"])
def test_the_cli_and_the_pane_load_the_same_weights(tmp_path, family) -> None:
    run = save_small(tmp_path, family)
    assert_identical(cli_weights(run), pane_weights(run))


def test_the_cli_and_the_pane_load_the_same_crystallized_weights(tmp_path, capsys) -> None:
    folder = crystallized(save_small(tmp_path, "gpt"), tmp_path, capsys)
    assert checkpoints.read_info(folder).crystal is not None
    assert_identical(cli_weights(folder), pane_weights(folder))


def test_every_variant_gives_the_same_model(tmp_path) -> None:
    """plain, fast (checksums beside, or first), from an info already read and onto a named
    device agree."""
    run = save_small(tmp_path, "gpt")
    plain = checkpoints.load_checkpoint(run)
    assert not plain.model.training and plain.event is None and plain.pending is None
    for loaded in (
        checkpoints.load_checkpoint(run, "fast"),
        checkpoints.load_checkpoint(run, "fast", verify="first"),
        checkpoints.load_checkpoint(plain.info, "fast"),
        checkpoints.load_checkpoint(plain.info),
        checkpoints.load_checkpoint(run, device="cpu"),
        checkpoints.load_checkpoint(run, "fast", device="cpu"),
    ):
        assert loaded.info.weights == plain.info.weights and loaded.pending is None
        assert_identical(plain.model.state_dict(), loaded.model.state_dict())


def test_a_recorded_load_is_in_the_timeline(tmp_path) -> None:
    from h2q_tui.checkpoints import timing

    run = save_small(tmp_path, "gpt")
    loaded = checkpoints.load_checkpoint(run, "fast", consumer="test", note="n")
    assert timing.latest("test") is loaded.event
    event = loaded.event
    assert event.kind == "load" and event.step == 5 and event.note == "n"
    assert list(event.phases)[:4] == ["info", "read", "build", "assign"]
    assert abs(sum(event.phases.values()) - event.total_s) < 1e-9
    assert event.overlapped["verify"] > 0


def test_bad_options_are_refused(tmp_path) -> None:
    run = save_small(tmp_path, "gpt")
    with pytest.raises(ValueError, match="method must be one of plain, fast, naive"):
        checkpoints.load_checkpoint(run, "quick")
    with pytest.raises(ValueError, match="verify must be one of"):
        checkpoints.load_checkpoint(run, "fast", verify="never")
    with pytest.raises(ValueError, match="naive path needs pickle_path"):
        checkpoints.load_checkpoint(run, "naive")
    with pytest.raises(ValueError, match="verified before it is recorded"):
        checkpoints.load_checkpoint(run, "fast", verify="later", consumer="test")
