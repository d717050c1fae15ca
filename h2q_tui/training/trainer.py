"""The training engine: rolling-horizon or random-window loop, typed events, queued commands.

It never imports UI code. It reports through ``emit(event)`` and obeys commands drained from a
queue between steps; it never waits on a consumer. The class is written in parts, one concern
each: the step (step.py), the work between steps (intervals.py), checkpoints
(checkpointing.py) and the ways a run ends (stopping.py); this module holds the loop.
"""

from __future__ import annotations

import math
import queue
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from h2q_tui import checkpoints
from h2q_tui.config import RunConfig
from h2q_tui.data.sources import Corpus
from h2q_tui.data.streams import HorizonSampler, RandomWindowSampler
from h2q_tui.models import build_model, count_parameters
from h2q_tui.system import hardware
from h2q_tui.system.budget import BudgetWatch, MemoryBudget
from h2q_tui.training import commands, events
from h2q_tui.training.checkpointing import Checkpointing
from h2q_tui.training.distributed import SINGLE, World
from h2q_tui.training.growth import RankGrowthRule
from h2q_tui.training.intervals import Intervals
from h2q_tui.training.optimizer import build_optimizer, scheduled_lr
from h2q_tui.training.step import Stepping
from h2q_tui.training.stopping import Stopping

Emit = Callable[[events.Event], None]


