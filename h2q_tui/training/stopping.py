"""How a run ends: its limits, a NaN, the memory budget, a stop asked from outside."""

from __future__ import annotations

import time

from h2q_tui.config import NO_LIMIT
from h2q_tui.system.stop_signals import BY_REASON
from h2q_tui.training import commands, events
from h2q_tui.training.intervals import EvalOverBudget

# A stop asked from outside saves first (a supervisor sends SIGKILL 10-30 s after SIGTERM);
# the final held-out eval then runs only if it ends within this budget.
SAVE_FIRST = frozenset({*BY_REASON, "stopped"})
STOP_EVAL_BUDGET_S = 5.0


class Stopping:
    """Part of Trainer (training/trainer.py), whose attributes it uses: the ways a run stops.

    Each way ends in ``_finish``, which saves and evaluates as the reason allows, then emits
    RunFinished.
    """

    def _limit_reached(self) -> str | None:
        t = self.config.train
        if t.max_steps != NO_LIMIT and self.step >= t.max_steps:  # 0: no step at all
            return "max_steps"
        if t.max_seconds != NO_LIMIT and self.elapsed_s() >= t.max_seconds:
            return "max_seconds"
        return None

    def _on_nan(self) -> str | None:
        self.emit(
            events.AlarmRaised(
                self.step,
                "nan",
                f"loss or gradient is NaN/Inf at step {self.step + 1}; "
                "the step was skipped and the last checkpoint kept",
            )
        )
        if self.pause_on_nan:
            self._handle(commands.Pause())
            return None
        return "nan"

    def _watch_memory(self, record: events.StepCompleted) -> bool:
        """Compare this step's readings with the budget (free: they are already taken).

        From 90 %: one ``alarm`` (kind ``memory``), raised again only after the reading fell
        back under 85 %. Above 100 %: an ``alarm`` (kind ``memory_over``) saying what is over
        and by how much, a checkpoint, then a pause (the dashboard: p resumes) or, headless,
        the run stops (``budget_stop_message`` says why) instead of meeting the OOM killer.
        True when it was above the budget (saved; paused, or to stop when not paused).
        """
        if not self.budget.is_set:
            return False
        readings = self.budget.readings(record.rss_bytes, record.cuda_reserved_bytes)
        over = None
        for level, reading in self.budget_watch.observe(readings):
            if level == "over":
                over = reading
                continue
            self._memory_alarm(
                "memory",
                reading,
                f"{reading.describe()}: past 90 %; above 100 % training saves a checkpoint and "
                + ("pauses" if self.pause_on_nan else "stops"),
            )
        if over is None:
            return False
        then = "pausing (p resumes)" if self.pause_on_nan else "stopping"
        self._memory_alarm(
            "memory_over", over, f"{over.describe()} after step {self.step}: saving, then {then}"
        )
        self.save()
        if self.pause_on_nan:
            self._handle(commands.Pause())
            return True
        saved = (
            f"checkpoint {self.last_checkpoint}"
            if self.last_checkpoint and self.last_saved_step == self.step
            else "no checkpoint of this step (see the log)"
        )
        flag = "--vram-budget" if over.resource == "VRAM" else "--memory-budget"
        self.budget_stop_message = (
            f"{over.describe()} at step {self.step}; {saved}; continue with "
            f"--resume {self.run_dir} and a larger {flag}, or lower train.batch_size"
        )
        return True

    def _memory_alarm(self, kind: str, reading, message: str) -> None:
        limit = reading.limit.limit if reading.limit else 0
        self.emit(
            events.MemoryAlarmRaised(
                self.step, kind, message, reading.resource, reading.used or 0, limit
            )
        )

    def _finish(self, reason: str) -> str:
        if reason == "memory":  # saved already; a final eval would only allocate more
            self.notice(self.budget_stop_message)
        elif reason in SAVE_FIRST:
            if reason in BY_REASON:
                self.notice(
                    f"stopping ({BY_REASON[reason].name}): saving a checkpoint, then a final "
                    f"eval if it takes under {STOP_EVAL_BUDGET_S:.0f} s…"
                )
            self.notice(f"saving checkpoint at step {self.step}…")
            self.save()
            if self._final_eval_due():
                self._final_eval_within(STOP_EVAL_BUDGET_S)
        elif reason != "nan":
            if self._final_eval_due():
                self.evaluate_heldout(final=True)
            self.notice(f"saving checkpoint at step {self.step}…")
            self.save()
        self.emit(events.RunFinished(self.step, self.tokens, self.elapsed_s(), reason))
        return reason

    def _final_eval_due(self) -> bool:
        """No held-out eval has run at this step yet."""
        interval = self.config.eval.heldout_interval
        return interval == 0 or self.step % interval != 0

    def _final_eval_within(self, budget_s: float) -> None:
        """After a stop has saved: the final eval, or a notice that it was skipped."""
        try:
            self.evaluate_heldout(final=True, deadline=time.perf_counter() + budget_s)
        except EvalOverBudget:
            self.model.train()  # the eval left it in eval mode
            self.notice(
                f"final eval skipped: it would take over {budget_s:.0f} s (the checkpoint is saved)"
            )
