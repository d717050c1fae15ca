"""RunHistory: folding metrics records into curves, bounded memory, smoothing and ETA."""

from __future__ import annotations

import math

import pytest

from h2q_tui.training.history import Curve, RunHistory, debiased_ema


def started(max_steps=100, max_seconds=0.0):
    return {
        "event": "run_started",
        "run_id": "r",
        "n_params": 10,
        "device": "cpu",
        "start_step": 0,
        "config": {"train": {"max_steps": max_steps, "max_seconds": max_seconds}},
    }


def step(n, loss=2.0, time=None):
    return {
        "event": "step",
        "step": n,
        "tokens": n * 10,
        "time": n * 0.5 if time is None else time,
        "train_loss_nats": loss,
    }


def test_records_fold_into_curves_and_latest_readings():
    h = RunHistory()
    h.add(started())
    for n in range(1, 6):
        h.add(step(n, loss=3.0 - n * 0.1))
    h.add(
        {
            "event": "eval",
            "split": "heldout",
            "step": 5,
            "tokens": 50,
            "time": 2.5,
            "val_loss_nats": 2.9,
            "val_bpb": 4.2,
        }
    )
    h.add(
        {
            "event": "eval",
            "split": "horizon",
            "step": 5,
            "tokens": 50,
            "time": 2.5,
            "val_loss_nats": None,
            "val_bpb": None,
        }
    )
    h.add({"event": "sample", "step": 5, "text": "once upon"})
    h.add({"event": "alarm", "step": 5, "kind": "nan", "message": "bad"})
    assert h.train.step == [1, 2, 3, 4, 5] and h.last_step["step"] == 5
    assert h.heldout.value == [2.9] and math.isnan(h.horizon.value[0])
    assert h.samples == [(5, "once upon")] and "ALARM nan" in h.log[-1]


def test_curve_memory_is_bounded_and_keeps_the_ends():
    curve = Curve(max_points=100)
    for n in range(10_000):
        curve.append(n, n, float(n), float(n))
    assert len(curve) <= 101 and curve.step[0] == 0 and curve.step[-1] > 9_800


def test_debiased_ema_starts_at_the_first_value_and_smooths():
    assert debiased_ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])
    smooth = debiased_ema([0.0, 10.0], 0.5)
    assert smooth[0] == 0.0 and smooth[1] == pytest.approx(10 * 0.5 / 0.75)
    assert debiased_ema([1.0, 2.0], 0.0) == [1.0, 2.0]


def test_eta_from_step_rate_and_time_budget():
    h = RunHistory()
    h.add(started(max_steps=100))
    for n in range(1, 11):
        h.add(step(n))  # 2 steps per second
    assert h.eta_seconds() == pytest.approx(45.0)
    h2 = RunHistory()
    h2.add(started(max_steps=0, max_seconds=60))
    h2.add(step(1, time=20.0))
    assert h2.eta_seconds() == pytest.approx(40.0)
    h.add({"event": "run_finished", "step": 10, "time": 5.0, "reason": "stopped"})
    assert h.eta_seconds() is None


def test_rank_growth_reaches_the_rank_card_and_event_log():
    h = RunHistory()
    h.add(started())
    h.add({"event": "rank_grown", "step": 600, "rank": 9, "new_parameters": 8192, "lr": 1e-3})
    assert h.rank == 9 and "rank grown to 9" in h.log[-1]


def test_the_rank_is_a_scalar_of_every_step_and_follows_its_growth():
    h = RunHistory()
    h.add({**started(), "config": {"model": {"family": "qrlm", "rank": 4}}})
    h.add(step(1))
    h.add({"event": "rank_grown", "step": 1, "rank": 9, "new_parameters": 8192, "lr": 1e-3})
    h.add(step(2))
    assert h.scalars.curves["rank"].value == [4.0, 9.0]
    gpt = RunHistory()
    gpt.add({**started(), "config": {"model": {"family": "gpt", "rank": 4}}})
    gpt.add(step(1))
    assert "rank" not in gpt.scalars.curves


