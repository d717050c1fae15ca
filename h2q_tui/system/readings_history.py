"""Bounded history of system readings: the recent ones at full rate, older ones thinned.

One data path for the live monitor (its snapshots) and for a run's log (its ``system``
records), so the System pane charts both the same way.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

# (field, label, kind): the series charted, in the order the System pane shows them; the
# same names are the readings of a ``system`` record in metrics.jsonl
SERIES: tuple[tuple[str, str, str], ...] = (
    ("host_cpu_percent", "Host CPU", "percent"),
    ("process_cpu_percent", "Process CPU", "percent"),
    ("process_rss_bytes", "Process RSS", "bytes"),
    ("host_ram_used_bytes", "Host RAM used", "bytes"),
    ("gpu_util_percent", "GPU util", "percent"),
    ("gpu_memory_used_bytes", "GPU memory", "bytes"),
)
GPU_SERIES = ("gpu_util_percent", "gpu_memory_used_bytes")
TOTALS = ("host_ram_total_bytes", "gpu_memory_total_bytes")  # the memory charts' ceilings
RECENT = 240  # the newest samples, all kept: 6 min at the monitor's 1.5 s
OLDER = 480  # at most this many samples before them, thinned to span the whole run


@dataclass(frozen=True)
class Sample:
    """Readings at ``x`` seconds (wall clock live, training time from a log); None: no reading."""

    x: float
    values: tuple[float | None, ...]  # in SERIES order


def snapshot_readings(snap: Any) -> dict[str, float | int | None]:
    """A SystemSnapshot's readings by SERIES and TOTALS name: GPU utilisation is the mean
    over the GPUs NVML sees, GPU memory their sum (None without a GPU reading)."""
    utils = [g.utilization_percent for g in snap.gpus if g.utilization_percent is not None]
    used = [g.memory_used_bytes for g in snap.gpus if g.memory_used_bytes is not None]
    total = [g.memory_total_bytes for g in snap.gpus if g.memory_total_bytes is not None]
    return {
        "host_cpu_percent": snap.host_cpu_percent,
        "process_cpu_percent": snap.process_cpu_percent,
        "process_rss_bytes": snap.process_rss_bytes,
        "host_ram_used_bytes": snap.host_ram_used_bytes,
        "host_ram_total_bytes": snap.host_ram_total_bytes,
        "gpu_util_percent": sum(utils) / len(utils) if utils else None,
        "gpu_memory_used_bytes": sum(used) if used else None,
        "gpu_memory_total_bytes": sum(total) if total else None,
    }


def _number(value: Any) -> float | None:
    """A finite reading as a float; anything else (None, NaN, a string) is no reading."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class SystemHistory:
    """The last ``recent`` samples, and before them at most ``older`` samples covering the
    rest of the run (one in ``stride`` kept; the stride doubles each time they fill up), so
    memory stays bounded at ``recent + older`` samples however long the run."""

    def __init__(self, recent: int = RECENT, older: int = OLDER) -> None:
        self.recent: deque[Sample] = deque(maxlen=max(1, recent))
        self.older: list[Sample] = []
        self.older_limit = max(2, older)
        self.stride = 1  # one sample in `stride` that leaves `recent` is kept in `older`
        self.totals: dict[str, float | None] = dict.fromkeys(TOTALS)  # the latest known
        self.added = 0  # samples ever added
        self._left_recent = 0

    def add(self, x: float, readings: dict[str, Any]) -> None:
        """One sample at ``x`` (seconds); readings by SERIES/TOTALS name, missing ones None."""
        if len(self.recent) == self.recent.maxlen:
            self._retire(self.recent[0])
        values = tuple(_number(readings.get(name)) for name, _, _ in SERIES)
        self.recent.append(Sample(float(x), values))
        self.added += 1
        for name in TOTALS:
            total = _number(readings.get(name))
            if total is not None:
                self.totals[name] = total

    def add_snapshot(self, snap: Any) -> None:
        """A monitor snapshot, at its wall-clock time."""
        self.add(snap.time, snapshot_readings(snap))

    def _retire(self, sample: Sample) -> None:
        """The oldest recent sample leaves the full-rate window: keep one in ``stride``."""
        self._left_recent += 1
        if self._left_recent % self.stride:
            return
        self.older.append(sample)
        if len(self.older) > self.older_limit:
            del self.older[1::2]  # the first stays: the chart still starts where the run did
            self.stride *= 2

    def drop_after(self, x: float) -> None:
        """Forget the samples after ``x`` (a resumed run logs that stretch again)."""
        self.older = [s for s in self.older if s.x <= x]
        kept = [s for s in self.recent if s.x <= x]
        self.recent.clear()
        self.recent.extend(kept)

    def samples(self) -> list[Sample]:
        """Every sample kept, oldest first."""
        return [*self.older, *self.recent]

    def copy(self) -> SystemHistory:
        """An independent copy (for another thread to draw while this one grows)."""
        other = SystemHistory(self.recent.maxlen or 1, self.older_limit)
        other.recent.extend(self.recent)
        other.older = list(self.older)
        other.stride, other.totals = self.stride, dict(self.totals)
        other.added, other._left_recent = self.added, self._left_recent
        return other

    def has_gpu(self) -> bool:
        """Whether any sample kept has a GPU reading."""
        gpu = [i for i, (name, _, _) in enumerate(SERIES) if name in GPU_SERIES]
        return any(s.values[i] is not None for s in self.samples() for i in gpu)

    def __len__(self) -> int:
        return len(self.older) + len(self.recent)
