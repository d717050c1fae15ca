"""Follow a TensorBoard logdir as metrics records, so ``h2q-tui attach LOGDIR`` charts it.

The scalars of every ``events.out.tfevents.*`` file (in the logdir and below it) are read
with TensorBoard's own event reader (the ``tensorboard`` extra) and grouped by step into
the ``step`` and ``eval`` records a run's ``metrics.jsonl`` holds; tag names are mapped
as ``track`` maps names (``train/loss`` -> ``train_loss_nats``, ``Loss/val`` -> held-out).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from h2q_tui.track import names

EVENTS_GLOB = "events.out.tfevents.*"
EXTRA = "pip install 'h2q-tui[tensorboard]'"
RESCAN_S = 2.0  # look for new event files (a restarted writer) at most this often


def is_logdir(path: Path) -> bool:
    """A folder with TensorBoard event files (in it or below) and no ``metrics.jsonl``."""
    return not (path / "metrics.jsonl").exists() and next(path.rglob(EVENTS_GLOB), None) is not None


def missing_extra(path: Path) -> str | None:
    """The one line to say when ``path`` is a TensorBoard logdir this install cannot read."""
    try:
        # the optional extra: only a TensorBoard logdir needs it
        from tensorboard.backend.event_processing import event_file_loader  # noqa: F401
    except ImportError:
        return f"{path} holds TensorBoard event files: reading them needs the extra: {EXTRA}"
    return None


class TensorBoardTailer:
    """New records of a TensorBoard logdir on each ``read_new()``, as ``JsonlTailer`` gives
    a ``metrics.jsonl``'s: a ``run_started`` first, then a ``step`` record per step (and an
    ``eval`` record where a held-out loss was logged). Never raises for what is in the files:
    an unreadable file is named in ``read_error``; a value that is not a scalar is skipped."""

    def __init__(self, logdir: Path) -> None:
        self.path = Path(logdir)
        self.skipped_lines = self.long_lines = self.thinned_lines = 0
        self.keep_every = 1
        self.behind = False
        self.read_error: str | None = None
        self._loaders: dict[Path, Any] = {}
        self._scanned = -RESCAN_S
        self._first_wall: float | None = None
        self._started = False

    def read_new(self, max_bytes: int = 0) -> list[dict[str, Any]]:
        """Records of the scalars written since the last call (``max_bytes`` is not used:
        the event reader reads what is new whole)."""
        scalars = self._new_scalars()
        records: list[dict[str, Any]] = []
        if not self._started and self._first_wall is not None:
            self._started = True
            records.append(self._started_record())
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        wall: dict[int, float] = {}
        for step, tag, value, wall_time in scalars:
            by_step[step][tag] = value
            wall[step] = max(wall.get(step, wall_time), wall_time)
        for step in sorted(by_step):
            records.extend(
                self._records(step, wall[step] - (self._first_wall or 0.0), by_step[step])
            )
        return records

    def _started_record(self) -> dict[str, Any]:
        started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(self._first_wall))
        return {
            "event": "run_started",
            "run_id": self.path.resolve().name,
            "config": {},
            "preset": "tensorboard",
            "start_step": 0,
            "time": 0.0,
            "started_at": started,
        }

    def _records(self, step: int, seconds: float, tags: dict[str, float]) -> list[dict[str, Any]]:
        values: dict[str, float] = {}
        for tag, value in tags.items():
            try:
                names.fields({tag: value})
                values[tag] = value
            except ValueError:  # a tag named like a field a record keeps for itself
                values[f"tb/{tag}"] = value
        step_fields, eval_fields = names.fields(values)
        where = {"step": max(0, step), "tokens": 0, "time": max(0.0, seconds)}
        out = []
        if step_fields:
            out.append({"event": "step", **where, "train_loss_nats": None, **step_fields})
        if eval_fields:
            out.append({"event": "eval", **where, "split": "heldout", **eval_fields})
        return out

    def _new_scalars(self) -> list[tuple[int, str, float, float]]:
        """(step, tag, value, wall time) of every scalar event not read before."""
        self._rescan()
        found = []
        for path, loader in self._loaders.items():
            prefix = path.parent.relative_to(self.path).as_posix()
            try:
                for event in loader.Load():
                    if self._first_wall is None:
                        self._first_wall = event.wall_time
                    for tag, value in _scalars(event):
                        tag = tag if prefix == "." else f"{prefix}/{tag}"
                        found.append((event.step, tag, value, event.wall_time))
            except Exception as exc:  # a damaged file: TensorBoard's reader raises its own kinds
                self.read_error = f"cannot read {path}: {exc}".splitlines()[0]
            else:
                self.read_error = None
        return found

    def _rescan(self) -> None:
        now = time.monotonic()
        if now - self._scanned < RESCAN_S:
            return
        self._scanned = now
        # the optional extra, loaded when a logdir is attached (missing_extra said it is there)
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        for path in sorted(self.path.rglob(EVENTS_GLOB)):
            if path not in self._loaders and path.is_file():
                self._loaders[path] = EventFileLoader(str(path))


def _scalars(event: Any) -> list[tuple[str, float]]:
    """The (tag, value) scalars of one event: old-style simple values and scalar tensors."""
    # the optional extra, as in _rescan
    from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_SCALAR
    from tensorboard.util.tensor_util import make_ndarray

    found = []
    for value in event.summary.value:
        if value.HasField("simple_value"):
            found.append((value.tag, float(value.simple_value)))
        elif value.metadata.data_class == DATA_CLASS_SCALAR and value.HasField("tensor"):
            array = make_ndarray(value.tensor)
            if array.size == 1 and array.dtype.kind in "fiu":
                found.append((value.tag, float(array.reshape(()).item())))
    return found
