"""A folder of runs as rows: name, preset, status, steps, best held-out bits/byte, last change.

The run browser (``h2q-tui attach runs/``) and the web view's tabs list runs with it. Each run's
metrics.jsonl is followed incrementally (a JsonlTailer each), so a poll reads only what was
appended since the last. Nothing in a run dir makes a scan raise: a run it cannot read is a
row with status ``malformed`` and the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from h2q_tui.training.events import bits_per_byte
from h2q_tui.training.records import record_problem
from h2q_tui.training.tail import JsonlTailer, not_regular
from h2q_tui.training.writers import METRICS_FILE

LIVE, FINISHED, CRASHED, MALFORMED = "live", "finished", "crashed", "malformed"
# run_lock.LOCK_FILE and run_files.RUN_FILE, named here because importing those modules loads
# torch (the checkpoints package), which ``h2q-tui web`` and ``attach --help`` must not; a test
# checks the names agree
LOCK_FILE, RUN_FILE = ".lock", "run.json"
RUN_MARKERS = (METRICS_FILE, RUN_FILE, LOCK_FILE)  # a folder holding one of these is a run
LOCK_CLOCK_SLACK_S = 2.0  # a holder started this much after the lock file was written is a reuse


@dataclass(frozen=True)
class RunRow:
    """One run of the listing; ``problem`` says why a run is crashed or malformed."""

    path: Path
    name: str
    preset: str
    status: str
    steps: int | None
    best_bpb: float | None
    updated: float  # when metrics.jsonl (else the folder) last changed: epoch seconds
    problem: str = ""


def is_run_dir(path: Path) -> bool:
    """A folder that a trainer (or ``track``) writes: it holds metrics.jsonl, run.json or .lock."""
    return any(os.path.lexists(path / marker) for marker in RUN_MARKERS)


def is_runs_folder(path: Path) -> bool:
    """A folder that is not a run itself but holds at least one run dir."""
    return path.is_dir() and not is_run_dir(path) and bool(run_dirs(path))


def run_dirs(root: Path) -> list[Path]:
    """The run dirs directly under ``root`` (none when it cannot be listed)."""
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    return [child for child in children if _is_dir(child) and is_run_dir(child)]


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def lock_holder(run_dir: Path) -> int | None:
    """The PID of the live process that wrote ``RUN_DIR/.lock``, or None (no lock file, a
    dead PID, or one reused by a process started after the lock was written)."""
    path = run_dir / LOCK_FILE
    if not os.path.lexists(path) or not_regular(path):  # a FIFO would block the open
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            text, written = os.read(fd, 32), os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        pid = int(text.decode("ascii", errors="replace").strip() or "0")
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if process.create_time() > written + LOCK_CLOCK_SLACK_S:
            return None
    except psutil.Error:
        return None
    return pid


class _Summary:
    """What the listing keeps of one run's log, folded record by record."""

    def __init__(self, run_dir: Path) -> None:
        self.tailer = JsonlTailer(run_dir / METRICS_FILE)
        self.preset = ""
        self.steps: int | None = None
        self.best_bpb: float | None = None
        self.ending: dict[str, Any] | None = None  # the last run_finished / run_failed
        self.good = 0  # records that could be read

    def fold(self) -> None:
        for record in self.tailer.read_new():
            if record_problem(record) is not None:
                continue
            self.good += 1
            self._fold_one(record)

    def _fold_one(self, record: dict[str, Any]) -> None:
        kind = record.get("event")
        if kind == "run_started":
            self.preset = str(record.get("preset") or self.preset)
            self.ending = None  # a resume: the run goes on
        elif kind == "step":
            self.steps = max(self.steps or 0, record["step"])
        elif kind == "eval" and record["split"] == "heldout":
            bpb = record.get("val_bpb", bits_per_byte(record["val_loss_nats"]))
            self.best_bpb = bpb if self.best_bpb is None else min(self.best_bpb, bpb)
        elif kind in ("run_finished", "run_failed"):
            self.ending = record
            self.steps = max(self.steps or 0, record["step"])


class RunScan:
    """The runs under ``root``, scanned again on each ``rows()`` call (new runs appear)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._summaries: dict[Path, _Summary] = {}

    def rows(self) -> list[RunRow]:
        """Every run dir under ``root``, the most recently changed first."""
        found = run_dirs(self.root)
        for gone in set(self._summaries) - set(found):
            del self._summaries[gone]
        rows = [self._row(run_dir) for run_dir in found]
        return sorted(rows, key=lambda row: (-row.updated, row.name))

    def _row(self, run_dir: Path) -> RunRow:
        summary = self._summaries.get(run_dir)
        if summary is None:
            summary = self._summaries[run_dir] = _Summary(run_dir)
        summary.fold()
        status, problem = run_status(run_dir, summary)
        return RunRow(
            path=run_dir,
            name=run_dir.name,
            preset=summary.preset,
            status=status,
            steps=summary.steps,
            best_bpb=summary.best_bpb,
            updated=_changed_at(run_dir),
            problem=problem,
        )


def run_status(run_dir: Path, summary: _Summary) -> tuple[str, str]:
    """(status, why): finished by its run_finished; crashed by its run_failed; live while a
    process holds its lock; otherwise malformed when nothing in it can be read, else crashed."""
    ending = summary.ending
    if ending is not None and ending["event"] == "run_finished":
        return FINISHED, str(ending["reason"])
    if ending is not None:
        return CRASHED, f"run_failed: {ending['message']}"
    if lock_holder(run_dir) is not None:
        return LIVE, ""
    tailer = summary.tailer
    if tailer.read_error:
        return MALFORMED, tailer.read_error
    if not os.path.lexists(tailer.path):
        return MALFORMED, f"no {METRICS_FILE}"
    if not summary.good:
        bad = tailer.skipped_lines
        return MALFORMED, f"no readable record ({bad} unparsable line{'s' * (bad != 1)})"
    return CRASHED, "no run_finished and no process holds its lock"


def _changed_at(run_dir: Path) -> float:
    for path in (run_dir / METRICS_FILE, run_dir):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def matches(row: RunRow, text: str) -> bool:
    """The filter: ``text`` (case-insensitive) is part of the run's name or preset."""
    needle = text.casefold()
    return needle in row.name.casefold() or needle in row.preset.casefold()
