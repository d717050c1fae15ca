"""Never lose work: stop signals save, one writer per run dir, poisoned or damaged checkpoints
are never used, a full disk is one clear line. Signals, locks and the full disk run the real CLI
in a subprocess; the checkpoint cases call its entry point in this process, on copies of one
run trained once per module."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_cli import ENV, h2q, h2q_in_process
from test_bad_input import TEXT, assert_user_error

TINY = ["--preset", "tiny", "--data", "data.txt"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "data.txt").write_bytes(TEXT)
    return tmp_path


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def latest_step(run: Path) -> int:
    name = (run / "checkpoints" / "latest").read_text().strip()
    return int(name.split("_")[1])


def start_long_run(workdir: Path, run: str, *extra: str) -> subprocess.Popen:
    """A --no-ui run that would go on for a long time, once it has logged a few steps."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "h2q_tui",
            "--no-ui",
            *TINY,
            "--run-dir",
            run,
            "--max-steps",
            "100000",
        ]
        + list(extra),
        cwd=workdir,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = workdir / run / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if metrics.is_file() and sum(1 for r in metrics.open() if '"event":"step"' in r) >= 5:
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the run did not start training within 90 s")


@pytest.fixture(scope="module")
def eight_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 8 steps with a checkpoint every 2 (steps 4, 6 and 8 kept), trained once."""
    root = tmp_path_factory.mktemp("eight")
    (root / "data.txt").write_bytes(TEXT)
    return small_run(root, "run", 8)


@pytest.fixture
def run(eight_steps: Path, workdir: Path) -> Path:
    """This test's own copy of the 8-step run, as workdir/run."""
    return Path(shutil.copytree(eight_steps, workdir / "run"))


