"""``h2q_tui.track``: any script's scalars in a run dir that ``attach`` follows live; the
Hugging Face callback; TensorBoard logdirs attached (with and without the extra)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pilot_helpers import text_of, wait_until
from process_helpers import lock_is_free
from run_cli import ENV
from textual.widgets import Static

from h2q_tui import track
from h2q_tui.app.engine_link import AttachedRuns
from h2q_tui.app.shell import make_app
from h2q_tui.cli.main import main as cli_main
from h2q_tui.errors import UserError
from h2q_tui.track import names, tensorboard
from h2q_tui.track.huggingface import H2QCallback
from h2q_tui.training.history import RunHistory

# a plain PyTorch loop: a tiny linear regression, logged with track; it waits at step 10
# until the test has seen those steps and touches the gate
LOOP = """
import sys, time
from pathlib import Path
import torch
from h2q_tui import track

run_dir, gate = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(64, 4)
y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
with track.start(run_dir, config={"lr": 0.1}, max_steps=20) as run:
    for step in range(1, 21):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(step=step, tokens=64 * step, loss=loss.detach(), lr=0.1)
        if step == 10:
            deadline = time.monotonic() + 60
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
"""


def read_until(attached: AttachedRuns, history: RunHistory, done, seconds: float = 60) -> None:
    """Fold the attached log into ``history`` until ``done(history)`` (the reader attach uses)."""
    deadline = time.monotonic() + seconds
    while not done(history):
        assert time.monotonic() < deadline, "the log did not grow"
        for records in attached.read_new().values():
            for record in records:
                assert history.add(record), record
        time.sleep(0.02)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a subprocess that loads torch: 4-12 s on 2 busy cores
def test_a_plain_torch_loop_using_track_is_attached_live(tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    process = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(gate)], env=ENV, stderr=subprocess.PIPE
    )
    try:
        attached, history = AttachedRuns([run_dir]), RunHistory()
        read_until(attached, history, lambda h: len(h.train) >= 10)
        assert len(history.train) == 10 and history.finished is None  # live, mid-run
        assert not lock_is_free(run_dir)
        gate.touch()
        read_until(attached, history, lambda h: h.finished is not None)
        assert process.wait(60) == 0, process.stderr.read().decode()
    finally:
        process.kill()
    assert history.train.step == list(range(1, 21))
    assert history.train.tokens[-1] == 64 * 20
    assert history.train.value[-1] < history.train.value[0] / 10  # it learned
    assert (
        history.finished["reason"] == track.COMPLETED and history.config["train"]["max_steps"] == 20
    )
    assert history.started["config"]["script"] == {"lr": 0.1}
    assert lock_is_free(run_dir)


async def test_attach_shows_a_tracked_runs_loss_on_the_icu_pane(tmp_path):
    run_dir = tmp_path / "mine"
    with track.start(run_dir, config={"batch": 8}) as run:
        for step in range(1, 6):
            run.log(step=step, loss=2.0 / step, learning_rate=1e-3, accuracy=step / 10)
        run.log(step=5, eval_loss=0.875, epoch=1.0)
    app = make_app(attach=[run_dir], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        train = app.query_one("#card-train", Static)
        await wait_until(pilot, lambda: "0.4000" in text_of(train), "the logged loss")
        assert "0.8750" in text_of(app.query_one("#card-heldout", Static))
        assert "1.000e-03" in text_of(app.query_one("#card-lr", Static)).replace(
            "1e-03", "1.000e-03"
        )
        assert "completed" in text_of(app.query_one("#card-state", Static))


def test_records_are_the_trainers_and_bad_values_are_refused(tmp_path):
    run = track.start(tmp_path, config={"path": tmp_path})
    run.log(loss=1.5, grad_norm=0.25, my_metric=7)
    run.log(loss=math.nan, lr=math.inf)
    for bad, kind in (
        ({"loss": "low"}, TypeError),
        ({"loss": None}, TypeError),
        ({"loss": [1.0, 2.0]}, TypeError),
        ({"time": 1.0}, ValueError),
        ({"rss_bytes": 1.5}, ValueError),
        ({"loss": 1e39}, ValueError),  # beyond float32: no chart can draw it
        ({"step": 1, "loss": 1.0}, ValueError),  # steps never go back
        ({"step": 3, "tokens": -1}, ValueError),
    ):
        with pytest.raises(kind) as error:
            run.log(**bad)
        assert "\n" not in str(error.value)
    run.finish("max_steps")
    run.finish()  # again: nothing
    with pytest.raises(ValueError):
        run.log(loss=1.0)
    lines = records(tmp_path)
    assert [r["event"] for r in lines] == ["run_started", "step", "step", "run_finished"]
    assert lines[0]["config"] == {"script": {"path": str(tmp_path)}}
    assert lines[1] | {"time": 0} == {
        "event": "step",
        **{"step": 1, "tokens": 0, "time": 0, "train_loss_nats": 1.5},
        **{"grad_norm": 0.25, "my_metric": 7},
    }
    assert lines[2]["train_loss_nats"] is None and lines[2]["lr"] is None  # as the trainer
    assert lines[3]["reason"] == "max_steps" and lines[3]["step"] == 2
    assert all(RunHistory().add(r) for r in lines)


# a second writer on a run dir the test holds, then a run left open at exit, or at an error
SCRIPT = """
import sys
from h2q_tui import track
from h2q_tui.errors import UserError
try:
    track.start(sys.argv[1])
