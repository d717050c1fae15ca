"""Presets and overrides: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import pytest

from h2q_tui import config as cfg
from h2q_tui.config import parse_override, preset_names, resolve
from h2q_tui.errors import UserError


def test_required_presets_exist():
    assert {"microstream", "microstream-cpu", "gpt", "gpt-cpu", "tiny"} <= set(preset_names())


def test_set_overrides_a_value_with_toml_parsing():
    config = resolve("tiny", ["train.lr=0.01", "model.dropout=0.2", "train.precision=bf16"])
    assert (
        config.train.lr == 0.01 and config.model.dropout == 0.2 and config.train.precision == "bf16"
    )


def test_int_is_accepted_for_float_keys():
    assert resolve("tiny", ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override,named",
    [
        ("model.nonsense=1", "model.nonsense"),
        ("nosuch.key=1", "[nosuch]"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=1.5", "train.batch_size"),
        ("model.shared_bank=1", "model.shared_bank"),
        ("train.loop=spiral", "train.loop"),
        ("model.n_heads=3", "model.n_heads"),
    ],
)
def test_bad_overrides_name_the_key(override, named):
    with pytest.raises(UserError, match=r".*" + named.replace("[", r"\[").replace("]", r"\]")):
        resolve("tiny", [override])


def test_unknown_preset_lists_known_ones():
    with pytest.raises(UserError, match="gpt-cpu"):
        resolve("nope")


def test_override_needs_section_key_value():
    with pytest.raises(UserError):
        parse_override("lr=1")


def test_no_limit_is_spelled_minus_one_and_zero_is_a_limit():
    assert (cfg.TrainConfig().max_steps, cfg.TrainConfig().max_seconds) == (-1, -1.0)
    assert cfg.resolve("tiny", ["train.max_steps=0"]).train.max_steps == 0
    for bad in ("train.max_steps=-2", "train.max_seconds=-0.5", "train.max_seconds=-2"):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            cfg.resolve("tiny", [bad])


def test_a_checkpoint_config_from_when_0_meant_no_limit_reads_as_no_limit():
    old = {"model": {}, "train": {"max_steps": 0, "max_seconds": 0.0, "lr": 1e-3}}
    assert cfg.saved_limits(old, step=500)["train"] == {
        "max_steps": -1,
        "max_seconds": -1.0,
        "lr": 1e-3,
    }
    assert cfg.saved_limits(old, step=0) == old  # a limit of 0 trains no step: still 0
    assert old["train"]["max_steps"] == 0  # the input is not changed
