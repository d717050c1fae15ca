"""Run dirs, checkpoints and the files around them under hostile input: a path inside a run
means that run and its lock, a full disk at start leaves nothing, weights that cannot compute
(NaN/Inf, overflowing, not floats) are refused at load, links out of a run are never
followed, nothing we did not write is echoed or deleted, and every file of a run gets one mode.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import torch
from ollama_helpers import LiveServer, make_run
from run_cli import h2q
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_bad_input import TEXT, assert_user_error, cli_in_process
from test_reliability import latest_step, records, small_run, start_long_run

from h2q_tui.checkpoints import save_checkpoint, tensor_checksums
from h2q_tui.config import resolve
from h2q_tui.models import build_model


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "data.txt").write_bytes(TEXT)
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A --preset tiny run of 4 steps (checkpoints at 2 and 4), trained once for the module."""
    root = tmp_path_factory.mktemp("trained")
    (root / "data.txt").write_bytes(TEXT)
    return small_run(root, "run", 4)


@pytest.fixture
def run(trained: Path, workdir: Path) -> Path:
    """A copy of the trained run in this test's own folder."""
    return Path(shutil.copytree(trained, workdir / "run", symlinks=True))


def rewrite_weights(weights: Path, change) -> None:
    """Change the tensors of a checkpoint and give it checksums that match: a file that
    passes the damage check, whose values are the problem."""
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(weights)
    change(tensors)
    metadata["checksums"] = json.dumps(tensor_checksums(tensors))
    save_file(tensors, weights, metadata=metadata)


def with_nan(tensors: dict) -> None:
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[-1] = float("inf")  # one value, at the very end of the tensor


def too_large(tensors: dict) -> None:
    for name, tensor in tensors.items():
        tensors[name] = tensor * 1e30  # finite (fp32 holds 3e38), but the forward overflows


def as_dtype(dtype):
    def change(tensors: dict) -> None:
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].to(dtype)

    return change


# ----------------------------------------------------------------------------- paths in a run
@pytest.mark.parametrize("name", ["run/checkpoints/latest", "run/checkpoints"])
def test_resume_of_a_path_inside_the_run_continues_that_run(run, workdir, name):
    result = cli_in_process(workdir, "--no-ui", "--resume", name, "--max-steps", "6")
    assert result.returncode == 0, result.stderr
    assert latest_step(run) == 6
    started = [r for r in records(run) if r["event"] == "run_started"][-1]
    assert started["start_step"] == 4
    inner = run / "checkpoints"
    assert not (inner / "metrics.jsonl").exists() and not (inner / "checkpoints").exists()
    assert not (inner / ".lock").exists() and not (inner / "run.json").exists()