class Trainer(Stepping, Intervals, Checkpointing, Stopping):
    """Owns model, optimizer, sampler and counters for one run (new or resumed).

    Args:
        config: the run config (for a resume: the checkpoint's, with limits updated).
        corpus: training and held-out bytes.
        run_dir: where metrics.jsonl's companion checkpoints go.
        emit: receives every event; must not block.
        command_queue: commands drained between steps (None: none expected).
        preset: the preset's name, recorded in RunStarted.
        resume_from: a checkpoint to continue exactly.
        pause_on_nan: someone can resume (the dashboard): pause on a NaN/Inf loss, and above
            the memory budget after saving, instead of finishing (headless).
        world: this process's rank in a torchrun job (see training/distributed.py): it trains
            on its rows of each global batch; only rank 0 evaluates, samples and saves.
    """

    def __init__(
        self,
        config: RunConfig,
        corpus: Corpus,
        run_dir: Path,
        emit: Emit,
        command_queue: queue.Queue | None = None,
        *,
        preset: str = "",
        resume_from: checkpoints.CheckpointInfo | None = None,
        pause_on_nan: bool = False,
        tokenizer=None,
        device: str = "auto",
        world: World = SINGLE,
    ) -> None:
        self.config, self.corpus, self.run_dir, self.emit = config, corpus, Path(run_dir), emit
        self.world = world
        world.check_batch(config.train.batch_size)
        self.commands: queue.Queue = command_queue or queue.Queue()
        self.preset, self.pause_on_nan, self.tokenizer = preset, pause_on_nan, tokenizer
        t, m = config.train, config.model
        torch.manual_seed(t.seed)
        self._choose_machine(device)  # device, threads, precision
        self.model = build_model(m).to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        self.autocast_dtype = self.precision.autocast_dtype
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.needs_grad_scaler else None
        if t.loop == "horizon":
            self.sampler: HorizonSampler | RandomWindowSampler = HorizonSampler(
                corpus.train, t.batch_size, m.context, t.chunk_bytes
            )
        else:
            self.sampler = RandomWindowSampler(corpus.train, t.batch_size, m.context, t.seed)
        self.sample_generator = torch.Generator().manual_seed(t.seed + 1)
        self.run_id = uuid.uuid4().hex[:12]
        self.step = self.tokens = 0
        self.elapsed_before_s = 0.0
        self.lr_scale = 1.0
        self.chunk_loss_sum, self.chunk_steps = 0.0, 0
        self.best_heldout, self.bad_evals = math.inf, 0
        self.growth_rule = RankGrowthRule(t)
        self.rank_growths = 0
        self.paused = False
        self.stop_requested: str | None = None  # set from a signal handler (no locks there)
        self._segment_start: float | None = None
        self.last_saved_step = -1
        self.poisoned: str | None = None  # why the weights cannot be saved (non-finite)
        self.budget = MemoryBudget.from_config(t)  # checked after every step, on its readings
        self.budget_watch = BudgetWatch()
        self.budget_stop_message = ""  # why a headless run stopped at the budget (one line)
        self.last_checkpoint: str | None = None  # path of the last step checkpoint written
        self.resume_note = resume_from.note if resume_from is not None else ""
        if resume_from is not None:
            self._restore(resume_from)
        self.use_compile = t.compile  # train.compile, off for the rest of the run if it fails
        self.compiles = 0  # compiled modules made so far (a QRLM rank growth makes another)
        self.forward_model = self._training_module()  # what training calls

    def elapsed_s(self) -> float:
        running = (
            time.perf_counter() - self._segment_start if self._segment_start is not None else 0.0
        )
        return self.elapsed_before_s + running

    def current_lr(self) -> float:
        return scheduled_lr(self.config, self.step, self.elapsed_s()) * self.lr_scale

    def notice(self, message: str) -> None:
        self.emit(events.NoticeGiven(self.step, message))

    def _handle(self, command: object) -> str | None:
        """Apply one command; returns a stop reason when the run should end."""
        if isinstance(command, commands.Pause) and not self.paused:
            self.paused = True
            self.emit(events.RunPaused(self.step))
        elif isinstance(command, commands.Resume) and self.paused:
            self.paused = False
            self.emit(events.RunResumed(self.step))
        elif isinstance(command, commands.Stop):
            return command.reason
        elif isinstance(command, commands.SaveNow):
            self.save()
        elif isinstance(command, commands.SampleNow):
            self.sample()
        elif isinstance(command, commands.TakeSnapshot):
            command.deliver(self.snapshot(), self.step)
        elif isinstance(command, (commands.SetLearningRate, commands.ScaleLearningRate)):
            base = scheduled_lr(self.config, self.step, self.elapsed_s())
            new_lr = (
                command.lr
                if isinstance(command, commands.SetLearningRate)
                else self.current_lr() * command.factor
            )
            self.lr_scale = new_lr / base if base > 0 else 1.0
            self.emit(events.LearningRateChanged(self.step, self.current_lr(), self.lr_scale))
        return None

    def _drain_commands(self) -> str | None:
        while True:
            if self.stop_requested:
                return self.stop_requested
            try:
                command = (
                    self.commands.get(timeout=0.1) if self.paused else self.commands.get_nowait()
                )
            except queue.Empty:
                if self.paused:
                    continue
                return None
            reason = self._handle(command)
            if reason:
                return reason

    def _started_event(self) -> events.RunStarted:
        return events.RunStarted(
            run_id=self.run_id,
            n_params=count_parameters(self.model),
            config=self.config.to_dict(),
            preset=self.preset,
            train_source=self.corpus.train_source,
            heldout_source=self.corpus.heldout_source,
            train_bytes=self.corpus.train.numel(),
            heldout_bytes=self.corpus.heldout.numel(),
            device=str(self.device),
            threads=self.threads,
            threads_reason=self.threads_reason,
            start_step=self.step,
            time=self.elapsed_before_s,
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            precision=self.precision.name,
            precision_reason=self.precision.reason,
            machine=hardware.machine_summary(self.device),
            processes=self.world.size,
        )

    def run(self) -> str:
        """Train until a limit, a Stop command or a NaN; returns the finish reason.

        An unexpected error is reported as a RunFailed event, then raised again.
        """
        self._segment_start = time.perf_counter()
        self.emit(self._started_event())
        for message in (self.precision.warning, self.resume_note):
            if message:
                self.notice(message)
        self.model.train()
        try:
            reason = self._loop()
        except Exception as exc:
            self.emit(events.RunFailed(self.step, f"{type(exc).__name__}: {exc}"))
            raise
        return self._finish(reason)

    def _loop(self) -> str:
        while True:
            reason = self.world.agree(self._drain_commands() or self._limit_reached(), self.device)
            if reason:
                return reason
            record = self.train_step()
            if record is None:
                reason = self._on_nan()
                if reason:
                    return reason
                continue
            self.emit(record)
            over = self.world.is_main and self._watch_memory(record)  # rank 0's own RSS
            if self.budget.is_set:
                over = self.world.any(over, self.device)
            if over:  # above the budget: saved; paused or stopping
                reason = "memory" if not self.paused else self._drain_commands()
                if reason:  # while paused: a Stop, or a signal
                    return reason
            self._maybe_grow(record.train_loss_nats)
            self._after_step()
            if self.world.any(bool(self.poisoned), self.device):
                if not self.pause_on_nan:
                    return "nan"
                self._handle(commands.Pause())
