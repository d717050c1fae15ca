"""Precision and device follow what the hardware does fast, and say why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from h2q_tui.errors import UserError
from h2q_tui.system import hardware

CPU = torch.device("cpu")


@pytest.fixture
def slow_bf16_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_fast_bf16", lambda: (False, "this CPU has no fast bf16"))


@pytest.fixture
def amx_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_fast_bf16", lambda: (True, "this CPU has AMX (fast bf16)"))


def test_auto_is_fp32_on_a_cpu_without_fast_bf16(slow_bf16_cpu):
    choice = hardware.choose_precision("auto", CPU)
    assert choice.name == "fp32" and choice.autocast_dtype is None and choice.warning is None
    assert choice.describe() == "precision fp32 — this CPU has no fast bf16"


def test_auto_is_bf16_autocast_on_a_cpu_with_amx(amx_cpu):
    choice = hardware.choose_precision("auto", CPU)
    assert choice.name == "bf16" and choice.autocast_dtype is torch.bfloat16
    assert "AMX" in choice.reason


def test_explicit_bf16_on_a_slow_cpu_trains_but_warns(slow_bf16_cpu):
    choice = hardware.choose_precision("bf16", CPU)
    assert choice.name == "bf16" and "slower" in choice.warning


def test_fp16_is_never_used_on_a_cpu(amx_cpu):
    choice = hardware.choose_precision("fp16", CPU)
    assert choice.name == "fp32" and not choice.needs_grad_scaler and choice.warning


def kernel_cpu_flags() -> set[str]:
    """The CPU flags the Linux kernel reports (the first ``flags`` line of /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        pytest.skip("no /proc/cpuinfo (not Linux): no independent list of CPU flags here")
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo has no flags line (not x86): AMX and AVX512-BF16 are x86 flags")


def test_this_machine_is_named_and_its_bf16_class_matches_the_kernels_cpu_flags():
    flags = kernel_cpu_flags()
    hardware.cpu_fast_bf16.cache_clear()
    info = hardware.machine_info()
    assert info["cpu_model"] and info["torch_capability"]
    assert info["cpu_fast_bf16"] is bool({"amx_bf16", "avx512_bf16"} & flags), sorted(flags)
    reason = hardware.cpu_fast_bf16()[1]
    if "amx_bf16" in flags:
        assert "AMX" in reason
    elif "avx512_bf16" in flags:
        assert "AVX512-BF16" in reason
    else:
        assert "no fast bf16" in reason


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "tpu"])
def test_bad_device_names_are_user_errors(name):
    with pytest.raises(UserError, match="--device"):
        hardware.resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="no CUDA GPU"):
        hardware.resolve_device("cuda")


def test_the_run_records_and_warns_about_its_precision(tmp_path, text_file, slow_bf16_cpu):
    from h2q_tui.config import resolve
    from h2q_tui.data.sources import load_corpus
    from h2q_tui.training import events
    from h2q_tui.training.trainer import Trainer

    config = resolve("tiny", ["train.max_steps=2", "train.precision=bf16"])
    log: list = []
    corpus = load_corpus(str(text_file), None, 0.05)
    Trainer(config, corpus, tmp_path / "run", log.append).run()
    started = next(e for e in log if isinstance(e, events.RunStarted))
    assert started.precision == "bf16" and "no fast bf16" in started.precision_reason
    assert started.machine
    warnings = [e for e in log if isinstance(e, events.NoticeGiven) and "slower" in e.message]
    assert len(warnings) == 1
