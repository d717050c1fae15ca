"""What a valid metrics record is, checked before the dashboard reads one.

Another process writes metrics.jsonl, and anything can end up in a file: every record is
checked against its event's fields before the history (and so any widget) reads it. Numbers
must also lie in ranges the widgets can compute and draw with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MAX_COUNT = 2**53  # steps, tokens, bytes: beyond, a float (a chart axis) cannot tell n from n + 1
MAX_SECONDS = 1e12  # training time: some 30,000 years
MAX_READING = 3.4028234663852886e38  # float32's largest: no tensor reading is beyond it


def _is_int(value: Any) -> bool:
    """An int within ±MAX_COUNT (bool is not one)."""
    return (
        isinstance(value, int)
        and value is not True
        and value is not False
        and (-MAX_COUNT <= value <= MAX_COUNT)
    )


def _count(value: Any) -> bool:
    """An int in 0..MAX_COUNT (steps, tokens, bytes)."""
    return (
        isinstance(value, int)
        and value is not True
        and value is not False
        and (0 <= value <= MAX_COUNT)
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and value is not True and value is not False


def _finite(value: Any) -> bool:
    """A time in seconds: finite, within ±MAX_SECONDS (it is an axis: it must be plottable)."""
    return _number(value) and -MAX_SECONDS <= value <= MAX_SECONDS


def _rate(value: Any) -> bool:
    """A finite number in float32's range (a learning rate)."""
    return _number(value) and -MAX_READING <= value <= MAX_READING


def _reading(value: Any) -> bool:
    """A measured number: NaN/Inf are written as null, and a NaN or ±Inf from Python's json
    is kept (shown as such); a finite one must lie in float32's range."""
    if value is None:
        return True
    if isinstance(value, float):
        return not math.isfinite(value) or abs(value) <= MAX_READING
    return _number(value) and abs(value) <= MAX_READING


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _optional_count(value: Any) -> bool:
    return value is None or _count(value)


def _mapping(value: Any) -> bool:
    return isinstance(value, dict)


def _split(value: Any) -> bool:
    return value in ("horizon", "heldout")


def _config(value: Any) -> bool:
    """The run's config: an object of sections, and the keys the dashboard computes with."""
    if not isinstance(value, dict):
        return False
    if not all(isinstance(value.get(s, {}), dict) for s in ("model", "train", "eval", "log")):
        return False
    train = value.get("train", {})
    steps, seconds = train.get("max_steps"), train.get("max_seconds")
    limits_ok = (steps is None or _number(steps) and abs(steps) <= MAX_COUNT) and (
        seconds is None or _finite(seconds)
    )
    rank = value.get("model", {}).get("rank")
    return limits_ok and (rank is None or _is_int(rank))


Check = Callable[[Any], bool]
# event -> (required fields, optional fields): field -> check. Unknown events pass unchecked
# (a newer engine may add some) and are ignored; unknown fields are ignored.
RECORD_FIELDS: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "run_started": (
        {"run_id": _text, "config": _config},
        {
            "n_params": _count,
            "preset": _text,
            "train_source": _text,
            "heldout_source": _text,
            "train_bytes": _count,
            "heldout_bytes": _count,
            "device": _text,
            "threads": _is_int,
            "start_step": _count,
            "time": _finite,
            "started_at": _text,
            "precision": _text,
            "precision_reason": _text,
            "machine": _text,
            "threads_reason": _text,
        },
    ),
    "threads": ({"step": _count, "threads": _count, "reason": _text}, {}),
    "step": (
        {"step": _count, "tokens": _count, "time": _finite, "train_loss_nats": _reading},
        {
            **dict.fromkeys(("train_bpb", "aux_loss", "penalty", "grad_norm", "energy"), _reading),
            **dict.fromkeys(("step_ms", "tokens_per_s", "lr", "data_progress"), _reading),
            "epoch": _count,
            "rss_bytes": _optional_count,
            "cuda_allocated_bytes": _optional_count,
            "cuda_reserved_bytes": _optional_count,
        },
    ),
    "eval": (
        {
            "step": _count,
            "tokens": _count,
            "time": _finite,
            "split": _split,
            "val_loss_nats": _reading,
        },
        dict.fromkeys(("val_bpb", "train_loss_nats", "diff_nats"), _reading),
    ),
    "system": (
        {"step": _count, "tokens": _count, "time": _finite},
        {
            **dict.fromkeys(("host_cpu_percent", "process_cpu_percent"), _reading),
            "gpu_util_percent": _reading,
            **dict.fromkeys(
                (
                    "process_rss_bytes",
                    "host_ram_used_bytes",
                    "host_ram_total_bytes",
                    "gpu_memory_used_bytes",
                    "gpu_memory_total_bytes",
                ),
                _optional_count,
            ),
            "gpus": _count,
        },
    ),
    "sample": ({"step": _count, "text": _text}, {}),
    "checkpoint": ({"step": _count, "path": _text, "checkpoint_bytes": _count}, {}),
    "paused": ({"step": _count}, {}),
    "resumed": ({"step": _count}, {}),
    "lr_changed": ({"step": _count, "lr": _rate}, {"lr_scale": _reading}),
    "rank_grown": (
        {"step": _count, "rank": _count},
        {"new_parameters": _is_int, "lr": _reading},
    ),
    "alarm": ({"step": _count, "kind": _text, "message": _text}, {}),
    "notice": ({"step": _count, "message": _text}, {}),
    "progress": ({"step": _count, "task": _text, "done": _count, "total": _count}, {}),
    "run_finished": (
        {"step": _count, "time": _finite, "reason": _text},
        {"tokens": _count},
    ),
    "run_failed": ({"step": _count, "message": _text}, {"extra": _mapping}),
}


def record_problem(record: Any) -> str | None:
    """Why this record cannot be shown (e.g. "step: 'step' is missing"), or None if it can."""
    if not isinstance(record, dict):
        return f"not a JSON object: {type(record).__name__}"
    event = record.get("event")
    if not isinstance(event, str):
        return "no event name"
    if event not in RECORD_FIELDS:
        return None
    required, optional = RECORD_FIELDS[event]
    for name, check in required.items():
        if name not in record:
            return f"{event}: {name!r} is missing"
        if not check(record[name]):
            return f"{event}: {name!r} is {_shown(record[name])}"
    for name, check in optional.items():
        if name in record and not check(record[name]):
            return f"{event}: {name!r} is {_shown(record[name])}"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."