def h2q_here(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (no torch start-up): these cases test checkpoints, not processes."""
    return h2q_in_process(*args, cwd=workdir)


def small_run(workdir: Path, run: str, steps: int = 6, *extra: str) -> Path:
    result = h2q_here(
        workdir, "--no-ui", *TINY, "--run-dir", run, "--max-steps", str(steps),
        "--set", "log.checkpoint_interval=2", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return workdir / run


@pytest.mark.parametrize(("signum", "code", "reason"), [(signal.SIGTERM, 143, "terminated"), pytest.param(signal.SIGHUP, 129, "hangup", marks=pytest.mark.slow)])  # fmt: skip  # SIGHUP: test_process_end closes a real terminal
def test_a_stop_signal_saves_at_the_interrupted_step(workdir, signum, code, reason):
    proc = start_long_run(workdir, "run")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "stopping after this step, then saving a checkpoint" in err
    finished = records(workdir / "run")[-1]
    assert finished["event"] == "run_finished" and finished["reason"] == reason
    assert latest_step(workdir / "run") == finished["step"] > 0
    notices = [r["message"] for r in records(workdir / "run") if r["event"] == "notice"]
    assert any("saving checkpoint" in m for m in notices), notices


def test_a_second_process_on_a_locked_run_dir_exits_2_naming_the_holder(workdir):
    proc = start_long_run(workdir, "run")
    try:
        for args in (["--no-ui", *TINY, "--run-dir", "run"], ["--no-ui", "--resume", "run"]):
            result = h2q_here(workdir, *args)  # this process is the second one
            assert_user_error(result, "in use", f"PID {proc.pid}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    steps = [r["step"] for r in records(workdir / "run") if r["event"] == "step"]
    assert steps == sorted(steps), "another writer interleaved its steps"
    result = h2q_here(workdir, "--no-ui", "--resume", "run", "--max-steps", str(max(steps) + 2))
    assert result.returncode == 0, result.stderr  # the lock went with its process


def test_a_poisoning_update_is_never_saved_as_latest(workdir, run):
    result = h2q_here(
        workdir, "--no-ui", "--resume", "run", "--max-steps", "14",
        "--set", "train.lr=1e6", "--set", "log.checkpoint_interval=1",
    )  # fmt: skip
    assert result.returncode == 1  # finished because of NaN weights
    assert "nothing is saved" in result.stdout
    assert latest_step(run) == 8
    evaluated = h2q_here(workdir, "eval", "run", "--data", "data.txt", "--windows", "4")
    assert evaluated.returncode == 0 and "bpb=nan" not in evaluated.stdout


def test_eval_of_diverged_weights_is_an_error_not_bpb_nan(workdir, run):
    import torch
    from safetensors.torch import load_file, save_file

    weights = run / "checkpoints" / "step_00000004" / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    metadata.pop("checksums")  # a checkpoint of a diverged run, not a damaged file
    save_file(tensors, weights, metadata=metadata)
    result = h2q_here(workdir, "eval", str(weights.parent), "--data", "data.txt", "--windows", "4")
    assert_user_error(result, "unusable", f"tensor {name} holds NaN or Inf")


def test_a_flipped_bit_is_caught_and_resume_falls_back_saying_which(workdir, run):
    damaged = run / "checkpoints" / "step_00000008" / "model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-64] ^= 0x04  # one bit inside the last tensor
    damaged.write_bytes(bytes(data))
    result = h2q_here(workdir, "eval", str(damaged.parent), "--data", "data.txt")
    assert_user_error(result, "does not match its checksum")
    result = h2q_here(workdir, "eval", "run", "--data", "data.txt", "--windows", "2")
    assert result.returncode == 0 and "using step_00000006" in result.stderr
    result = h2q_here(workdir, "--no-ui", "--resume", "run", "--max-steps", "9")
    assert result.returncode == 0, result.stderr
    assert "using step_00000006" in result.stdout
    assert records(run)[-1]["step"] == 9 and latest_step(run) == 9


@pytest.mark.parametrize(
    "pointer",
    [
        b"../../../etc\n",
        pytest.param(b"\xff\xfe\n", marks=pytest.mark.slow),  # the same refusal as ../ (6 s each)
        pytest.param(b"step_00000099\n", marks=pytest.mark.slow),
    ],
)
def test_latest_may_only_name_a_checkpoint_of_its_own_folder(workdir, run, pointer):
    (run / "checkpoints" / "latest").write_bytes(pointer)
    result = h2q_here(workdir, "eval", "run", "--data", "data.txt", "--windows", "2")
    assert result.returncode == 0, result.stderr
    assert "using step_00000008" in result.stderr


@pytest.mark.parametrize(
    "name", ["run/checkpoints/latest", pytest.param("run/checkpoints", marks=pytest.mark.slow)]
)
def test_the_latest_pointer_or_checkpoints_folder_named_directly_means_the_run(workdir, run, name):
    result = h2q_here(workdir, "eval", name, "--data", "data.txt", "--windows", "2")
    assert result.returncode == 0, result.stderr
    assert "step 8" in result.stderr + result.stdout


def test_resume_from_a_step_folder_continues_that_run_from_that_step(workdir, run):
    result = h2q_here(workdir, "--no-ui", "--resume", "run/checkpoints/step_00000004", "--max-steps", "6")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (run / "checkpoints" / "step_00000004" / "run.json").exists()  # no nested run
    started = [r for r in records(run) if r["event"] == "run_started"][-1]
    assert started["start_step"] == 4 and latest_step(run) == 6
    aside = list((run / "checkpoints").glob("superseded-*/step_00000008"))
    assert aside, "the later checkpoint of the abandoned branch is kept aside, not deleted"


def test_leftovers_of_dead_writers_are_removed_and_keep_and_best_hold(workdir):
    run = small_run(workdir, "run", 8, "--set", "log.keep_checkpoints=2", "--set", "eval.heldout_interval=2")  # fmt: skip
    root = run / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000006", "step_00000008"]
    from safetensors import safe_open

    with safe_open(str(root / "best" / "model.safetensors"), framework="pt") as handle:
        assert float(handle.metadata()["heldout_loss_nats"]) > 0
    for leftover in (".tmp-step_00000010-999999", ".old-step_00000004-999998"):
        (root / leftover).mkdir()
        (root / leftover / "model.safetensors").write_bytes(b"half")
    (root / ".latest.999997").write_text("step_00000002")
    result = h2q_here(workdir, "--no-ui", "--resume", "run", "--max-steps", "9")
    assert result.returncode == 0, result.stderr
    assert not list(root.glob(".tmp-*")) + list(root.glob(".old-*")) + list(root.glob(".latest.*"))


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(workdir):
    disk = workdir / "small"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        why = mounted.stderr.decode(errors="replace").strip()
        pytest.skip(f"full-disk drill NOT RUN: mounting a small tmpfs needs root here ({why})")
    try:
        result = h2q(
            "--no-ui", *TINY, "--run-dir", "small/run", "--max-steps", "100000",
            "--set", "log.checkpoint_interval=5", cwd=workdir,
        )  # fmt: skip
        assert_user_error(result, "disk full")
        run = disk / "run"
        root = run / "checkpoints"
        assert not list(root.glob(".tmp-*")), "a partial checkpoint folder was left"
        for line in (run / "metrics.jsonl").read_text().splitlines():
            json.loads(line)  # no torn line
        shutil.copytree(root / f"step_{latest_step(run):08d}", workdir / "kept")
        evaluated = h2q_here(workdir, "eval", "kept", "--data", "data.txt", "--windows", "2")
        assert evaluated.returncode == 0, evaluated.stderr
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_failed_metrics_write_leaves_no_torn_line(tmp_path, monkeypatch):
    import errno
    import os

    from h2q_tui.errors import UserError
    from h2q_tui.training import events
    from h2q_tui.training.writers import JsonlWriter

    writer = JsonlWriter(tmp_path)
    writer(events.RunPaused(1))
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(UserError, match="disk full"):
        writer(events.RunResumed(2))
    monkeypatch.setattr(os, "write", real_write)
    writer(events.RunResumed(3))  # dropped: the run is ending
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"event":"paused","step":1}\n'


def test_a_torn_last_line_of_a_killed_writer_is_closed_on_open(tmp_path):
    from h2q_tui.training import events
    from h2q_tui.training.tail import JsonlTailer
    from h2q_tui.training.writers import JsonlWriter

    (tmp_path / "metrics.jsonl").write_text('{"event":"paused","step":1}\n{"event":"res')
    writer = JsonlWriter(tmp_path)
    writer(events.RunResumed(2))
    writer.close()
    tailer = JsonlTailer(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in tailer.read_new()] == [1, 2]
    assert tailer.skipped_lines == 1


@pytest.mark.parametrize(("signum", "code", "reason"), [(signal.SIGTERM, 143, "terminated"), pytest.param(signal.SIGHUP, 129, "hangup", marks=pytest.mark.slow)])  # fmt: skip  # SIGHUP: test_process_end's closing-the-terminal test in the default run
def test_a_stop_signal_under_the_dashboard_saves_then_exits(workdir, signum, code, reason):
    """The dashboard in a real pseudo-terminal, training; then `kill` or a dropped session."""
    import os
    import pty

    master, slave = pty.openpty()
    os.set_blocking(master, False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "h2q_tui", *TINY, "--run-dir", "run", "--autostart"],
        cwd=workdir,
        env={**ENV, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    metrics = workdir / "run" / "metrics.jsonl"

    def drain() -> None:
        try:
            while os.read(master, 65536):
                pass
        except OSError:
            pass

    try:
        deadline = time.monotonic() + 90
        while not (metrics.is_file() and metrics.read_text().count('"event":"step"') >= 5):
            assert time.monotonic() < deadline and proc.poll() is None, "no training steps"
            drain()
            time.sleep(0.2)
        proc.send_signal(signum)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            drain()
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.wait() == code
    finished = records(workdir / "run")[-1]
    assert finished["event"] == "run_finished" and finished["reason"] == reason
    assert latest_step(workdir / "run") == finished["step"] > 0
