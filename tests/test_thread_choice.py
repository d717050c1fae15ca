"""Threads: the OpenMP wait policy is set before torch loads, training's thread count is
chosen from timed steps (injected here) and said with its reason, overrides are honoured,
and hotstart's in-process phases run on the count its header states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from h2q_tui.app.widgets import system_text
from h2q_tui.system import openmp, thread_choice
from h2q_tui.system.monitor import SystemSnapshot
from h2q_tui.system.thread_choice import StepThreadChooser
from h2q_tui.training import events
from h2q_tui.training.history import RunHistory
from h2q_tui.training.records import record_problem
from h2q_tui.training.writers import ConsolePrinter

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = SystemSnapshot(
    time=0.0,
    host_cpu_percent=10.0,
    process_cpu_percent=99.0,
    process_rss_bytes=1 << 20,
    host_ram_used_bytes=1 << 30,
    host_ram_total_bytes=1 << 31,
    gpus=(),
    cuda_allocated_bytes=None,
    cuda_reserved_bytes=None,
    gpu_status="no NVIDIA driver",
)

# Runs an entry point as the user does, with torch's import replaced by a check of what the
# environment says at that moment; prints it as JSON and stops.
PROBE = """
import builtins, json, os, sys
real_import = builtins.__import__
def checking_import(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY")}), flush=True)
        os._exit(0)
    return real_import(name, *args, **kwargs)
builtins.__import__ = checking_import
sys.argv = ["h2q-tui", *sys.argv[1:]]
if sys.argv[1] == "-m":
    import runpy
    sys.argv = sys.argv[1:]
    runpy.run_module("h2q_tui", run_name="__main__")
else:
    from h2q_tui.cli.main import main
    main(sys.argv[1:])
"""


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Trainers here set this process's torch thread count; later tests get theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def policy_at_torch_import(entry: str, env_policy: str | None) -> str | None:
    """OMP_WAIT_POLICY as ``import torch`` first runs in a fresh ``h2q-tui --version``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    argv = ["-m", "--version"] if entry == "module" else ["--version"]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["policy"]


@pytest.mark.parametrize("entry", ["script", "module"])
def test_the_entry_points_set_passive_waiting_before_torch_loads_and_keep_the_users(entry):
    assert policy_at_torch_import(entry, None) == "PASSIVE"
    assert policy_at_torch_import(entry, "ACTIVE") == "ACTIVE"


def test_the_policy_says_who_set_it_and_whether_it_came_too_late():
    env: dict[str, str] = {}
    ours = openmp.prefer_passive_waiting(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"} and not ours.set_by_user
    assert not ours.in_effect  # torch is loaded in this test process
    assert "set by h2q-tui" in ours.describe() and "loaded before" in ours.describe()
    theirs = openmp.prefer_passive_waiting({"OMP_WAIT_POLICY": "active"})
    assert theirs.value == "active" and theirs.set_by_user and theirs.in_effect
    assert "set by you" in theirs.describe()


# ----------------------------------------------------------------------------- the chooser
def run_chooser(chooser: StepThreadChooser, seconds_at: dict[int, float], steps: int):
    """Drive the chooser with step times that depend only on the thread count."""
    used, chosen = [], []
    for _ in range(steps):
        threads = chooser.threads_for_next_step()
        used.append(threads)
        choice = chooser.observe(seconds_at[threads])
        if choice is not None:
            chosen.append(choice)
    return used, chosen


@pytest.mark.parametrize("faster", [1, 4])
def test_the_chooser_picks_the_faster_count_from_the_timed_steps(faster):
    chooser = StepThreadChooser(4, settle_steps=1, probe_steps=3)
    seconds = {1: 0.2, 4: 0.5} if faster == 1 else {1: 0.5, 4: 0.2}
    used, chosen = run_chooser(chooser, seconds, 12)
    assert used[:7] == [4, 1, 4, 1, 4, 1, 4]  # settle on N, then 1 and N interleaved
    assert [c.threads for c in chosen] == [faster]
    assert used[7:] == [faster] * 5
    assert "200 ms a step" in chosen[0].reason and "2.50x slower" in chosen[0].reason


def test_the_chooser_measures_again_when_the_step_time_drifts():
    chooser = StepThreadChooser(2, settle_steps=0, probe_steps=2, window=5, drift=1.5)
    used, chosen = run_chooser(chooser, {1: 0.3, 2: 0.1}, 10)  # quiet: 2 threads win
    assert [c.threads for c in chosen] == [2]
    used, chosen = run_chooser(chooser, {1: 0.3, 2: 0.12}, 10)  # within the margin: no change
    assert chosen == [] and set(used) == {2}
    # the machine got busy: 2 threads now take 1 s a step, 1 thread 0.35 s
    used, chosen = run_chooser(chooser, {1: 0.35, 2: 1.0}, 14)
    assert [c.threads for c in chosen] == [1]
    assert "rose from 100 ms to 1000 ms" in chosen[0].reason
    # the window's median crosses the margin on the third slow step; then 1, 2, 1, 2 are timed
    assert used[:3] == [2, 2, 2] and used[3:7] == [1, 2, 1, 2] and used[7:] == [1] * 7


def test_one_core_means_one_thread_and_no_probing():
    chooser = StepThreadChooser(1)
    used, chosen = run_chooser(chooser, {1: 0.1}, 30)
    assert set(used) == {1} and chosen == []
    assert "1 core" in chooser.choice.reason


def test_training_threads_fixed_by_the_user_or_on_a_gpu_are_not_probed(monkeypatch):
    monkeypatch.setattr(thread_choice, "usable_cores", lambda: 8)
    chooser, choice = thread_choice.for_training(3, "cpu")
    assert chooser is None and choice.threads == 3 and choice.set_by_user
    assert "set by you" in choice.reason
    chooser, choice = thread_choice.for_training(0, "cuda")
    assert chooser is None and choice.threads == 8
    chooser, choice = thread_choice.for_training(0, "cpu", local_processes=2)
    assert chooser is not None and chooser.cores == 4 and "8 cores shared by 2" in choice.reason
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: the ranks on this machine
    assert thread_choice.local_process_count(fallback=8) == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert thread_choice.local_process_count(fallback=2) == 2


# ----------------------------------------------------------------------------- the trainer
def make_trainer(tmp_path, text_file, overrides, log):
    from h2q_tui.config import resolve
    from h2q_tui.data.sources import load_corpus
    from h2q_tui.training.trainer import Trainer

    config = resolve("tiny", [*overrides, "eval.heldout_interval=0", "log.sample_interval=0"])
    corpus = load_corpus(str(text_file), heldout_fraction=0.1)
    return Trainer(config, corpus, tmp_path / "run", log.append, preset="tiny")


def test_auto_threads_time_real_steps_and_say_what_they_chose(tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(thread_choice, "usable_cores", lambda: 2)
    log: list[events.Event] = []
    trainer = make_trainer(tmp_path, text_file, ["train.max_steps=10"], log)
    seen: list[int] = []
    original = trainer._forward_backward

    def recording(accum):
        seen.append(torch.get_num_threads())
        return original(accum)

    trainer._forward_backward = recording
    # step times injected: one thread is the faster here, whatever this machine does
    observe = trainer.thread_chooser.observe
    trainer.thread_chooser.observe = lambda step_s: observe(
        0.05 if trainer.thread_chooser._pending == 1 else 0.2
    )
    trainer.run()
    started = next(e for e in log if isinstance(e, events.RunStarted))
    assert started.threads == 2 and started.threads_reason.startswith("auto: timing")
    (chosen,) = [e for e in log if isinstance(e, events.ThreadsChosen)]
    assert chosen.step == 7 and chosen.threads == 1 and "50 ms a step on 1 thread" in chosen.reason
    assert seen == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1]  # the plan ran on those counts
    for event in (started, chosen):  # both are valid records for the dashboard and attach
        assert record_problem(json.loads(json.dumps(event.to_record()))) is None
    history = RunHistory()
    for event in (started, chosen):
        history.add(event.to_record())
    assert history.threads_text.startswith("1 thread — auto (measured at the start)")
    pane = system_text(SNAPSHOT, history).plain  # the System pane says the count and why
    assert "training 1 · generation 1 (batch-1 decoding)" in pane
    assert "Threads chosen    auto (measured at the start): 50 ms a step on 1 thread" in pane


def test_train_threads_is_honoured_and_reported_as_set_by_you(tmp_path, text_file):
    log: list[events.Event] = []
    trainer = make_trainer(tmp_path, text_file, ["train.max_steps=3", "train.threads=1"], log)
    seen: list[int] = []
    original = trainer._forward_backward
    trainer._forward_backward = lambda accum: (
        seen.append(torch.get_num_threads()),
        original(accum),
    )[1]
    torch.set_num_threads(2)  # as a decoder on another thread might
    trainer.run()
    started = next(e for e in log if isinstance(e, events.RunStarted))
    assert started.threads == 1 and started.threads_reason.startswith("set by you")
    assert seen == [1, 1, 1] and not [e for e in log if isinstance(e, events.ThreadsChosen)]
    printed = []
    printer = ConsolePrinter(1)
    printer._print = printed.append
    printer(started)
    assert "threads 1 thread — set by you (train.threads / --threads)" in printed


def test_threads_flag_is_train_threads(monkeypatch):
    from h2q_tui.cli import main as cli
    from h2q_tui.cli import train

    seen = {}
    monkeypatch.setattr(
        train, "run_headless", lambda args: seen.setdefault("o", args.overrides) and 0
    )
    cli.dispatch(["--no-ui", "--threads", "3"])
    assert seen["o"] == ["train.threads=3"]


# ----------------------------------------------------------------------------- hotstart
def test_hotstart_in_process_runs_on_the_thread_count_its_header_states(tmp_path, monkeypatch):
    from h2q_tui import checkpoints
    from h2q_tui.cli.hotstart import format_report
    from h2q_tui.config import ModelConfig, RunConfig
    from h2q_tui.hotstart import measure as command
    from h2q_tui.hotstart import phases
    from h2q_tui.models import build_model

    model_config = ModelConfig(
        family="microstream", d_model=64, n_layers=2, n_heads=2, context=16, factor_size=8
    )
    checkpoints.save_checkpoint(
        tmp_path / "run", build_model(model_config), RunConfig(model=model_config), 3, "r1", {}
    )
    seen: list[int] = []
    load = phases.load_for_first_token

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return load(*args, **kwargs)

    monkeypatch.setattr(phases, "load_for_first_token", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # torch's default on a 2-core machine
    try:
        report = command.measure(
            command.Request(str(tmp_path / "run"), repeats=2, columns=("in_process",))
        )
        assert torch.get_num_threads() == 2  # given back as it was
    finally:
        torch.set_num_threads(before)
    assert report["threads"] == 1 and seen == [1, 1]
    assert "batch-1 decoding" in report["threads_reason"]
    assert "1 decoding thread(s) in every column (batch-1" in format_report(report)