except UserError as error:
    print(error)
track.start(sys.argv[2]).log(loss=1.0)
if len(sys.argv) > 3:
    raise ValueError("bad batch")
"""


@pytest.mark.slow  # two subprocesses that load torch (through the checkpoints package)
def test_the_lock_refuses_a_second_writer_and_an_open_run_ends_with_the_script(tmp_path):
    held = tmp_path / "held"
    run = track.start(held)
    with pytest.raises(UserError, match="already being logged by this process"):
        track.start(held)
    for ending in ("exits", "raises"):
        argv = [str(held), str(tmp_path / ending)] + (["raise"] if ending == "raises" else [])
        other = subprocess.run(
            [sys.executable, "-c", SCRIPT, *argv],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert f"in use by another h2q-tui process (PID {os.getpid()})" in other.stdout
    run.finish()
    track.start(held).finish()  # free again: a new run appends its own run_started
    assert [r["event"] for r in records(held)].count("run_started") == 2
    assert records(tmp_path / "exits")[-1]["reason"] == track.EXITED
    failed = records(tmp_path / "raises")[-1]
    assert failed["event"] == "run_failed" and failed["message"] == "ValueError: bad batch"
    assert "ValueError: bad batch" in other.stderr  # the script's own traceback still shows


def test_an_error_or_ctrl_c_ends_the_run_as_the_trainer_names_it(tmp_path):
    with pytest.raises(RuntimeError), track.start(tmp_path / "a") as run:
        run.log(loss=1.0)
        raise RuntimeError("out of memory")
    assert records(tmp_path / "a")[-1] == {
        "event": "run_failed",
        **{"step": 1, "message": "RuntimeError: out of memory", "extra": {}},
    }
    with pytest.raises(KeyboardInterrupt), track.start(tmp_path / "b"):
        raise KeyboardInterrupt
    assert records(tmp_path / "b")[-1]["reason"] == track.INTERRUPTED
    assert lock_is_free(tmp_path / "a") and lock_is_free(tmp_path / "b")


def test_names_map_to_the_fields_the_dashboard_charts():
    assert names.field_of("loss") == names.field_of("Loss/train") == ("step", "train_loss_nats")
    for held_out in ("eval_loss", "val/loss", "Loss/val", "test_loss", "Loss_val/Loss"):
        assert names.field_of(held_out) == ("eval", "val_loss_nats")
    assert names.field_of("train/learning_rate") == ("step", "lr")
    assert names.field_of("accuracy") == ("step", "accuracy")
    assert names.fields({"epoch": 2.25}) == ({"epoch": 2, "data_progress": 0.25}, {})
    assert names.fields({"val_acc": 0.5}) == ({"val_acc": 0.5}, {})  # no held-out loss: a step's


def test_the_hugging_face_callback_logs_a_trainers_run(tmp_path):
    callback = H2QCallback()
    args = SimpleNamespace(output_dir=str(tmp_path), to_dict=lambda: {"learning_rate": 5e-5})
    state = SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0)
    callback.on_train_begin(args, state, None)
    for step in (2, 4):
        state.global_step = step
        logs = {"loss": 1.0 / step, "grad_norm": 0.5, "learning_rate": 5e-5, "epoch": step / 4}
        callback.on_log(args, state, None, logs=logs)
    callback.on_log(args, state, None, logs={"eval_loss": 0.9, "eval_runtime": 0.1, "epoch": 1.0})
    callback.on_log(args, state, None, logs={"train_runtime": 3.0, "train_loss": 0.7})
    callback.on_train_end(args, state, None)
    lines = records(tmp_path)
    assert [r["event"] for r in lines] == ["run_started", "step", "step", "eval", "run_finished"]
    assert lines[0]["config"]["script"] == {"learning_rate": 5e-5}
    assert lines[2]["train_loss_nats"] == 0.25 and lines[2]["epoch"] == 1
    assert lines[3]["val_loss_nats"] == 0.9 and lines[3]["step"] == 4
    assert lock_is_free(tmp_path)


def write_tensorboard(logdir: Path, steps: range) -> None:
    """Scalars as a PyTorch script writes them to TensorBoard."""
    summary = pytest.importorskip("torch.utils.tensorboard")
    writer = summary.SummaryWriter(str(logdir))
    for step in steps:
        writer.add_scalar("train/loss", 4.0 / (step + 1), step)
        writer.add_scalar("lr", 0.01, step)
        if step % 2:
            writer.add_scalar("Loss/val", 3.0 / (step + 1), step)
    writer.close()


def test_tensorboard_event_files_are_read_back_as_records(tmp_path):
    pytest.importorskip("tensorboard")
    write_tensorboard(tmp_path, range(4))
    assert tensorboard.is_logdir(tmp_path) and tensorboard.missing_extra(tmp_path) is None
    tailer = tensorboard.TensorBoardTailer(tmp_path)
    first = tailer.read_new()
    assert first[0]["event"] == "run_started" and first[0]["run_id"] == tmp_path.name
    steps = [r for r in first if r["event"] == "step"]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    assert [r["train_loss_nats"] for r in steps] == pytest.approx([4.0, 2.0, 4 / 3, 1.0])
    assert all(r["lr"] == pytest.approx(0.01) for r in steps)
    times = [r["time"] for r in steps]
    assert times == sorted(times) and 0 <= times[0] <= times[-1] < 60  # wall time since the first
    held_out = [(r["step"], r["val_loss_nats"]) for r in first if r["event"] == "eval"]
    assert held_out == pytest.approx([(1, 1.5), (3, 0.75)])
    assert tailer.read_new() == []
    tailer._scanned = -math.inf  # look for new files at once
    write_tensorboard(tmp_path, range(4, 6))  # a second writer, a second file
    assert [r["step"] for r in tailer.read_new() if r["event"] == "step"] == [4, 5]
    writer = pytest.importorskip("torch.utils.tensorboard").SummaryWriter(str(tmp_path / "live"))
    tailer._scanned = -math.inf
    for step in (6, 7):  # a writer still open: each flush is read as it lands
        writer.add_scalar("loss", 0.5, step)
        writer.flush()
        assert [r["step"] for r in tailer.read_new()] == [step]
    writer.close()
    assert tailer.read_error is None


async def test_attach_charts_a_tensorboard_logdir(tmp_path):
    pytest.importorskip("tensorboard")
    write_tensorboard(tmp_path / "tb", range(3))
    app = make_app(attach=[tmp_path / "tb"], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        train = app.query_one("#card-train", Static)
        await wait_until(pilot, lambda: "1.3333" in text_of(train), "the TensorBoard loss")
        assert "1.5000" in text_of(app.query_one("#card-heldout", Static))


def test_attach_says_in_one_line_that_the_tensorboard_extra_is_missing(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    for module in ("tensorboard", "tensorboard.backend", "tensorboard.backend.event_processing"):
        monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    assert cli_main(["attach", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install 'h2q-tui[tensorboard]'" in error
