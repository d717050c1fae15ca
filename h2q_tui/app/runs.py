"""The runs on screen: a history each, filled from a live run's records, a resumed run's log
or the logs other processes write, and what the status line says about them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text

from h2q_tui.app import formatting as fmt
from h2q_tui.app.engine_link import AttachedRuns
from h2q_tui.training.history import RunHistory
from h2q_tui.training.tail import FULL_TAIL_BYTES, MAX_LINE_BYTES

# an attached log is folded in slices of at most this much reading and work, so a huge one
# loads while keys and redraws go on in between
POLL_SLICE_BYTES = 256 << 10
POLL_SLICE_S = 0.05
PAUSING = "pausing after this step"
STOPPING = "stopping: saving checkpoint…"
SAVING = "saving a checkpoint after this step…"
SAMPLING = "Thought Stream sample asked: it shows after this step…"
STARTING = "starting…"
PAUSING_ALARMS = ("ALARM nan", "ALARM memory_over")  # states of alarms the trainer pauses on

Notify = Callable[..., None]  # App.notify


class Runs:
    """Histories by run name; for a run this process trains, its state and what a key asked
    of it (``pending``) until the record that confirms it arrives."""

    def __init__(self, names: list[str], state: str, notify: Notify) -> None:
        self.histories: dict[str, RunHistory] = {name: RunHistory() for name in names}
        self.focused = names[0]
        self.state = state
        self.pending: str | None = None
        self.notify = notify
        self.save_asked = False  # c was pressed: toast the checkpoint when it is saved
        self._lr_asked, self._lr_asks = 1.0, 0  # +/- asked for: the factor, and how many
        self.replay_skipped_lines = 0  # unparsable lines in the replayed metrics.jsonl
        self._bad_noted: dict[str, tuple[int, int, int]] = dict.fromkeys(names, (0, 0, 0))
        self._thinning_noted: set[str] = set()  # runs whose thinned backlog the log mentions

    @property
    def history(self) -> RunHistory:
        """The focused run's history: the cards and the System pane show it."""
        return self.histories[self.focused]

    def focus_next(self) -> str:
        names = list(self.histories)
        self.focused = names[(names.index(self.focused) + 1) % len(names)]
        return self.focused

    # ------------------------------------------------------------------ records in
    def fold_live(self, records: Iterable[dict[str, Any]]) -> None:
        """The live run's records: each good one may change its state."""
        for record in records:
            if self.history.add(record):  # bad records: counted, not read
                self._track(record)

    def replay(self, records: list[dict[str, Any]], skipped: int, resume_step: int | None) -> None:
        """A resumed run's metrics.jsonl, before training starts: the chart shows the steps
        before the resume (the resume's run_started drops the steps it trains again)."""
        if not records and not skipped:
            return
        history = self.history
        for record in records:
            history.add(record)
        self.replay_skipped_lines = skipped
        last = history.last_step["step"] if history.last_step else 0
        history.note(f"history from metrics.jsonl: {len(history.train):,} steps (to step {last:,})")
        self.note_bad(self.focused, skipped)
        if history.finished is not None or history.started is not None:
            at = f" at step {resume_step:,}" if resume_step is not None else ""
            self.state = f"idle — t resumes{at}"

    def poll(self, attached: AttachedRuns) -> bool:
        """Fold what the attached logs gained, for at most POLL_SLICE_S: a huge log loads over
        many polls, with keys and redraws answered in between. True when records came."""
        started, gained = time.perf_counter(), False
        while True:
            for name, records in attached.read_new(POLL_SLICE_BYTES).items():
                history = self.histories[name]
                for record in records:
                    history.add(record)  # a bad record is skipped and counted there
                tailer = attached.tailers[name]
                self.note_bad(name, tailer.skipped_lines, tailer.long_lines)
                if tailer.keep_every > 1 and name not in self._thinning_noted:
                    self._thinning_noted.add(name)
                    history.note(
                        f"a long metrics.jsonl: 1 step record in {tailer.keep_every:,} read "
                        f"before its last {FULL_TAIL_BYTES >> 20} MiB (what the chart can show)"
                    )
                gained = gained or bool(records)
            if not attached.behind or time.perf_counter() - started > POLL_SLICE_S:
                return gained

    def note_bad(self, name: str, skipped_lines: int, long_lines: int = 0) -> None:
        """One event-log line each time more bad records or unparsable lines were skipped."""
        history = self.histories[name]
        bad_before, lines_before, long_before = self._bad_noted[name]
        if history.bad_records > bad_before:
            count = history.bad_records - bad_before
            history.note(
                f"skipped {count} bad record{'s' * (count != 1)} (last: {history.last_problem})"
            )
        if skipped_lines > lines_before:
            count = skipped_lines - lines_before
            what = (
                "line that is not a JSON object"
                if count == 1
                else "lines that are not JSON objects"
            )
            longer = long_lines - long_before
            over = f" ({longer} over {MAX_LINE_BYTES >> 20} MiB)" if longer else ""
            history.note(f"skipped {count} {what}{over}")
        self._bad_noted[name] = (history.bad_records, skipped_lines, long_lines)

    # ------------------------------------------------------------------ the live run's state
    def ask_lr(self, factor: float) -> str:
        """A +/- key's LR change, asked for: what the status line says until it happens."""
        self._lr_asked *= factor
        self._lr_asks += 1
        return f"learning rate ×{self._lr_asked:.3g} asked: from the next step…"

    def _track(self, record: dict[str, Any]) -> None:
        kind = record.get("event")
        if kind in ("paused", "resumed", "run_finished", "run_failed"):
            self.pending = None  # what the key asked for has happened
        elif kind == "sample" and self.pending == SAMPLING:
            self.pending = None
        elif kind == "lr_changed" and self._lr_asks:
            self._lr_asks -= 1
            if not self._lr_asks:  # every change asked for has happened
                self._lr_asked = 1.0
                self.pending = None
                self.notify(f"learning rate now {record['lr']:.3e}", timeout=3)
        if kind == "paused":
            if not self.state.startswith(PAUSING_ALARMS):  # they pause: keep saying so
                self.state = "paused"
        elif kind in ("resumed", "run_started"):
            self.state = "running"
        elif kind == "alarm":
            self.state = f"ALARM {record['kind']}" + (
                " — paused" if record["kind"] in ("nan", "memory_over") else ""
            )
            self.notify(
                str(record["message"]), title="Alarm", severity="error", timeout=10, markup=False
            )
        elif kind == "run_finished":
            self.state = f"finished ({record['reason']})"
        elif kind == "run_failed":
            self.state = "failed"
        elif kind == "checkpoint" and self.save_asked:  # periodic ones: the event log only
            self.save_asked = False
            self.pending = None if self.pending == SAVING else self.pending
            self.notify(f"checkpoint saved at step {record['step']}", timeout=3)

    # ------------------------------------------------------------------ what to show
    def skipped(self, attached: AttachedRuns | None) -> tuple[int, int, str | None]:
        """Bad records, unparsable lines and a read error, over every run shown."""
        bad = sum(h.bad_records for h in self.histories.values())
        if attached:
            tailers = attached.tailers.values()
            lines = sum(t.skipped_lines for t in tailers)
            errors = [t.read_error for t in tailers if t.read_error]
            return bad, lines, errors[0] if errors else None
        return bad, self.replay_skipped_lines, None

    def status_text(self, attached: AttachedRuns | None, training: bool, untrained: bool) -> Text:
        """The status line: what is happening now (a key's request, an engine notice, the
        progress of a long task), bad input skipped, and the run's precision. ``training``:
        a run this process trains is active; ``untrained``: one could start (press t)."""
        h = self.history
        now: list[str] = [self.pending] if self.pending else []
        if h.notice is not None and h.notice["message"] != self.pending:
            now.append(h.notice["message"])
        if h.progress is not None:
            now.append(fmt.progress_text(h.progress))
        if not now and self.state == STARTING:
            now.append("starting: reading the data and building the model…")
        elif not now and training and h.last_step is None and h.finished is None:
            now.append("preparing step 1…")
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        for part in now:
            text.append(" · " if text else "")
            text.append(part, style="bold yellow")
        bad, lines, error = self.skipped(attached)
        for count, what in ((bad, "bad record"), (lines, "unparsable line")):
            if count:
                text.append(" · " if text else "")
                text.append(f"{count:,} {what}{'s' * (count != 1)} skipped", style="bold red")
        if error:
            text.append(" · " if text else "")
            text.append(error, style="bold red")
        if h.precision_text:
            text.append(" · " if text else "")
            text.append(h.precision_text, style="dim")
        if not text and untrained:
            text.append("press t to train · ? lists every key", style="dim")
        if attached:
            text.append(" · " if text else "")
            text.append("read-only view: ? lists the keys that work here", style="dim")
        return text


def attached_state(h: RunHistory) -> str:
    """The state card of a run another process trains, from its log alone."""
    if h.finished:
        return f"finished ({h.finished.get('reason', 'failed')})"
    if h.alarm_active:
        return f"ALARM {h.alarm_active['kind']}"
    return "paused" if h.paused else ("following" if h.started else "waiting for metrics.jsonl")