# ---------------------------------------------------------------------- bad records
BAD_RECORDS = [
    {"event": "step"},
    {"event": "step", "step": 1, "tokens": 10, "time": 0.5, "train_loss_nats": 2.0, "lr": "fast"},
    {"event": "step", "step": math.nan, "tokens": 10, "time": 0.5, "train_loss_nats": 2.0},
    {"event": "step", "step": None, "tokens": 10, "time": 0.5, "train_loss_nats": 2.0},
    {"event": "step", "step": "3", "tokens": 10, "time": 0.5, "train_loss_nats": 2.0},
    {"event": "step", "step": True, "tokens": 10, "time": 0.5, "train_loss_nats": 2.0},
    {"event": "step", "step": 4, "tokens": 10, "time": math.inf, "train_loss_nats": 2.0},
    {"event": "step", "step": 4, "tokens": 10, "time": 1.0, "train_loss_nats": "low"},
    {"event": "step", "step": 4, "tokens": 10, "time": 1.0, "train_loss_nats": 2.0, "epoch": -1},
    {"event": "step", "step": -1, "tokens": 10, "time": 1.0, "train_loss_nats": 2.0},
    {"event": "eval", "step": 5, "tokens": 50, "time": 2.5, "val_loss_nats": 2.9},  # no split
    {"event": "eval", "step": 5, "tokens": 50, "time": 2.5, "split": "test", "val_loss_nats": 2.9},
    {"event": "run_started", "run_id": "r"},  # no config
    {"event": "run_started", "run_id": "r", "config": [1, 2]},
    {"event": "run_started", "run_id": "r", "config": {"train": [1]}},
    {"event": "run_started", "run_id": "r", "config": {"train": {"max_steps": "many"}}},
    {"event": "run_started", "run_id": 7, "config": {}},
    {"event": "run_started", "run_id": "r", "config": {}, "precision": 16},
    {"event": "checkpoint", "step": 3, "path": "p"},
    {"event": "sample", "step": 3, "text": None},
    {"event": "alarm", "step": 3, "kind": "nan"},
    {"event": "lr_changed", "step": 3, "lr": None},
    {"event": "rank_grown", "step": 3, "rank": "nine"},
    {"event": "paused"},
    {"event": "notice", "step": 3, "message": ["x"]},
    {"event": "progress", "step": 0, "task": "held-out eval", "done": "1", "total": 48},
    {"event": "run_finished", "step": 3, "reason": "max_steps"},
    {"event": "run_failed", "step": 3, "message": "boom", "extra": "x"},
    {"step": 3},  # no event
    {"event": 3},
]


def test_bad_records_are_skipped_counted_and_explained():
    h = RunHistory()
    h.add(started())
    h.add(step(1))
    for record in BAD_RECORDS:
        assert h.add(record) is False, record
    assert h.bad_records == len(BAD_RECORDS)
    assert h.records == len(BAD_RECORDS) + 2
    assert h.train.step == [1] and h.last_step["step"] == 1
    assert h.config["train"]["max_steps"] == 100  # the bad run_started records changed nothing
    assert h.last_problem == "no event name"
    h2 = RunHistory()
    h2.add(
        {"event": "step", "step": 1, "tokens": 1, "time": 0.1, "train_loss_nats": 2.0, "lr": "fast"}
    )
    assert h2.last_problem == "step: 'lr' is 'fast'"
    h2.add({"event": "eval", "step": 1, "tokens": 1, "time": 0.1, "val_loss_nats": 2.0})
    assert h2.last_problem == "eval: 'split' is missing"


def test_every_bad_record_leaves_a_history_the_cards_can_draw():
    from h2q_tui.app.panes.icu_cards import card_texts

    h = RunHistory()
    for record in BAD_RECORDS:
        h.add(record)
        card_texts(h, "following")
        h.eta_seconds()
    assert h.started is None and h.last_step is None


def test_records_of_unknown_events_and_extra_fields_are_accepted():
    h = RunHistory()
    assert h.add({"event": "from_the_future", "anything": [1]})
    assert h.add({**step(1), "new_field": {"x": 1}})
    assert h.bad_records == 0 and h.train.step == [1]


def test_null_and_nan_readings_are_shown_not_rejected():
    from h2q_tui.app.panes.icu_cards import card_texts

    h = RunHistory()
    h.add(started())
    record = {**step(1, loss=None), "grad_norm": math.nan, "lr": None, "energy": math.inf}
    record.update(step_ms=None, tokens_per_s=None, data_progress=None, epoch=0, aux_loss=None)
    record.update(penalty=None)
    assert h.add(record)
    cards = card_texts(h, "running")
    assert cards["train"] == "n/a" and cards["lr"] == "n/a" and cards["grad"].startswith("n/a")
    assert cards["speed"] == "n/a" and "n/a" in cards["penalty"]


def test_old_logs_without_the_newer_fields_are_read():
    h = RunHistory()
    assert h.add({"event": "run_started", "run_id": "old", "config": {}})
    assert h.precision_text is None and "run old started" in h.log[-1]
    assert h.add(step(1))
    assert h.add({"event": "run_finished", "step": 1, "time": 0.5, "reason": "max_steps"})


def test_precision_from_run_started():
    h = RunHistory()
    h.add(
        {
            **started(),
            "precision": "fp32",
            "precision_reason": "this CPU has no fast bf16 (no AMX, no AVX512-BF16)",
            "machine": "AMD EPYC 7B13",
        }
    )
    assert h.precision_text == "precision fp32 — this CPU has no fast bf16 (no AMX, no AVX512-BF16)"
    assert "precision fp32 — this CPU" in h.log[-1]


