"""A stop asked from outside (a signal, the dashboard) saves before anything else: a supervisor
sends SIGKILL 10-30 s after SIGTERM, and a long final eval must not stand before the save."""

from __future__ import annotations

import pytest

from h2q_tui.config import resolve
from h2q_tui.data.sources import load_corpus
from h2q_tui.training import events, stopping
from h2q_tui.training.trainer import Trainer

STOP_AT_STEP = 3


def stopped_run(tmp_path, text_file, reason: str) -> list[events.Event]:
    """A tiny run that a stop request (as a signal handler sets it) ends at step 3."""
    config = resolve("tiny", ["train.max_steps=1000", "eval.heldout_interval=1000"])
    corpus = load_corpus(str(text_file), heldout_fraction=0.1)
    log: list[events.Event] = []
    trainer: Trainer

    def record(event: events.Event) -> None:
        log.append(event)
        if isinstance(event, events.StepCompleted) and event.step == STOP_AT_STEP:
            trainer.stop_requested = reason

    trainer = Trainer(config, corpus, tmp_path / "run", record, preset="tiny")
    assert trainer.run() == reason
    return log


def kinds_after_the_last_step(log: list[events.Event]) -> list[str]:
    last = max(i for i, e in enumerate(log) if isinstance(e, events.StepCompleted))
    return [type(e).__name__ for e in log[last + 1 :] if not isinstance(e, events.ProgressReported)]


@pytest.mark.parametrize("reason", ["terminated", "hangup", "interrupted", "stopped"])
def test_a_stop_saves_before_the_final_eval(tmp_path, text_file, reason):
    log = stopped_run(tmp_path, text_file, reason)
    after = kinds_after_the_last_step(log)
    assert after.index("CheckpointSaved") < after.index("EvalCompleted"), after
    assert after[-1] == "RunFinished"
    saved = [e for e in log if isinstance(e, events.CheckpointSaved)]
    assert saved[-1].step == STOP_AT_STEP


def test_a_final_eval_over_its_budget_is_skipped_and_said(tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(stopping, "STOP_EVAL_BUDGET_S", 0.0)
    log = stopped_run(tmp_path, text_file, "terminated")
    after = kinds_after_the_last_step(log)
    assert "EvalCompleted" not in after and "CheckpointSaved" in after
    notices = [e.message for e in log if isinstance(e, events.NoticeGiven)]
    assert any("final eval skipped" in m and "checkpoint is saved" in m for m in notices), notices