def test_a_path_inside_a_run_in_use_is_refused_naming_the_holder(workdir):
    proc = start_long_run(workdir, "run")
    try:
        for name in ("run/checkpoints/latest", "run/checkpoints"):
            result = cli_in_process(workdir, "--no-ui", "--resume", name, "--max-steps", "3")
            assert_user_error(result, "in use", f"PID {proc.pid}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert not (workdir / "run" / "checkpoints" / "metrics.jsonl").exists()


def test_a_new_run_inside_a_runs_checkpoints_is_refused(run, workdir):
    for run_dir in ("run/checkpoints", "run/checkpoints/nested"):
        result = cli_in_process(workdir, "--no-ui", "--preset", "tiny", "--data", "data.txt",
                                "--run-dir", run_dir, "--max-steps", "1")  # fmt: skip
        assert_user_error(result, "inside the checkpoints of run", "--resume run")
    assert not (run / "checkpoints" / "nested").exists()
    assert not (run / "checkpoints" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- a full disk
def fail_the_lock_write(monkeypatch) -> None:
    """os.write of the lock file's PID fails as on a full disk; every other write works."""
    from h2q_tui.checkpoints import run_lock

    real_write = os.write
    pid_line = f"{os.getpid()}\n".encode()

    def write(fd, data):
        if bytes(data) == pid_line:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(run_lock.os, "write", write)


def test_a_fresh_run_on_a_full_disk_is_one_line_and_leaves_nothing(workdir, monkeypatch):
    fail_the_lock_write(monkeypatch)
    result = cli_in_process(workdir, "--no-ui", "--preset", "tiny", "--data", "data.txt",
                            "--run-dir", "runs/new", "--max-steps", "2")  # fmt: skip
    assert_user_error(result, "disk full", ".lock")
    assert "--resume" not in result.stderr  # there is nothing to resume
    assert not (workdir / "runs").exists(), list((workdir / "runs").rglob("*"))


def test_a_fresh_run_on_a_full_tmpfs_is_one_line_and_leaves_nothing(workdir):
    disk = workdir / "small"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with open(disk / "filler", "wb", buffering=0) as filler:  # fill it to its last byte
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        result = cli_in_process(workdir, "--no-ui", "--preset", "tiny", "--data", "data.txt",
                                "--run-dir", "small/run", "--max-steps", "2")  # fmt: skip
        assert_user_error(result, "disk full")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_while_writing_best_before_any_checkpoint_says_the_true_thing(
    tmp_path, monkeypatch
):
    from h2q_tui.checkpoints import save

    config = resolve("tiny")
    model = build_model(config.model)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(save, "_write_folder", no_space)
    with pytest.raises(Exception) as refused:
        save_checkpoint(tmp_path, model, config, 3, "r", {}, name="best")
    message = str(refused.value)
    assert "disk full" in message and "no checkpoint was saved yet" in message
    assert "--resume" not in message and "intact" not in message
    monkeypatch.undo()
    save_checkpoint(tmp_path, model, config, 4, "r", {})
    monkeypatch.setattr(save, "_write_folder", no_space)
    with pytest.raises(Exception) as refused:
        save_checkpoint(tmp_path, model, config, 5, "r", {}, name="best")
    assert "then --resume (the last good checkpoint is intact)" in str(refused.value)


# ----------------------------------------------------------------------------- unusable weights
UNUSABLE = {
    "inf": (with_nan, ["unusable", "NaN or Inf", "tensor"]),
    # finite weights whose output overflows: found by the first forward pass, before any
    # token is sampled (eval reports it as the non-finite loss it is)
    "too-large": (too_large, ["output is NaN or Inf", "nothing was generated"]),
    "int8": (as_dtype(torch.int8), ["unusable", "int8", "needs floats"]),
    "bool": (as_dtype(torch.bool), ["unusable", "bool", "needs floats"]),
    "int64": (as_dtype(torch.int64), ["unusable", "int64", "needs floats"]),
}
COMMANDS = {
    "generate": ("generate", "{ckpt}", "--prompt", "the", "--max-new-tokens", "4"),
    "hotstart": ("hotstart", "{ckpt}", "--in-process-only", "--repeats", "1"),
    "eval": ("eval", "{ckpt}", "--data", "data.txt", "--windows", "2"),
    "steer-eval": (
        "steer-eval",
        "{ckpt}",
        "--word",
        "dog",
        "--samples",
        "1",
        "--strengths",
        "0",
        "--max-new-tokens",
        "2",
    ),  # fmt: skip
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_weights_that_cannot_compute_are_refused_at_load(run, workdir, kind, command):
    change, words = UNUSABLE[kind]
    folder = run / "checkpoints" / "step_00000004"
    rewrite_weights(folder / "model.safetensors", change)
    before = (folder / "model.safetensors").read_bytes()
    args = [a.replace("{ckpt}", str(folder)) for a in COMMANDS[command]]
    result = cli_in_process(workdir, *args)
    if (kind, command) == ("too-large", "eval"):
        words = ["non-finite loss"]
    assert_user_error(result, *words)
    assert "probability tensor" not in result.stderr
    assert (folder / "model.safetensors").read_bytes() == before


@pytest.mark.slow  # ~9 s: the in-process cases above cover the messages
def test_unusable_weights_through_the_real_cli(run, workdir):
    """The one family of these cases that runs ``python -m h2q_tui`` in a subprocess."""
    folder = run / "checkpoints" / "step_00000004"
    rewrite_weights(folder / "model.safetensors", too_large)
    for args in (("generate", str(folder), "--prompt", "the"), ("hotstart", str(folder))):
        assert_user_error(h2q(*args, cwd=workdir), "output is NaN or Inf")


def test_a_run_whose_latest_diverged_falls_back_saying_which(run, workdir):
    rewrite_weights(run / "checkpoints" / "step_00000004" / "model.safetensors", with_nan)
    result = cli_in_process(workdir, "generate", "run", "--prompt", "the", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert "NaN or Inf" in result.stderr and "using step_00000002" in result.stderr


def test_crystallized_integer_tensors_still_load(run, workdir):
    result = cli_in_process(workdir, "crystallize", "run", "--method", "int8", "--data",
                            "data.txt", "--windows", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = cli_in_process(workdir, "generate", "run/crystal/int8", "--prompt", "the",
                            "--max-new-tokens", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_serve_answers_an_overflowing_model_with_a_json_error(tmp_path):
    from h2q_tui.ollama.models import Registry
    from h2q_tui.ollama.server import Server

    run = make_run(tmp_path, "big")
    rewrite_weights(run / "checkpoints" / "step_00000005" / "model.safetensors", too_large)
    server = Server(Registry.discover([run]))
    with LiveServer(server.app) as live:
        for stream in (False, True):
            response = httpx.post(f"{live.url}/api/generate", timeout=60,
                                  json={"model": "big", "prompt": "the", "stream": stream})  # fmt: skip
            assert response.status_code == 500, response.text
            error = response.json()["error"]
            assert "output is NaN or Inf" in error, error
            assert "probability tensor" not in error


# ----------------------------------------------------------------------------- links
def test_a_step_folder_linked_to_outside_the_run_is_never_used(run, workdir):
    outside = workdir / "elsewhere"
    step4 = run / "checkpoints" / "step_00000004"
    os.rename(step4, outside)
    step4.symlink_to(outside, target_is_directory=True)
    result = cli_in_process(workdir, "generate", "run", "--prompt", "the", "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr
    assert "outside" in result.stderr and "using step_00000002" in result.stderr
    result = cli_in_process(workdir, "--no-ui", "--resume", "run/checkpoints/step_00000004",
                            "--max-steps", "6")  # fmt: skip
    assert_user_error(result, "link to outside")
    assert not (outside / "run.json").exists() and not list(outside.glob(".*"))


def test_a_linked_latest_is_not_followed_and_never_echoed(run, workdir):
    secret = workdir / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENTS step_00000004\n")
    pointer = run / "checkpoints" / "latest"
    pointer.unlink()
    pointer.symlink_to(secret)
    result = cli_in_process(workdir, "eval", "run", "--data", "data.txt", "--windows", "2")
    assert result.returncode == 0, result.stderr
    assert "TOP-SECRET" not in result.stderr + result.stdout
    assert "is a link" in result.stderr


def test_a_foreign_latest_file_is_never_echoed(run, workdir):
    (run / "checkpoints" / "latest").write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = cli_in_process(workdir, "eval", "run", "--data", "data.txt", "--windows", "2")
    assert result.returncode == 0, result.stderr
    assert "root:" not in result.stderr and "using step_00000004" in result.stderr


# ----------------------------------------------------------------------------- files we write
def test_every_file_of_a_run_gets_the_umask_mode(workdir):
    previous = os.umask(0o002)  # this process's: the commands run in it
    try:
        result = cli_in_process(workdir, "--no-ui", "--preset", "tiny", "--data", "data.txt",
                                "--run-dir", "run", "--max-steps", "2",
                                "--set", "log.checkpoint_interval=1")  # fmt: skip
        assert result.returncode == 0, result.stderr
        result = cli_in_process(workdir, "crystallize", "run", "--method", "int8",
                                "--data", "data.txt", "--windows", "2")  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        os.umask(previous)
    modes = {
        str(p.relative_to(workdir)): oct(p.stat().st_mode & 0o777)
        for p in (workdir / "run").rglob("*")
        if p.is_file()
    }
    assert "run/checkpoints/step_00000002/model.safetensors" in modes
    assert "run/crystal/int8/model.safetensors" in modes
    assert set(modes.values()) == {"0o664"}, modes


def test_steer_eval_writes_its_json_where_pruning_never_reaches(run, workdir):
    step = run / "checkpoints" / "step_00000004"
    result = cli_in_process(workdir, "steer-eval", str(step), "--word", "dog", "--samples", "1",
                            "--strengths", "0,1", "--max-new-tokens", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = run / "reports" / "steer-eval-dog-step_00000004.json"
    assert report.is_file() and f"wrote {report}" in result.stderr
    assert not list(step.glob("steer-eval*"))
    assert json.loads(report.read_text())["checkpoint"] == str(step)


def test_crystallize_never_deletes_files_it_did_not_write(run, workdir):
    theirs = workdir / "out" / "int8"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    result = cli_in_process(workdir, "crystallize", "run", "--method", "int8", "--data",
                            "data.txt", "--windows", "2", "--out", "out")  # fmt: skip
    assert_user_error(result, "notes.txt", "did not write")
    assert (theirs / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["int8"]
    (theirs / "notes.txt").unlink()
    for _ in range(2):  # its own folder, written again, is replaced as before
        result = cli_in_process(workdir, "crystallize", "run", "--method", "int8", "--data",
                                "data.txt", "--windows", "2", "--out", "out")  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert (theirs / "model.safetensors").is_file()
