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
