"""Bounded run history built from metrics records: curves, latest readings, smoothing, ETA.

The same ``add(record)`` serves a live run (``event.to_record()``) and an attached one
(lines of another process's metrics.jsonl), so the dashboard has one data path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

LOG_LINES = 200
SAMPLES = 20


@dataclass
class Curve:
    """Points (step, tokens, time, value), halved in resolution when full so memory stays bounded."""

    max_points: int = 4000
    step: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    stride: int = 1  # keep one point in `stride` after downsampling
    _seen: int = 0

    def append(self, step: int, tokens: int, time: float, value: float) -> None:
        self._seen += 1
        if self._seen % self.stride:
            return
        for column, item in (
            (self.step, step),
            (self.tokens, tokens),
            (self.time, time),
            (self.value, value),
        ):
            column.append(item)
        if len(self.step) > self.max_points:
            for column in (self.step, self.tokens, self.time, self.value):
                del column[1::2]
            self.stride *= 2

    def x(self, axis: str) -> list[float]:
        return {"step": self.step, "tokens": self.tokens, "time": self.time}[axis]

    def __len__(self) -> int:
        return len(self.value)


def debiased_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style smoothing: EMA with weight ``weight``, bias-corrected at the start."""
    out, average, norm = [], 0.0, 0.0
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm if norm else value)
    return out


class RunHistory:
    """Everything the dashboard shows about one run, as data (no colours, no widgets)."""

    def __init__(self, max_points: int = 4000) -> None:
        self.started: dict[str, Any] | None = None
        self.last_step: dict[str, Any] | None = None
        self.last_heldout: dict[str, Any] | None = None
        self.last_horizon: dict[str, Any] | None = None
        self.finished: dict[str, Any] | None = None
        self.train = Curve(max_points)
        self.heldout = Curve(max_points)
        self.horizon = Curve(max_points)
        self.samples: list[tuple[int, str]] = []
        self.log: list[str] = []  # the last LOG_LINES notes
        self.notes = 0  # notes ever made (the log is trimmed, this count is not)
        self.alarms: list[dict[str, Any]] = []
        self.alarm_active: dict[str, Any] | None = None  # the last alarm, until training resumes
        self.paused = False
        self.rank: int | None = None  # set by rank_grown events (QRLM)
        self.records = 0

    @property
    def config(self) -> dict[str, Any]:
        return (self.started or {}).get("config", {})

    def add(self, record: dict[str, Any]) -> None:
        """Fold one metrics record into the history."""
        self.records += 1
        handler = getattr(self, f"_on_{record.get('event')}", None)
        if handler is not None:
            handler(record)

    def _note(self, text: str) -> None:
        self.notes += 1
        self.log.append(text)
        del self.log[:-LOG_LINES]

    def _on_run_started(self, r: dict[str, Any]) -> None:
        self.started, self.finished = r, None
        resumed = f" (resumed at step {r['start_step']})" if r.get("start_step") else ""
        self._note(
            f"run {r['run_id']} started{resumed}: {r['n_params']:,} parameters on {r['device']}"
        )

    def _on_step(self, r: dict[str, Any]) -> None:
        self.last_step = r
        loss = r["train_loss_nats"]
        self.train.append(r["step"], r["tokens"], r["time"], math.nan if loss is None else loss)

    def _on_eval(self, r: dict[str, Any]) -> None:
        value = math.nan if r["val_loss_nats"] is None else r["val_loss_nats"]
        if r["split"] == "heldout":
            self.last_heldout = r
            self.heldout.append(r["step"], r["tokens"], r["time"], value)
        else:
            self.last_horizon = r
            self.horizon.append(r["step"], r["tokens"], r["time"], value)

    def _on_sample(self, r: dict[str, Any]) -> None:
        self.samples.append((r["step"], r["text"]))
        del self.samples[:-SAMPLES]

    def _on_checkpoint(self, r: dict[str, Any]) -> None:
        self._note(
            f"step {r['step']}: checkpoint saved ({r['checkpoint_bytes'] / 1e6:.1f} MB) {r['path']}"
        )

    def _on_alarm(self, r: dict[str, Any]) -> None:
        self.alarms.append(r)
        self.alarm_active = r
        self._note(f"step {r['step']}: ALARM {r['kind']}: {r['message']}")

    def _on_paused(self, r: dict[str, Any]) -> None:
        self.paused = True
        self._note(f"step {r['step']}: paused")

    def _on_resumed(self, r: dict[str, Any]) -> None:
        self.paused = False
        self.alarm_active = None
        self._note(f"step {r['step']}: resumed")

    def _on_lr_changed(self, r: dict[str, Any]) -> None:
        self._note(f"step {r['step']}: learning rate set to {r['lr']:.3e}")

    def _on_rank_grown(self, r: dict[str, Any]) -> None:
        self.rank = r.get("rank")
        self._note(f"step {r['step']}: rank grown to {r.get('rank')}")

    def _on_run_finished(self, r: dict[str, Any]) -> None:
        self.finished = r
        self._note(f"step {r['step']}: run finished ({r['reason']}) after {r['time']:.0f} s")

    def _on_run_failed(self, r: dict[str, Any]) -> None:
        self.finished = r
        self._note(f"step {r['step']}: run FAILED: {r['message']}")

    def eta_seconds(self) -> float | None:
        """Seconds left until max_steps or max_seconds, from the recent step rate."""
        if self.last_step is None or self.finished is not None:
            return None
        train = self.config.get("train", {})
        step, elapsed = self.last_step["step"], self.last_step["time"]
        left = []
        if train.get("max_seconds"):
            left.append(max(0.0, train["max_seconds"] - elapsed))
        if train.get("max_steps") and len(self.train) >= 2:
            steps, times = self.train.step[-50:], self.train.time[-50:]
            rate = (steps[-1] - steps[0]) / max(1e-9, times[-1] - times[0])
            if rate > 0:
                left.append(max(0.0, (train["max_steps"] - step) / rate))
        return min(left) if left else None
