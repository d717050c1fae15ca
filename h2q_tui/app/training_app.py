"""The dashboard's link to a run this process trains, as the App the shell builds on: the
worker that runs it, the records it hands over, the keys that command it, the status line
that says what they asked for, and a quit that saves first.

The engine never waits on the UI: ``on_record`` (on the training thread) puts records in a
deque and posts one coalescing message; the shell redraws on a timer when ``_dirty``.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Iterator
from typing import Any

from textual.app import App
from textual.events import Key
from textual.message import Message
from textual.widgets import Static
from textual.worker import Worker

from h2q_tui.app import keys
from h2q_tui.app.engine_link import AttachedRuns, Engine
from h2q_tui.app.runs import PAUSING, SAMPLING, SAVING, STARTING, STOPPING, Runs
from h2q_tui.app.screens import ConfirmScreen, ErrorScreen
from h2q_tui.system.stop_signals import BY_SIGNUM, exit_code
from h2q_tui.system.threads import run_on_own_thread
from h2q_tui.training import commands

# records folded in (and the status line drawn) as soon as they arrive, not at the next tick
AT_ONCE = frozenset({"notice", "progress", "paused", "resumed", "alarm", "run_finished"})


class RecordsArrived(Message):
    """New engine records wait in the app's deque (coalesced: at most one message waits)."""


