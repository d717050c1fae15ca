"""The training engine: events, commands between steps, exact resume, checkpoints, metrics file."""

from __future__ import annotations

import copy
import json
import math
import queue

import pytest
import torch

from h2q_tui import checkpoints
from h2q_tui.config import resolve
from h2q_tui.data.sources import load_corpus
from h2q_tui.training import commands, events
from h2q_tui.training.evaluate import mean_cross_entropy
from h2q_tui.training.optimizer import scheduled_lr
from h2q_tui.training.trainer import Trainer
from h2q_tui.training.writers import JsonlWriter


def make_trainer(
    tmp_path, text_file, overrides=(), emit=None, resume=None, command_queue=None, name="run"
):
    config = resolve("tiny", list(overrides))
    corpus = load_corpus(str(text_file), heldout_fraction=0.1)
    log: list[events.Event] = []

    def record(event):
        log.append(event)
        if emit:
            emit(event)

    trainer = Trainer(
        config, corpus, tmp_path / name, record, command_queue, preset="tiny", resume_from=resume
    )
    return trainer, log


def of(log, kind):
    return [e for e in log if isinstance(e, kind)]


def test_a_few_steps_emit_the_expected_events(tmp_path, text_file):
    trainer, log = make_trainer(tmp_path, text_file, ["train.max_steps=20"])
    assert trainer.run() == "max_steps"
    assert isinstance(log[0], events.RunStarted) and log[0].n_params == 77_320
    steps = of(log, events.StepCompleted)
    assert [s.step for s in steps] == list(range(1, 21))
    assert steps[-1].tokens == 20 * 4 * 32
    assert steps[-1].train_loss_nats < steps[0].train_loss_nats  # it learns
    assert all(s.aux_loss > 0 and s.grad_norm > 0 and s.tokens_per_s > 0 for s in steps)
    assert steps[0].train_bpb == pytest.approx(steps[0].train_loss_nats / math.log(2))
    heldout = [e for e in of(log, events.EvalCompleted) if e.split == "heldout"]
    assert [e.step for e in heldout] == [20]  # interval 20 in the tiny preset
    assert of(log, events.SampleReady)[0].step == 20
    assert (
        isinstance(log[-1], events.RunFinished) and of(log, events.CheckpointSaved)[-1].step == 20
    )


def test_horizon_records_train_val_and_diff_per_chunk(tmp_path, text_file):
    trainer, log = make_trainer(
        tmp_path, text_file, ["train.chunk_bytes=1024", "train.max_steps=20"]
    )
    trainer.run()
    horizon = [e for e in of(log, events.EvalCompleted) if e.split == "horizon"]
    assert len(horizon) >= 2  # 1024 bytes / 4 streams / 32 = 7 windows per chunk
    for e in horizon:
        assert e.diff_nats == pytest.approx(e.val_loss_nats - e.train_loss_nats)


def test_each_horizon_val_is_the_model_at_the_step_it_is_drawn_at(tmp_path, text_file):
    # 1024-byte chunks: 7 windows each, so step 7 ends the first chunk (the first point)
    trainer, log = make_trainer(
        tmp_path, text_file, ["train.chunk_bytes=1024", "train.max_steps=7"]
    )
    untrained = copy.deepcopy(trainer.model)
    trainer.run()
    (first,) = [e for e in of(log, events.EvalCompleted) if e.split == "horizon"]
    batches = list(trainer.sampler.horizon_val_batches(trainer.config.eval.horizon_val_fraction))

    def ce(model):
        return mean_cross_entropy(model, batches, trainer.device, trainer.autocast_dtype)

    assert first.step == 7
    assert first.val_loss_nats == pytest.approx(ce(trainer.model), rel=1e-6)
    assert ce(untrained) - first.val_loss_nats > 0.5  # not the untrained model's loss
    steps = [e.train_loss_nats for e in of(log, events.StepCompleted)]
    assert first.train_loss_nats == pytest.approx(sum(steps) / len(steps))


@pytest.mark.parametrize(
    ("limit", "reason"),
    [("train.max_steps=0", "max_steps"), ("train.max_seconds=0", "max_seconds"), (None, "stopped")],
)
def test_a_limit_of_zero_trains_no_step_and_no_limit_trains_until_stopped(
    tmp_path, text_file, limit, reason
):
    q: queue.Queue = queue.Queue()

    def stop_at_step_3(event):  # the backstop: without a limit, Stop ends the run
        if isinstance(event, events.StepCompleted) and event.step == 3:
            q.put(commands.Stop())

    overrides = [limit] if limit else []
    trainer, log = make_trainer(tmp_path, text_file, overrides, stop_at_step_3, command_queue=q)
    assert trainer.run() == reason
    assert [e.step for e in of(log, events.StepCompleted)] == ([] if limit else [1, 2, 3])
    assert of(log, events.RunFinished)[0].step == (0 if limit else 3)


