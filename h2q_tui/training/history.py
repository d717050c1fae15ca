"""Bounded run history built from metrics records: curves, latest readings, smoothing, ETA.

The same ``add(record)`` serves a live run (``event.to_record()``) and an attached one
(lines of another process's metrics.jsonl), so the dashboard has one data path.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from h2q_tui.system.readings_history import SystemHistory
from h2q_tui.training.records import record_problem

LOG_LINES = 200
SAMPLES = 20
ALARMS = 100  # the last alarms kept
# a notice nothing ends (no pause, stop, ...) leaves the status line after this much training time
NOTICE_SECONDS = 10.0


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

    def drop_after(self, step: int) -> None:
        """Forget the points after ``step`` (a resume logs those steps again)."""
        keep = bisect.bisect_right(self.step, step)
        for column in (self.step, self.tokens, self.time, self.value):
            del column[keep:]

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


# a record's x axes, not scalars: the Metrics pane charts every other numeric field
AXES_FIELDS = frozenset({"event", "step", "tokens", "time"})


def scalar_fields(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a step, eval or system record by scalar name: a step's keep
    their names (``grad_norm``), an eval's get its split before them
    (``heldout.val_loss_nats``), a reading ``system.``; bools and strings are no scalars."""
    kind = record.get("event")
    if kind not in ("step", "eval", "system"):
        return {}
    prefix = {"step": "", "eval": f"{record.get('split', 'eval')}.", "system": "system."}[kind]
    return {
        prefix + key: float(value)
        for key, value in record.items()
        if key not in AXES_FIELDS
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


class Scalars:
    """Curves by scalar name, in the order the names first appeared; ``version`` grows with
    every change, so a view can tell that nothing changed without looking at the data."""

    def __init__(self, max_points: int = 4000) -> None:
        self.curves: dict[str, Curve] = {}
        self.max_points = max_points
        self.version = 0

    def add(self, record: dict[str, Any]) -> None:
        fields = scalar_fields(record)
        for name, value in fields.items():
            curve = self.curves.get(name)
            if curve is None:
                curve = self.curves[name] = Curve(self.max_points)
            curve.append(record["step"], record["tokens"], record["time"], value)
        self.version += bool(fields)

    def put(self, name: str, record: dict[str, Any], value: float) -> None:
        """One point of ``name`` at ``record``'s step, tokens and time."""
        curve = self.curves.get(name)
        if curve is None:
            curve = self.curves[name] = Curve(self.max_points)
        curve.append(record["step"], record["tokens"], record["time"], float(value))
        self.version += 1

    def drop_after(self, step: int) -> None:
        """Forget the points after ``step`` (a resume logs those steps again)."""
        for curve in self.curves.values():
            curve.drop_after(step)
        self.version += 1


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
        self.notice: dict[str, Any] | None = None  # the last notice, until something ends it
        self._notice_until = math.inf  # training time at which the notice goes
        self.progress: dict[str, Any] | None = None  # a long task between steps, while it runs
        self.threads_chosen: dict[str, Any] | None = None  # the last ``threads`` record
        self.system = SystemHistory()  # the run's ``system`` records (CPU, memory, GPU)
        self.scalars = Scalars(max_points)  # every numeric field of steps, evals, readings
        self.records = 0  # records seen, bad ones included
        self.bad_records = 0  # valid JSON that is not a valid record: skipped
        self.last_problem: str | None = None  # why the last bad record was skipped

    @property
    def config(self) -> dict[str, Any]:
        return (self.started or {}).get("config", {})

    @property
    def precision_text(self) -> str | None:
        """e.g. "precision fp32 — this CPU has no fast bf16 (…)"; None for logs without it."""
        started = self.started or {}
        if not started.get("precision"):
            return None
        reason = started.get("precision_reason")
        return f"precision {started['precision']}" + (f" — {reason}" if reason else "")

    @property
    def threads(self) -> tuple[int, str] | None:
        """Training's thread count and why (the reason may be empty): the last ``threads``
        record's, else run_started's; None before a run."""
        chosen = self.threads_chosen or self.started or {}
        if chosen.get("threads") is None:
            return None
        return chosen["threads"], chosen.get("reason", chosen.get("threads_reason", ""))

    @property
    def threads_text(self) -> str | None:
        """e.g. "1 thread — auto (…): 410 ms a step on 1 thread, …"; None before a run."""
        if self.threads is None:
            return None
        threads, reason = self.threads
        return f"{threads} thread{'s' if threads != 1 else ''}" + (f" — {reason}" if reason else "")

    def add(self, record: dict[str, Any]) -> bool:
        """Fold one metrics record into the history; False (and counted) if it is not valid."""
        self.records += 1
        problem = record_problem(record)
        if problem is not None:
            self.bad_records += 1
            self.last_problem = problem
            return False
        self.scalars.add(record)
        handler = getattr(self, f"_on_{record['event']}", None)
        if handler is not None:
            handler(record)
        return True

    def note(self, text: str) -> None:
        """A line for the event log that no record made (e.g. where a replayed history came from)."""
        self._note(text)

    def _end_notice(self) -> None:
        self.notice, self._notice_until = None, math.inf

    def _note(self, text: str) -> None:
        self.notes += 1
        self.log.append(text)
        del self.log[:-LOG_LINES]

    def _on_run_started(self, r: dict[str, Any]) -> None:
        self.started, self.finished, self.threads_chosen = r, None, None
        self.paused, self.alarm_active, self.progress = False, None, None
        start = r.get("start_step") or 0
        for curve in (self.train, self.heldout, self.horizon):
            curve.drop_after(start)  # steps after the checkpoint are trained (and logged) again
        self.scalars.drop_after(start)
        self.system.drop_after(r.get("time", math.inf))  # and their system records
        for name in ("last_step", "last_heldout", "last_horizon"):
            if (getattr(self, name) or {}).get("step", 0) > start:
                setattr(self, name, None)
        resumed = f" (resumed at step {start})" if start else ""
        size = f": {r['n_params']:,} parameters" if "n_params" in r else ""
        device = f" on {r['device']}" if "device" in r else ""
        precision = f", {self.precision_text}" if self.precision_text else ""
        self._note(f"run {r['run_id']} started{resumed}{size}{device}{precision}")

    def _on_threads(self, r: dict[str, Any]) -> None:
        self.threads_chosen = r
        self._note(f"step {r['step']}: training on {self.threads_text}")

    @property
    def model_rank(self) -> int | None:
        """The model's rank now (a QRLM grows it; a GPT has none)."""
        model = self.config.get("model", {})
        if self.rank is not None or model.get("family") == "gpt":
            return self.rank
        return model.get("rank") if isinstance(model.get("rank"), int) else None

    def _on_step(self, r: dict[str, Any]) -> None:
        if self.model_rank is not None:
            self.scalars.put("rank", r, self.model_rank)  # charted with the step's scalars
        self.last_step, self.progress = r, None
        loss = r["train_loss_nats"]
        self.train.append(r["step"], r["tokens"], r["time"], math.nan if loss is None else loss)
        if self.notice is not None and self._notice_until == math.inf:
            self._notice_until = r["time"] + NOTICE_SECONDS  # counted from the next step on
        elif r["time"] >= self._notice_until:
            self._end_notice()

    def _on_system(self, r: dict[str, Any]) -> None:
        self.system.add(r["time"], r)

    def _on_notice(self, r: dict[str, Any]) -> None:
        self.notice, self._notice_until = r, math.inf
        self._note(f"step {r['step']}: {r['message']}")

    def _on_progress(self, r: dict[str, Any]) -> None:
        self.progress = r

    def _on_eval(self, r: dict[str, Any]) -> None:
        self.progress = None
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
        del self.alarms[:-ALARMS]
        self.alarm_active = r
        self._note(f"step {r['step']}: ALARM {r['kind']}: {r['message']}")

    def _on_paused(self, r: dict[str, Any]) -> None:
        self.paused, self.progress = True, None
        self._end_notice()
        self._note(f"step {r['step']}: paused")

    def _on_resumed(self, r: dict[str, Any]) -> None:
        self.paused = False
        self._end_notice()
        self.alarm_active = None
        self._note(f"step {r['step']}: resumed")

    def _on_lr_changed(self, r: dict[str, Any]) -> None:
        self._note(f"step {r['step']}: learning rate set to {r['lr']:.3e}")

    def _on_rank_grown(self, r: dict[str, Any]) -> None:
        self.rank = r["rank"]
        self._note(f"step {r['step']}: rank grown to {r['rank']}")

    def _on_run_finished(self, r: dict[str, Any]) -> None:
        self.finished, self.progress = r, None
        self._end_notice()
        self._note(f"step {r['step']}: run finished ({r['reason']}) after {r['time']:.0f} s")

    def _on_run_failed(self, r: dict[str, Any]) -> None:
        self.finished, self.progress = r, None
        self._end_notice()
        self._note(f"step {r['step']}: run FAILED: {r['message']}")

    def eta_seconds(self) -> float | None:
        """Seconds left until max_steps or max_seconds, from the recent step rate."""
        if self.last_step is None or self.finished is not None:
            return None
        train = self.config.get("train", {})
        step, elapsed = self.last_step["step"], self.last_step["time"]
        left = []
        if (train.get("max_seconds") or 0) > 0:  # -1 (or, in older logs, 0): no limit
            left.append(max(0.0, train["max_seconds"] - elapsed))
        if (train.get("max_steps") or 0) > 0 and len(self.train) >= 2:
            steps, times = self.train.step[-50:], self.train.time[-50:]
            rate = (steps[-1] - steps[0]) / max(1e-9, times[-1] - times[0])
            if rate > 0:
                left.append(max(0.0, (train["max_steps"] - step) / rate))
        return min(left) if left else None
