"""torchrun / DistributedDataParallel: 2 gloo processes on this machine train like one.

What these tests prove: with the same global batch, 2 ranks (each on half of the parallel
streams, gradients averaged by DDP) give the 1-process loss curve within float rounding; rank
0 alone writes the log and checkpoints; a 2-rank run resumes bit-exactly; another process
count may resume it and says so. What they cannot show on 2 cores: a speed-up (see
benchmarks/ddp.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from h2q_tui import checkpoints
from h2q_tui.checkpoints.load import load_model_from
from tests.run_cli import ENV, h2q, h2q_in_process

# train.threads fixed: a bit-exact resume needs one thread count (auto times steps)
TINY = ["--no-ui", "--preset", "tiny", "--set", "train.precision=fp32", "--threads", "1"]


def torchrun(*args: str, cwd: Path, ranks: int = 2) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={ranks}", "-m", "h2q_tui", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_two_ranks_train_like_one_with_the_same_global_batch(tmp_path: Path) -> None:
    two = torchrun(*TINY, "--max-steps", "30", "--run-dir", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = h2q_in_process(*TINY, "--max-steps", "30", "--run-dir", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "training on 2 processes (DistributedDataParallel over gloo)" in two.stdout
    assert two.stdout.count("run dir:") == 1  # rank 1 prints nothing

    started = records(tmp_path / "two", "run_started")
    assert len(started) == 1 and started[0]["processes"] == 2  # one writer: rank 0
    steps_two, steps_one = records(tmp_path / "two", "step"), records(tmp_path / "one", "step")
    assert [r["step"] for r in steps_two] == list(range(1, 31))
    assert [r["tokens"] for r in steps_two] == [r["tokens"] for r in steps_one]  # global counts
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["train_loss_nats"] == pytest.approx(b["train_loss_nats"], abs=1e-3)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    assert steps_two[-1]["train_loss_nats"] < steps_two[0]["train_loss_nats"] - 1.0  # it learned
    evals_two, evals_one = records(tmp_path / "two", "eval"), records(tmp_path / "one", "eval")
    assert [e["step"] for e in evals_two] == [e["step"] for e in evals_one]
    for a, b in zip(evals_two, evals_one, strict=True):
        assert a["val_loss_nats"] == pytest.approx(b["val_loss_nats"], abs=1e-3)

    # the checkpoint is the unwrapped module, loadable by every command
    info = checkpoints.read_info(tmp_path / "two", need_state=True)
    assert info.step == 30
    assert checkpoints.load_state(info)["world_size"] == 2
    load_model_from(info)  # strict: a DDP-wrapped state dict ("module.…") would not load


@pytest.mark.slow  # 20 s: two torchrun jobs; two ranks training like one stays in the default run
def test_a_two_rank_run_resumes_exactly_and_another_count_may_go_on(tmp_path: Path) -> None:
    whole = torchrun(*TINY, "--max-steps", "16", "--run-dir", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = torchrun(*TINY, "--max-steps", "8", "--run-dir", "split", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = torchrun("--no-ui", "--resume", "split", "--max-steps", "16", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumes on" not in again.stdout  # the same count: nothing to say
    losses = {
        name: {r["step"]: r["train_loss_nats"] for r in records(tmp_path / name, "step")}
        for name in ("whole", "split")
    }
    assert [losses["split"][s] for s in range(9, 17)] == [losses["whole"][s] for s in range(9, 17)]

    alone = h2q("--no-ui", "--resume", "split", "--max-steps", "18", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert "this run trained on 2 processes and resumes on 1 process: allowed" in alone.stdout


@pytest.mark.slow  # ~5 s: torchrun start-up for one refusal
def test_a_batch_that_does_not_split_over_the_ranks_is_one_line(tmp_path: Path) -> None:
    result = torchrun(
        *TINY, "--set", "train.batch_size=5", "--max-steps", "2", "--run-dir", "odd", cwd=tmp_path
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("h2q-tui: error")]
    assert lines == [
        "h2q-tui: error: train.batch_size 5 does not split over 2 processes: use a multiple of "
        "2 (each process trains on batch_size / processes windows)"
    ]
    assert "exitcode  : 2" in result.stderr  # the worker's own exit status, torchrun reports it
    assert not (tmp_path / "odd" / "checkpoints").exists()


def test_the_dashboard_under_torchrun_asks_for_no_ui(tmp_path: Path, monkeypatch) -> None:
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)  # what torchrun sets for each worker
    result = h2q_in_process("--preset", "tiny", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "h2q-tui: error: under torchrun the trainer runs headless: add --no-ui (watch it with "
        "h2q-tui attach RUN_DIR)"
    ]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # two processes compiling on 2 cores: ~30 s
def test_two_compiled_ranks_train_like_one_eager_process(tmp_path: Path) -> None:
    """train.compile under torchrun compiles the DDP-wrapped module on every rank; the curve
    is the eager 1-process one and the checkpoint is still the plain module."""
    compiled = [*TINY, "--set", "train.compile=true", "--max-steps", "6"]
    two = torchrun(*compiled, "--run-dir", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "torch.compile: compiling" in two.stdout and "failed" not in two.stdout
    one = h2q(*TINY, "--max-steps", "6", "--run-dir", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    steps_two, steps_one = records(tmp_path / "two", "step"), records(tmp_path / "one", "step")
    assert len(steps_two) == len(steps_one) == 6
    for a, b in zip(steps_two, steps_one, strict=True):
        assert a["train_loss_nats"] == pytest.approx(b["train_loss_nats"], abs=1e-3)
    load_model_from(checkpoints.read_info(tmp_path / "two"))  # no "_orig_mod." / "module."