class EngineFailed(Message):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class TrainingApp(App[int]):
    """An App that trains ``engine`` (or, with ``attached``, only watches other processes'
    runs: its training keys are then off). The shell composes the panes and ``#status-line``."""

    def __init__(self, engine: Engine | None, attached: AttachedRuns | None) -> None:
        super().__init__()
        self.engine, self.attached = engine, attached
        names = attached.names if attached else [engine.name if engine else "no run"]
        state = "idle — press t to train" if engine else "attached"
        self.runs = Runs(names, state, self.notify)
        self.training_worker: Worker | None = None
        self.commands_sent: list[commands.Command] = []
        self._records: deque[dict[str, Any]] = deque()  # from the training thread, not yet folded
        self._notified = False
        self._dirty = True  # records arrived or the view changed: the shell redraws

    # ------------------------------------------------------------------ records in
    def on_record(self, record: dict[str, Any]) -> None:
        """Called on the training thread: never blocks, posts at most one pending message
        per tick, except for the rare records a person must see at once (notices...)."""
        self._records.append(record)
        if not self._notified or record.get("event") in AT_ONCE:
            self._notified = True
            self.post_message(RecordsArrived())

    def on_records_arrived(self, _: RecordsArrived) -> None:
        # _notified stays set until the next redraw tick: at most one message per tick, so a
        # fast training loop cannot keep the UI thread (and the GIL) busy
        self._fold_pending()

    def _drain(self) -> Iterator[dict[str, Any]]:
        while self._records:
            yield self._records.popleft()

    def _fold_pending(self) -> None:
        if not self._records:
            return
        self.runs.fold_live(self._drain())
        self._dirty = True
        self.draw_status()  # notices and progress show at once, not at the next tick

    def on_engine_failed(self, message: EngineFailed) -> None:
        self._fold_pending()
        history = self.runs.history
        if history.finished is None:  # failed before the trainer could report it
            step = (history.last_step or {}).get("step", 0)
            history.add({"event": "run_failed", "step": step, "message": message.message})
        self.runs.state = "failed"
        self._dirty = True
        self.push_screen(ErrorScreen(message.message))

    # ------------------------------------------------------------------ the status line
    def draw_status(self) -> None:
        if not self.is_running:
            return
        line = self.query_one("#status-line", Static)
        untrained = self.engine is not None and self.training_worker is None
        text = self.runs.status_text(self.attached, self.run_active, untrained)
        if text != line.content:
            line.update(text, layout=False)  # one fixed line: no layout pass

    # ------------------------------------------------------------------ the keys that command it
    @property
    def run_active(self) -> bool:
        return self.training_worker is not None and not self.training_worker.is_finished

    def _train(self, engine: Engine) -> None:
        try:  # on a thread that ends with the run: see h2q_tui/system/threads.py
            run_on_own_thread(engine.run, self.on_record)
        except Exception as exc:  # noqa: BLE001 - a worker error becomes a modal, never a dead app
            self.post_message(EngineFailed(f"{type(exc).__name__}: {exc}"))

    def action_start(self) -> None:
        if self.engine is None:
            self.notify(
                "attached runs are read-only: start training with h2q-tui or --no-ui",
                severity="warning",
            )
        elif self.training_worker is None:
            self.runs.state = STARTING
            self._dirty = True
            engine = self.engine
            self.training_worker = self.run_worker(
                lambda: self._train(engine), thread=True, name="training", exit_on_error=False
            )
        elif not self.run_active:
            self.notify(
                "this run has finished; start a new one with --resume RUN_DIR", severity="warning"
            )

    def send(self, command: commands.Command) -> bool:
        if self.engine is None or not self.run_active:
            self.notify("no training run is active (press t to start)", severity="warning")
            return False
        self.commands_sent.append(command)
        self.engine.send(command)
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Attached runs are read-only: their training keys leave the footer and do nothing."""
        if self.attached and action in keys.ENGINE_ACTIONS:
            return False
        return True

    def on_key(self, event: Key) -> None:
        """A training key on an attached run is off (check_action): say why once it is pressed."""
        if self.attached and event.key in keys.ENGINE_KEYS:
            self.notify(
                "attached runs are read-only: train with h2q-tui or --no-ui, then attach",
                severity="warning",
            )

    def _say_pending(self, text: str) -> None:
        """Show at once what a key asked for, until the record that confirms it arrives."""
        self.runs.pending = text
        self.draw_status()

    def action_toggle_pause(self) -> None:
        paused = self.runs.history.paused  # an ALARM is not always paused
        if self.send(commands.Resume() if paused else commands.Pause()):
            self._say_pending("resuming…" if paused else PAUSING)

    def action_stop(self) -> None:
        if self.send(commands.Stop()):
            self._say_pending(STOPPING)

    def action_save(self) -> None:
        self.runs.save_asked = self.send(commands.SaveNow())
        if self.runs.save_asked:
            self._say_pending(SAVING)

    def action_sample(self) -> None:
        if self.send(commands.SampleNow()):
            self._say_pending(SAMPLING)

    def action_lr_up(self) -> None:
        self._scale_lr(keys.LR_STEP)

    def action_lr_down(self) -> None:
        self._scale_lr(1 / keys.LR_STEP)

    def _scale_lr(self, factor: float) -> None:
        """Ask for the LR change and say so at once; the lr_changed record confirms it."""
        if self.send(commands.ScaleLearningRate(factor)):
            self._say_pending(self.runs.ask_lr(factor))

    def request_snapshot(self, deliver) -> str | None:
        """Ask the live run for a copy of its model (Generate pane): None when asked, else why not."""
        if self.training_worker is None or self.engine is None:
            return "no model yet: training has not started (press t), or load a checkpoint"
        if not self.run_active:
            return f"the run has finished: load its checkpoint ({self.engine.run_dir})"
        self.send(commands.TakeSnapshot(deliver))
        return None

    async def stop_on_signal(self, signum: int) -> None:
        """A stop signal (signals.py has already asked the trainer to stop): once it has saved,
        exit 128 + signum, as --no-ui does."""
        await self._save_and_exit(exit_code(signum), signal.Signals(signum).name)

    async def action_help_quit(self) -> None:
        """Ctrl-C with nothing selected to copy: save (when training) and exit 130."""
        if self.engine is not None and self.run_active:
            self.engine.request_stop(BY_SIGNUM[signal.SIGINT].reason)
        await self._save_and_exit(exit_code(signal.SIGINT), "Ctrl-C")

    async def _save_and_exit(self, code: int, name: str) -> None:
        if self.training_worker is not None and self.run_active:
            self._say_pending(f"{name}: {STOPPING} then quitting")
            await self.training_worker.wait()
        self.exit(code)

    async def action_quit(self) -> None:
        worker = self.training_worker
        if worker is None or not self.run_active:
            self.exit(0)
            return

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            if self.send(commands.Stop()):
                self._say_pending(f"{STOPPING} then quitting")
            await worker.wait()
            self.exit(0)

        self.push_screen(
            ConfirmScreen("Training is running. Save a checkpoint and quit?"), answered
        )


def run_app(app: App, **run_options: Any) -> int:
    """Run the dashboard to its end: its exit code, non-zero when Textual ended with an
    unhandled exception (Textual has then printed the traceback and set return_code 1)."""
    result = app.run(**run_options)
    if app.return_code:
        return app.return_code
    return result if isinstance(result, int) else 0
