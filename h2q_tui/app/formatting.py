"""Turning history data into display strings and colours (the only place colour is decided)."""

from __future__ import annotations

import math
from typing import Any

from h2q_tui.training.events import bits_per_byte

NA = "n/a"
HORIZON_RED_MARGIN_NATS = 0.5  # the source's rule: red when Val > Train + 0.5


def number(value: float | int | None, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NA
    return format(value, fmt)


def loss_text(nats: float | None, short: bool = False) -> str:
    """Cross-entropy in both units on two lines, e.g. '1.2345 nats\n1.781 bits/byte'
    (``short``: '1.781 bpb', for small terminals)."""
    if nats is None or not math.isfinite(nats):
        return NA
    return f"{nats:.4f} nats\n{bits_per_byte(nats):.3f} " + ("bpb" if short else "bits/byte")


def progress_text(record: dict[str, Any]) -> str:
    """A progress record as a status, e.g. 'held-out eval: 12/48 windows'."""
    task = record["task"]
    unit = " windows" if "eval" in task or "validation" in task else ""
    return f"{task}: {record['done']:,}/{record['total']:,}{unit}"


def horizon_colour(val: float | None, train: float | None) -> str:
    """Green when Val < Train, red when Val > Train + 0.5, else neutral."""
    if val is None or train is None or not (math.isfinite(val) and math.isfinite(train)):
        return "default"
    if val < train:
        return "green"
    if val > train + HORIZON_RED_MARGIN_NATS:
        return "red"
    return "yellow"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return NA
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_diff(configs: dict[str, dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Keys whose values differ between runs: [(key, [value per run])]."""
    flat = {name: flatten_config(c) for name, c in configs.items()}
    keys = sorted(set().union(*[f.keys() for f in flat.values()])) if flat else []
    rows = []
    for key in keys:
        values = [f.get(key, NA) for f in flat.values()]
        if len({repr(v) for v in values}) > 1:
            rows.append((key, values))
    return rows
