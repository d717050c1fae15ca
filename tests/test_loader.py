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
    assert "verify" not in event.overlapped  # a small file: checked when the load waited


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


def _safetensors_file(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file of ``header`` and ``data``, written by hand (unsound ones too)."""
    import json

    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-aligned, as safetensors writes it
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_mapped_tensors_equal_safetensors_own_each_with_its_storage(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from h2q_tui.checkpoints.fast import map_tensors

    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int8),  # 7 bytes: "c" then starts unaligned
        "c": torch.randn(2, 2, dtype=torch.float64),
        "d": torch.tensor(True),
        "e": torch.zeros(0, 4),
        "f": torch.randn(4).to(torch.bfloat16),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    mapped, reference = map_tensors(path), load_file(str(path))
    assert mapped.keys() == reference.keys()
    for name, tensor in reference.items():
        assert mapped[name].dtype == tensor.dtype and torch.equal(mapped[name], tensor), name
    pointers = {t.untyped_storage().data_ptr() for t in mapped.values() if t.numel()}
    assert len(pointers) == len(tensors) - 1  # one storage each: a save takes them again
    mapped["a"].add_(1.0)  # private: the file is unchanged
    assert torch.equal(load_file(str(path))["a"], tensors["a"])
    save_file(mapped, str(tmp_path / "again.safetensors"))


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]},  # size against shape
        {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},  # past the end
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]},
        {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0]},
        "not a tensor",
    ],
)
def test_an_unsound_header_is_refused_in_safetensors_words(tmp_path, entry) -> None:
    from safetensors import SafetensorError

    from h2q_tui.checkpoints.fast import map_tensors

    path = _safetensors_file(tmp_path / "bad.safetensors", {"x": entry}, bytes(8))
    with pytest.raises((SafetensorError, ValueError)):
        map_tensors(path)


def test_overlapping_tensors_are_refused(tmp_path) -> None:
    from safetensors import SafetensorError

    from h2q_tui.checkpoints.fast import map_tensors

    header = {
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = _safetensors_file(tmp_path / "overlap.safetensors", header, bytes(12))
    with pytest.raises((SafetensorError, ValueError)):
        map_tensors(path)


def test_a_tensor_not_aligned_to_its_dtype_is_read_right(tmp_path) -> None:
    from h2q_tui.checkpoints.fast import map_tensors

    values = torch.tensor([1.5, -2.25])  # at data offset 3: not 4-aligned
    header = {
        "x": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "y": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    data = bytes([1, 2, 3]) + values.numpy().tobytes()
    mapped = map_tensors(_safetensors_file(tmp_path / "odd.safetensors", header, data))
    assert mapped["x"].tolist() == [1, 2, 3]
    assert torch.equal(mapped["y"], values)