def test_commands_are_obeyed_between_steps(tmp_path, text_file):
    q: queue.Queue = queue.Queue()

    def steer(event):
        if isinstance(event, events.StepCompleted) and event.step == 3:
            for command in (
                commands.Pause(),
                commands.SaveNow(),
                commands.SampleNow(),
                commands.SetLearningRate(1e-3),
            ):
                q.put(command)
        if isinstance(event, events.LearningRateChanged):
            q.put(commands.Resume())
        if isinstance(event, events.StepCompleted) and event.step == 6:
            q.put(commands.ScaleLearningRate(0.5))
            q.put(commands.Stop())

    trainer, log = make_trainer(tmp_path, text_file, [], emit=steer, command_queue=q)
    assert trainer.run() == "stopped"
    names = [e.name for e in log]
    paused_at = names.index("paused")
    assert names[paused_at + 1 : paused_at + 5] == ["checkpoint", "sample", "lr_changed", "resumed"]
    assert of(log, events.RunPaused)[0].step == 3
    steps = of(log, events.StepCompleted)
    assert steps[3].lr == pytest.approx(1e-3)  # step 4 runs at the LR set while paused
    assert steps[-1].step == 6 and of(log, events.LearningRateChanged)[-1].lr == pytest.approx(5e-4)
    assert of(log, events.CheckpointSaved)[-1].step == 6  # stop saves first


def _losses(log):
    return [e.train_loss_nats for e in of(log, events.StepCompleted)]


@pytest.mark.parametrize(
    "overrides,split_at",
    [
        (["train.chunk_bytes=1024"], 10),  # horizon loop, resume mid-chunk, chunks crossed after
        (["train.chunk_bytes=1024"], 7),  # resume exactly at a chunk boundary
        (["train.loop=random", "model.dropout=0.1"], 9),  # random windows and dropout RNG
        (["train.schedule=cosine", "train.warmup_steps=5", "train.loop=random"], 8),
    ],
)
def test_resume_is_exact(tmp_path, text_file, overrides, split_at):
    total = 25
    # bit-identical needs one thread count throughout: auto picks it from timed steps, and
    # the count changes the order of float sums (docs/performance.md, "Threads")
    overrides = [*overrides, "train.threads=1"]
    straight, log_a = make_trainer(
        tmp_path, text_file, [*overrides, f"train.max_steps={total}"], name="a"
    )
    straight.run()
    q: queue.Queue = (
        queue.Queue()
    )  # interrupted at split_at, as Ctrl-C would (same schedule length)

    def interrupt(event):
        if isinstance(event, events.StepCompleted) and event.step == split_at:
            q.put(commands.Stop("interrupted"))

    first, log_b = make_trainer(
        tmp_path,
        text_file,
        [*overrides, f"train.max_steps={total}"],
        name="b",
        emit=interrupt,
        command_queue=q,
    )
    assert first.run() == "interrupted"
    info = checkpoints.read_info(tmp_path / "b")
    assert info.step == split_at
    second, log_c = make_trainer(
        tmp_path, text_file, [*overrides, f"train.max_steps={total}"], resume=info, name="b"
    )
    second.run()
    assert _losses(log_b) + _losses(log_c) == _losses(log_a)  # bit-identical fp32 on CPU
    horizon = [
        (e.step, e.val_loss_nats) for e in of(log_a, events.EvalCompleted) if e.split == "horizon"
    ]
    resumed = [
        (e.step, e.val_loss_nats)
        for e in of(log_b + log_c, events.EvalCompleted)
        if e.split == "horizon"
    ]
    assert resumed == horizon


def test_adamw_is_fused_and_follows_the_per_tensor_loop(tmp_path, text_file, monkeypatch):
    """The fused AdamW (the default on a CPU) gives the loss curve of PyTorch's default loop."""
    from h2q_tui.training import optimizer

    fused, log_fused = make_trainer(tmp_path, text_file, ["train.max_steps=12"], name="fused")
    assert all(g["fused"] for g in fused.optimizer.param_groups)
    fused.run()
    monkeypatch.setattr(optimizer, "FUSED_ADAMW", False)
    loop, log_loop = make_trainer(tmp_path, text_file, ["train.max_steps=12"], name="loop")
    assert not any(g["fused"] for g in loop.optimizer.param_groups)
    loop.run()
    assert _losses(log_fused) == pytest.approx(_losses(log_loop), abs=1e-5)
    assert len(set(_losses(log_fused))) > 1  # it trained


