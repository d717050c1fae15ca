"""The GPU path: TF32, pinned batches, benchmarks/gpu.py. Tests marked ``gpu`` need CUDA and
skip without it; the others check the same code on the CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from h2q_tui.system import hardware
from h2q_tui.system.monitor import NvmlReader

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def tf32_flags():
    """Leave torch's TF32 switches as they were."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("capability, expected", [((8, 0), True), ((9, 0), True), ((7, 5), False)])
def test_tf32_only_from_ampere_on(monkeypatch, tf32_flags, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    assert hardware.enable_tf32(torch.device("cuda")) is expected
    assert torch.backends.cuda.matmul.allow_tf32 is expected
    assert torch.backends.cudnn.allow_tf32 is expected


def test_tf32_never_on_a_cpu(tf32_flags):
    torch.backends.cuda.matmul.allow_tf32 = False
    assert hardware.enable_tf32(torch.device("cpu")) is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_a_cpu_batch_stays_as_it_is():
    batch = torch.arange(6).view(2, 3)
    assert hardware.to_device(batch, torch.device("cpu")) is batch


def run_benchmark(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "bench-gpu.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args, "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path), out


@pytest.mark.slow  # ~4 s: a benchmark script end to end
def test_gpu_benchmark_runs_its_code_path_on_the_cpu(tmp_path):
    result, out = run_benchmark(
        tmp_path, "--device", "cpu", "--presets", "tiny", "--steps", "2", "--warmup", "1"
    )
    assert result.returncode == 0, result.stderr
    assert "| tiny |" in result.stdout and "matmul peak (" in result.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
    assert row["flops_per_token"] > 1e4 and math.isfinite(row["final_loss_nats"])
    assert row["peak_reserved_bytes"] is None  # no CUDA memory on a CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_benchmark_without_cuda_says_so(tmp_path):
    result, _ = run_benchmark(tmp_path, "--presets", "tiny")
    assert result.returncode == 2
    assert result.stderr.strip() == "benchmarks/gpu.py: no CUDA GPU here; nothing to measure"


# ----------------------------------------------------------------------------- on a real GPU
@pytest.mark.gpu
@needs_cuda
def test_trainer_trains_on_the_gpu_with_its_precision(tmp_path, text_file):
    from h2q_tui.config import resolve
    from h2q_tui.data.sources import load_corpus
    from h2q_tui.training import events
    from h2q_tui.training.trainer import Trainer

    config = resolve("tiny", ["train.max_steps=6", "log.sample_interval=0"])
    log: list = []
    trainer = Trainer(
        config, load_corpus(str(text_file), heldout_fraction=0.1), tmp_path, log.append
    )
    assert trainer.device.type == "cuda"
    assert trainer.precision.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert trainer.run() == "max_steps"
    steps = [e for e in log if isinstance(e, events.StepCompleted)]
    assert len(steps) == 6 and all(math.isfinite(s.train_loss_nats) for s in steps)
    assert steps[-1].cuda_reserved_bytes and steps[-1].cuda_allocated_bytes
    if torch.cuda.get_device_capability()[0] >= 8:
        assert torch.backends.cuda.matmul.allow_tf32
        assert "TF32" in trainer.precision.reason


@pytest.mark.gpu
@needs_cuda
def test_nvml_reads_the_gpu_torch_sees():
    reader = NvmlReader()
    gpus = reader.read_gpus()
    assert len(gpus) == torch.cuda.device_count(), reader.status
    first = gpus[0]
    assert first.name and torch.cuda.get_device_name(0) in first.name
    assert first.memory_total_bytes == pytest.approx(
        torch.cuda.get_device_properties(0).total_memory, rel=0.05
    )
    assert first.temperature_c is not None and first.power_watts is not None


@pytest.mark.gpu
@needs_cuda
def test_gpu_benchmark_on_the_gpu(tmp_path):
    result, out = run_benchmark(tmp_path, "--presets", "tiny", "--steps", "3", "--warmup", "1")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["peak_allocated_bytes"] > 0 and row["tokens_per_s"] > 0
    assert json.loads(out.read_text())["nvml"], "NVML saw no GPU"
