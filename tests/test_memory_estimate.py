"""The training-memory check: activation checkpointing in the estimate, and offered when it
is what would make a MicroStream run fit."""

from __future__ import annotations

import dataclasses

import pytest

from h2q_tui.config import resolve
from h2q_tui.errors import UserError
from h2q_tui.models import memory


def with_checkpointing(config, value: bool):
    return dataclasses.replace(config, model=dataclasses.replace(config.model, checkpointing=value))


def test_checkpointing_lowers_the_estimate_only_where_it_applies():
    for preset, applies in (("microstream", True), ("h2q-transformer", True), ("gpt", False)):
        config = resolve(preset)
        kept = memory.training_bytes(with_checkpointing(config, False))
        light = memory.training_bytes(with_checkpointing(config, True))
        assert (light < kept) is applies, preset


def test_a_run_that_fits_only_checkpointed_is_told_so(monkeypatch):
    config = with_checkpointing(resolve("microstream", ["train.batch_size=4096"]), False)
    kept = memory.training_bytes(config)
    light = memory.training_bytes(with_checkpointing(config, True))
    have = (kept + light) // 2
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": (have, "this machine has"))
    with pytest.raises(UserError) as refused:
        memory.check_training_memory(config)
    line = str(refused.value)
    assert "\n" not in line and "--set model.checkpointing=true would need ~" in line
    assert memory.check_training_memory(with_checkpointing(config, True)) == light  # it fits


def test_no_checkpointing_hint_where_it_would_not_fit_either(monkeypatch):
    config = resolve("microstream", ["train.batch_size=4096"])
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": (10**6, "this machine has"))
    with pytest.raises(UserError, match="available: lower model.d_model") as refused:
        memory.check_training_memory(config)
    assert "checkpointing" not in str(refused.value)