def test_a_run_trained_with_the_loop_resumes_with_it(tmp_path, text_file, monkeypatch):
    """A checkpoint from before the fused default keeps its optimizer form: resumes stay exact."""
    from h2q_tui.training import optimizer

    monkeypatch.setattr(optimizer, "FUSED_ADAMW", False)
    first, _ = make_trainer(tmp_path, text_file, ["train.max_steps=3"], name="old")
    first.run()
    monkeypatch.setattr(optimizer, "FUSED_ADAMW", True)
    info = checkpoints.read_info(tmp_path / "old")
    resumed, _ = make_trainer(tmp_path, text_file, ["train.max_steps=5"], resume=info, name="old")
    assert not any(g["fused"] for g in resumed.optimizer.param_groups)


def test_checkpoint_round_trips_shared_bank_and_tied_weights(tmp_path, text_file):
    for preset_overrides in ([], ["model.family=gpt", "model.d_model=64", "model.n_heads=2"]):
        trainer, _ = make_trainer(
            tmp_path,
            text_file,
            [*preset_overrides, "train.max_steps=3"],
            name=f"rt{len(preset_overrides)}",
        )
        trainer.run()
        info = checkpoints.read_info(trainer.run_dir)
        from h2q_tui.models import build_model

        clone = build_model(info.config.model)
        checkpoints.load_weights(info, clone)
        for (name, p), q in zip(
            trainer.model.state_dict().items(), clone.state_dict().values(), strict=True
        ):
            assert torch.equal(p, q), name
        if info.config.model.family == "microstream":  # the bank is stored once and still shared
            assert all(layer.structure_bank is clone.bank for layer in clone.ham_layers())
        else:
            assert clone.lm_head.weight is clone.wte.weight


def test_checkpoints_are_pruned_and_latest_points_at_the_newest(tmp_path, text_file):
    trainer, _ = make_trainer(
        tmp_path, text_file, ["log.checkpoint_interval=2", "train.max_steps=9"]
    )
    trainer.run()
    root = trainer.run_dir / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == [
        "step_00000006",
        "step_00000008",
        "step_00000009",
    ]
    assert (root / "latest").read_text().strip() == "step_00000009"
    assert not list(root.glob(".tmp-*"))


def test_nan_loss_raises_an_alarm_and_keeps_the_last_checkpoint(tmp_path, text_file):
    trainer, log = make_trainer(
        tmp_path, text_file, ["train.max_steps=10", "log.checkpoint_interval=2"]
    )

    def poison(event):
        if isinstance(event, events.StepCompleted) and event.step == 4:
            with torch.no_grad():
                trainer.model.head.bias.fill_(float("nan"))

    trainer.emit = lambda e: (log.append(e), poison(e))
    assert trainer.run() == "nan"
    alarm = of(log, events.AlarmRaised)[0]
    assert alarm.kind == "nan" and alarm.step == 4
    # the poisoned weights of step 4 were never saved: latest stays the step-2 checkpoint
    assert checkpoints.read_info(trainer.run_dir).step == 2
    assert not (trainer.run_dir / "checkpoints" / "step_00000004").exists()


def test_cosine_schedule_warms_up_and_decays_to_min_lr():
    config = resolve(
        "tiny",
        [
            "train.schedule=cosine",
            "train.warmup_steps=10",
            "train.max_steps=110",
            "train.lr=1e-3",
            "train.min_lr=1e-4",
        ],
    )
    assert scheduled_lr(config, 0, 0) == pytest.approx(1e-4)
    assert scheduled_lr(config, 10, 0) == pytest.approx(1e-3)
    assert scheduled_lr(config, 60, 0) == pytest.approx(5.5e-4)
    assert scheduled_lr(config, 110, 0) == pytest.approx(1e-4)


def test_metrics_jsonl_format(tmp_path, text_file):
    trainer, _ = make_trainer(tmp_path, text_file, ["train.max_steps=5"])
    trainer.run_dir.mkdir(parents=True)
    writer = JsonlWriter(trainer.run_dir)
    trainer.emit = writer
    trainer.run()
    writer.close()
    records = [
        json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    first = records[0]
    assert (
        first["event"] == "run_started"
        and first["n_params"] == 77_320
        and first["config"]["model"]["d_model"] == 128
    )
    step = next(r for r in records if r["event"] == "step")
    for key in (
        "step",
        "tokens",
        "time",
        "train_loss_nats",
        "aux_loss",
        "grad_norm",
        "energy",
        "step_ms",
        "tokens_per_s",
        "lr",
    ):
        assert isinstance(step[key], (int, float)), key
    evaluation = next(r for r in records if r["event"] == "eval")
    assert evaluation["split"] in ("horizon", "heldout") and evaluation["val_bpb"] > 0
    assert records[-1]["event"] == "run_finished"


def test_unexpected_error_is_reported_as_run_failed(tmp_path, text_file):
    trainer, log = make_trainer(tmp_path, text_file, ["train.max_steps=10"])

    def explode():
        raise RuntimeError("disk on fire")

    trainer.train_step = explode
    with pytest.raises(RuntimeError):
        trainer.run()
    failed = of(log, events.RunFailed)
    assert len(failed) == 1 and "disk on fire" in failed[0].message