# ---------------------------------------------------------------------- notices, progress, resume
def test_notices_show_until_what_they_announce_happens():
    h = RunHistory()
    h.add(started())
    h.add(step(1))
    h.add({"event": "notice", "step": 1, "message": "pausing after this step"})
    assert h.notice["message"] == "pausing after this step"
    assert h.log[-1] == "step 1: pausing after this step"
    h.add({"event": "paused", "step": 2})
    assert h.notice is None
    h.add({"event": "notice", "step": 2, "message": "stopping: saving checkpoint…"})
    h.add({"event": "run_finished", "step": 2, "time": 1.0, "reason": "terminated"})
    assert h.notice is None


def test_a_notice_nothing_ends_goes_after_ten_seconds_of_training():
    h = RunHistory()
    h.add(started())
    h.add(
        {
            "event": "notice",
            "step": 300,
            "message": "resuming from step_00000300 (latest was corrupt)",
        }
    )
    h.add(step(301, time=100.0))
    h.add(step(302, time=109.0))
    assert h.notice is not None
    h.add(step(303, time=110.5))
    assert h.notice is None


def test_progress_shows_until_the_next_step_or_eval():
    h = RunHistory()
    h.add(started())
    h.add({"event": "progress", "step": 0, "task": "horizon validation", "done": 3, "total": 8})
    assert h.progress["done"] == 3
    h.add(step(1))
    assert h.progress is None
    h.add({"event": "progress", "step": 1, "task": "held-out eval", "done": 12, "total": 48})
    h.add(
        {
            "event": "eval",
            "split": "heldout",
            "step": 1,
            "tokens": 10,
            "time": 0.5,
            "val_loss_nats": 2.5,
        }
    )
    assert h.progress is None


def test_a_resume_replaces_the_steps_logged_after_its_checkpoint():
    h = RunHistory()
    h.add(started())
    for n in range(1, 11):
        h.add(step(n, loss=3.0))
    h.add(
        {
            "event": "eval",
            "split": "heldout",
            "step": 8,
            "tokens": 80,
            "time": 4.0,
            "val_loss_nats": 2.9,
        }
    )
    h.add({"event": "run_finished", "step": 10, "time": 5.0, "reason": "interrupted"})
    h.add({**started(), "start_step": 6})  # the last checkpoint was at step 6
    assert h.train.step == [1, 2, 3, 4, 5, 6] and len(h.heldout) == 0
    assert h.last_step is None and h.last_heldout is None and h.finished is None
    assert "resumed at step 6" in h.log[-1]
    for n in range(7, 12):
        h.add(step(n, loss=2.0))
    assert h.train.step == list(range(1, 12)) and h.train.value[-1] == 2.0


@pytest.mark.parametrize(
    "record, problem",
    [
        (step(2**62), "step: 'step' is 4611686018427387904"),
        (step(10**30), "step: 'step' is 10000000000"),
        ({**step(1), "tokens": 2**53 + 1}, "step: 'tokens' is"),
        ({**step(1), "time": 1e300}, "step: 'time' is 1e+300"),
        ({**step(1), "train_loss_nats": 1e300}, "step: 'train_loss_nats' is 1e+300"),
        ({**step(1), "train_loss_nats": 10**40}, "step: 'train_loss_nats' is"),
        ({**step(1), "grad_norm": -1e39}, "step: 'grad_norm' is -1e+39"),
        ({**step(1), "rss_bytes": 2**64}, "step: 'rss_bytes' is"),
        ({"event": "lr_changed", "step": 1, "lr": 1e300}, "lr_changed: 'lr' is 1e+300"),
        (
            {"event": "run_started", "run_id": "r", "config": {"train": {"max_steps": 10**30}}},
            "run_started: 'config' is",
        ),  # fmt: skip
        (
            {"event": "progress", "step": 1, "task": "t", "done": 10**30, "total": 1},
            "progress: 'done' is",
        ),
    ],
)
def test_numbers_no_chart_or_card_can_draw_are_bad_records(record, problem):
    h = RunHistory()
    h.add(started())
    h.add(step(1))
    assert h.add(record) is False
    assert h.bad_records == 1 and h.last_problem.startswith(problem), h.last_problem
    assert h.train.step == [1]


def test_the_largest_numbers_a_chart_can_draw_are_kept():
    from h2q_tui.app.panes.icu_cards import card_texts
    from h2q_tui.training.records import MAX_COUNT, MAX_READING, MAX_SECONDS

    h = RunHistory()
    h.add(started(max_steps=MAX_COUNT, max_seconds=MAX_SECONDS))
    for n, loss in ((MAX_COUNT - 1, MAX_READING), (MAX_COUNT, -MAX_READING)):
        record = {**step(n, loss, time=MAX_SECONDS), "tokens": MAX_COUNT, "lr": MAX_READING}
        assert h.add({**record, "grad_norm": math.inf, "rss_bytes": MAX_COUNT}), h.last_problem
    assert h.bad_records == 0 and h.train.step == [MAX_COUNT - 1, MAX_COUNT]
    card_texts(h, "following")
    h.eta_seconds()
