"""The training engine: rolling-horizon or random-window loop, typed events, queued commands.

It never imports UI code. It reports through ``emit(event)`` and obeys commands drained from a
queue between steps; it never waits on a consumer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import time
import uuid
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from h2q_tui import checkpoints
from h2q_tui.config import NO_LIMIT, RunConfig
from h2q_tui.data.sources import Corpus
from h2q_tui.data.streams import HorizonSampler, RandomWindowSampler
from h2q_tui.generation.text import Codec
from h2q_tui.generation.thought_stream import sample_tokens
from h2q_tui.models import build_model, count_parameters
from h2q_tui.system import hardware, thread_choice
from h2q_tui.system.budget import BudgetWatch, MemoryBudget, cuda_memory, rss_bytes
from h2q_tui.training import commands, compiled, events
from h2q_tui.training.distributed import SINGLE, World
from h2q_tui.training.evaluate import heldout_cross_entropy, mean_cross_entropy
from h2q_tui.training.growth import RankGrowthRule

Emit = Callable[[events.Event], None]
DIVERGENCE_NATS = 1.0  # held-out CE this far above its best ...
DIVERGENCE_EVALS = 3  # ... for this many evals in a row raises an alarm
STOP_SIGNALS = {"interrupted": "Ctrl-C", "terminated": "SIGTERM", "hangup": "SIGHUP"}
# A stop asked from outside saves first (a supervisor sends SIGKILL 10-30 s after SIGTERM);
# the final held-out eval then runs only if it ends within this budget.
SAVE_FIRST = frozenset({*STOP_SIGNALS, "stopped"})
STOP_EVAL_BUDGET_S = 5.0


class EvalOverBudget(Exception):
    """The final eval after a stop would run past its time budget."""


# AdamW's fused kernel (one pass per tensor on CPU and GPU) instead of PyTorch's default on a
# CPU, a loop of small ops per tensor: the optimizer step 2.3-2.7x faster for the presets
# (benchmarks/mfu.py --lever adamw measures it side by side); False keeps the default form
FUSED_ADAMW = True
FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (no decay on biases, norms, 1-D tables), fused
    where every parameter is a float tensor on a CPU or GPU.

    A resumed run keeps the form its checkpoint was trained with (the flag is part of the
    saved param groups), so an older run resumes exactly."""
    t = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = FUSED_ADAMW and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params
    )
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused or None)


def scheduled_lr(config: RunConfig, step: int, elapsed_s: float) -> float:
    """Linear warm-up, then constant or cosine decay to min_lr over max_steps (else max_seconds)."""
    t = config.train
    if t.warmup_steps and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    if t.max_steps > 0:
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    elif t.max_seconds > 0:
        progress = elapsed_s / t.max_seconds
    else:
        return t.lr
    progress = min(1.0, max(0.0, progress))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


class Trainer:
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
        self.device = world.device(hardware.resolve_device(device))
        # train.threads, else auto: steps timed at 1 and N threads (h2q_tui/system/thread_choice.py)
        self.thread_chooser, choice = thread_choice.for_training(
            t.threads, self.device.type, t.compile, thread_choice.local_process_count(world.size)
        )
        self.threads, self.threads_reason = choice.threads, choice.reason
        torch.set_num_threads(self.threads)
        self.precision = hardware.choose_precision(t.precision, self.device)
        if hardware.enable_tf32(self.device):
            self.precision = dataclasses.replace(
                self.precision, reason=f"{self.precision.reason}; TF32 for fp32 matmuls"
            )
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

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sample_rng": self.sample_generator.get_state(),
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self.elapsed_s(),
            "lr_scale": self.lr_scale,
            "chunk_loss_sum": self.chunk_loss_sum,
            "chunk_steps": self.chunk_steps,
            "pending_horizon_val": None,  # horizon Val is taken at a chunk's end: none pends
            "best_heldout": self.best_heldout,
            "bad_evals": self.bad_evals,
            "rank_growths": self.rank_growths,
            "growth_rule": self.growth_rule.state_dict(),
            "run_id": self.run_id,
            "world_size": self.world.size,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def _restore(self, info: checkpoints.CheckpointInfo) -> None:
        state = checkpoints.load_state(info)
        for _ in range(state.get("rank_growths", 0)):  # rebuild the grown rank first
            self._grow()
        self.growth_rule.load_state_dict(state.get("growth_rule", {"losses": []}))
        checkpoints.load_weights(info, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.sample_generator.set_state(state["sample_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        for key in (
            "step",
            "tokens",
            "lr_scale",
            "chunk_loss_sum",
            "chunk_steps",
            "best_heldout",
            "bad_evals",
            "run_id",
        ):
            setattr(self, key, state[key])
        self.elapsed_before_s = state["elapsed_s"]
        self.last_saved_step = self.step
        trained_on = state.get("world_size", 1)
        if trained_on != self.world.size:
            self.resume_note = "; ".join(
                n for n in (self.resume_note, self._world_change_note(trained_on)) if n
            )

    def _world_change_note(self, trained_on: int) -> str:
        def count(n: int) -> str:
            return f"{n} process{'es' if n > 1 else ''}"

        return (
            f"this run trained on {count(trained_on)} and resumes on {count(self.world.size)}: "
            f"allowed — the global batch ({self.config.train.batch_size} windows) and its data "
            "order do not depend on the process count, so the curve goes on within float "
            f"rounding (bit-exact only on {count(trained_on)})"
        )

    # ------------------------------------------------------------------ helpers
    def elapsed_s(self) -> float:
        running = (
            time.perf_counter() - self._segment_start if self._segment_start is not None else 0.0
        )
        return self.elapsed_before_s + running

    def _training_module(self) -> nn.Module:
        """The model as training calls it: DDP when distributed, compiled on request (then the
        next step compiles it: ``self.compiling``)."""
        module = self.world.wrap(self.model)
        self.compiling = self.use_compile
        if not self.use_compile:
            return module
        if self.compiles:  # new shapes after a rank growth: drop the old graphs, else each
            torch._dynamo.reset()  # recompile counts towards Dynamo's limit (then it runs eager)
        self.compiles += 1
        return compiled.compile_for_training(module)

    def _compiled_forward_backward(self, sampler_state: dict) -> tuple:
        """_forward_backward; the first compiled step says what compiling cost, and a
        compiler failure is one notice, then the same windows again without compiling."""
        accum = self.config.train.grad_accum
        if not self.compiling:
            return self._forward_backward(accum)
        self.notice("torch.compile: compiling the training step (train.compile = true) ...")
        started = time.perf_counter()
        try:
            result = self._forward_backward(accum)
        except Exception as exc:
            if not compiled.is_compile_failure(exc):
                raise
            self.notice(f"torch.compile failed, training without it: {compiled.failure_line(exc)}")
            self.use_compile = False  # a later rank growth rebuilds the module uncompiled too
            self.forward_model = self._training_module()
            self.optimizer.zero_grad(set_to_none=True)
            self.sampler.load_state_dict(sampler_state)
            return self._forward_backward(accum)
        self.compiling = False
        self.notice(
            f"torch.compile: the first step took {time.perf_counter() - started:.1f} s "
            "with compiling; the steps after it run the compiled code"
        )
        return result

    def current_lr(self) -> float:
        return scheduled_lr(self.config, self.step, self.elapsed_s()) * self.lr_scale

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        )

    def notice(self, message: str) -> None:
        self.emit(events.NoticeGiven(self.step, message))

    def _weights_finite(self) -> bool:
        norms = torch._foreach_norm([p.detach() for p in self.model.parameters()])
        return bool(torch.isfinite(torch.stack(norms)).all())

    def weights_problem(self) -> str | None:
        """Why the current weights must not be saved: non-finite values, or a non-finite loss
        on one held-out window (a huge but finite update poisons the next forward)."""
        if not self._weights_finite():
            return "the weights hold NaN/Inf"
        window = self.corpus.heldout[: self.config.model.context + 1].long().unsqueeze(0)
        nats = mean_cross_entropy(
            self.model, [(window[:, :-1], window[:, 1:])], self.device, self.autocast_dtype
        )
        if not math.isfinite(nats):
            return "the weights give a NaN/Inf loss"
        return None

    def save(self, name: str | None = None, extra_metadata: dict[str, str] | None = None) -> None:
        """Write a checkpoint of the current step (``name="best"``: the best held-out one).
        Rank 0 alone writes (the other ranks hold the same weights)."""
        if not self.world.is_main or (self.last_saved_step == self.step and name is None):
            return
        problem = self.poisoned or self.weights_problem()
        if problem:
            self._poison(problem)
            return
        extra = {checkpoints.TOKENIZER: self.tokenizer.path} if self.tokenizer is not None else {}
        path = checkpoints.save_checkpoint(
            self.run_dir,
            self.model,
            self.config,
            self.step,
            self.run_id,
            self.state_dict(),
            keep=self.config.log.keep_checkpoints,
            extra_files=extra,
            name=name,
            extra_metadata=extra_metadata,
        )
        size = sum(f.stat().st_size for f in path.iterdir())
        if name is None:
            self.last_saved_step = self.step
            self.last_checkpoint = str(path)
        self.emit(events.CheckpointSaved(self.step, str(path), size))

    def _poison(self, problem: str) -> None:
        """Bad weights: never saved; the last good checkpoint stays ``latest``."""
        first = self.poisoned is None
        self.poisoned = problem
        if first:
            self.emit(
                events.AlarmRaised(
                    self.step,
                    "nan",
                    f"{problem} after step {self.step}; nothing is saved from now on and the "
                    "last good checkpoint stays latest (lower train.lr and --resume)",
                )
            )

    def snapshot(self) -> nn.Module:
        """An independent copy of the model as it is now (eval mode, no gradients)."""
        copy = deepcopy(self.model).eval()
        copy.requires_grad_(False)
        return copy

    def sample(self) -> None:
        if not self.world.is_main:
            return
        prompt = self.corpus.heldout[:16].tolist()
        ids = sample_tokens(
            self.model,
            prompt,
            self.config.log.sample_bytes,
            self.config.log.sample_temperature,
            self.sample_generator,
        )
        self.emit(events.SampleReady(self.step, Codec(self.tokenizer).decode(prompt + ids)))

    def _progress(self, task: str):
        """A ``progress(done, total)`` callback that emits ProgressReported at most every 0.5 s."""
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.perf_counter()
            if done < total and now - last[0] < 0.5:
                return
            last[0] = now
            self.emit(events.ProgressReported(self.step, task, done, total))

        return report

    def evaluate_heldout(self, final: bool = False, deadline: float | None = None) -> float:
        """Held-out CE; past ``deadline`` (perf_counter) it raises EvalOverBudget between batches."""
        if not self.world.is_main:  # rank 0 evaluates; the others have nothing to report
            return math.nan
        report = self._progress("final held-out eval" if final else "held-out eval")

        def progress(done: int, total: int) -> None:
            if deadline is not None and done < total and time.perf_counter() > deadline:
                raise EvalOverBudget
            report(done, total)

        nats = heldout_cross_entropy(
            self.model,
            self.corpus.heldout,
            self.config.model.context,
            self.device,
            self.config.eval.heldout_bytes,
            autocast_dtype=self.autocast_dtype,
            progress=progress,
        )
        self.emit(
            events.EvalCompleted(
                self.step,
                self.tokens,
                self.elapsed_s(),
                "heldout",
                nats,
                events.bits_per_byte(nats) / self.corpus.heldout_bytes_per_token,
            )
        )
        self._watch_divergence(nats)
        return nats

    def _watch_divergence(self, nats: float) -> None:
        if nats < self.best_heldout:
            self.best_heldout, self.bad_evals = nats, 0
            self.save(checkpoints.BEST, {"heldout_loss_nats": f"{nats:.6f}"})
            return
        self.bad_evals = self.bad_evals + 1 if nats > self.best_heldout + DIVERGENCE_NATS else 0
        if self.bad_evals == DIVERGENCE_EVALS:
            self.emit(
                events.AlarmRaised(
                    self.step,
                    "divergence",
                    f"held-out CE {nats:.3f} nats is more than "
                    f"{DIVERGENCE_NATS} above its best {self.best_heldout:.3f} for {DIVERGENCE_EVALS} evals",
                )
            )

    def _grow(self) -> int:
        """Grow the FFN rank, registering the new parameters with the optimizer (state of the
        old ones untouched); returns how many parameters were added."""
        new = self.model.grow_ffn_rank()
        self.optimizer.add_param_group(
            {"params": new, "weight_decay": self.config.train.weight_decay}
        )
        self.rank_growths += 1
        return sum(p.numel() for p in new)

    def _maybe_grow(self, loss: float) -> None:
        t = self.config.train
        if not (t.rank_growth and hasattr(self.model, "grow_ffn_rank")):
            return
        if self.growth_rule.observe(self.step, loss, self.model.ffn_rank):
            added = self._grow()
            self.lr_scale *= t.growth_lr_factor
            self.forward_model = self._training_module()  # DDP must see the new factors
            self.emit(events.RankGrown(self.step, self.model.ffn_rank, added, self.current_lr()))

    # ------------------------------------------------------------------ commands
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

    # ------------------------------------------------------------------ loop
    def _limit_reached(self) -> str | None:
        t = self.config.train
        if t.max_steps != NO_LIMIT and self.step >= t.max_steps:  # 0: no step at all
            return "max_steps"
        if t.max_seconds != NO_LIMIT and self.elapsed_s() >= t.max_seconds:
            return "max_seconds"
        return None

    def _forward_backward(self, accum: int) -> tuple[float, int, torch.Tensor, torch.Tensor]:
        """Accumulate gradients over ``accum`` micro-batches of this rank's rows; returns
        (mean CE, tokens, penalty, aux). The weighted penalty joins the last micro-batch's
        backward (one backward per forward, as DDP needs; the weights do not change between)."""
        ce_sum, tokens = 0.0, 0
        rows = self.world.rows(self.config.train.batch_size)
        for i in range(accum):
            last = i == accum - 1
            x, y = (hardware.to_device(t[rows], self.device) for t in self.sampler.next_batch())
            sync = contextlib.nullcontext()
            if not last and self.world.distributed:  # average the gradients once, at the end
                sync = self.forward_model.no_sync()
            with sync:
                with self._autocast():
                    _, ce = self.forward_model(x, y)
                loss = ce / accum
                if last:
                    penalty = self.model.penalty()
                    aux = self.config.train.axiom_lambda * 0.01 * penalty
                    if aux.requires_grad:
                        loss = loss + aux
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            self.sampler.advance()
            ce_sum += float(ce.detach())
            tokens += y.numel()
        return ce_sum / accum, tokens, penalty, aux

    def _use_threads(self) -> None:
        """This step's thread count (auto: the chooser's), set again when a decoder on
        another thread changed torch's."""
        if self.thread_chooser is not None:
            self.threads = self.thread_chooser.threads_for_next_step()
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _time_threads(self, step_s: float) -> None:
        """Give auto's chooser this step's time; say so when it chose a count."""
        choice = self.thread_chooser.observe(step_s) if self.thread_chooser else None
        if choice is not None:
            self.threads_reason = choice.reason
            self.emit(events.ThreadsChosen(self.step, choice.threads, choice.reason))

    def train_step(self) -> events.StepCompleted | None:
        """One optimizer step on the sampler's next window(s); None if the loss was not finite
        (the step is skipped) or the update left non-finite weights (the run is poisoned)."""
        started = time.perf_counter()
        self._use_threads()
        sampler_state = self.sampler.state_dict()
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        ce_nats, tokens, penalty, aux = self._compiled_forward_backward(sampler_state)
        if self.world.distributed:  # the global batch's mean CE and token count
            ce_sum, all_tokens = self.world.sum([ce_nats, tokens], self.device)
            ce_nats, tokens = ce_sum / self.world.size, int(all_tokens)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        )
        if not (math.isfinite(ce_nats) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.sampler.load_state_dict(sampler_state)  # the same windows again after a fix
            return None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if not self._weights_finite():
            self._poison("the update left NaN/Inf weights")
        self.step += 1
        self.tokens += tokens
        self.chunk_loss_sum += ce_nats
        self.chunk_steps += 1
        step_s = time.perf_counter() - started
        self._time_threads(step_s)
        allocated, reserved = cuda_memory(self.device)
        return events.StepCompleted(
            step=self.step,
            tokens=self.tokens,
            time=self.elapsed_s(),
            train_loss_nats=ce_nats,
            train_bpb=events.bits_per_byte(ce_nats) / self.corpus.train_bytes_per_token,
            aux_loss=float(aux.detach()),
            penalty=float(penalty.detach()),
            grad_norm=grad_norm,
            energy=float(self.model.energy),
            step_ms=step_s * 1000,
            tokens_per_s=tokens / step_s,
            lr=lr,
            epoch=self.sampler.epoch,
            data_progress=self.sampler.progress(),
            rss_bytes=rss_bytes(),
            cuda_allocated_bytes=allocated,
            cuda_reserved_bytes=reserved,
        )

    def _horizon_validate(self) -> float:
        """CE of the model as it is now on the next chunk's first columns (not trained on)."""
        fraction = self.config.eval.horizon_val_fraction
        batches = list(self.sampler.horizon_val_batches(fraction))  # type: ignore[union-attr]
        return mean_cross_entropy(
            self.model,
            batches,
            self.device,
            self.autocast_dtype,
            progress=self._progress("horizon validation (next chunk)"),
        )

    def _horizon_chunk_done(self) -> None:
        """A chunk is trained: Val of the model at this step against the chunk's mean Train.

        Validating at the chunk's end, not before it, keeps every point on the model of
        the step it is drawn at (the first is never the untrained model).
        """
        train = self.chunk_loss_sum / max(1, self.chunk_steps)
        val = self._horizon_validate() if self.world.is_main else math.nan
        self.emit(
            events.EvalCompleted(
                self.step,
                self.tokens,
                self.elapsed_s(),
                "horizon",
                val,
                events.bits_per_byte(val) / self.corpus.train_bytes_per_token,
                train,
                val - train,
            )
        )
        self.chunk_loss_sum, self.chunk_steps = 0.0, 0

    def _after_step(self) -> None:
        every = self.config.log, self.config.eval
        if isinstance(self.sampler, HorizonSampler) and self.sampler.at_chunk_start():
            self._horizon_chunk_done()
        if every[1].heldout_interval and self.step % every[1].heldout_interval == 0:
            self.evaluate_heldout()
        if every[0].sample_interval and self.step % every[0].sample_interval == 0:
            self.sample()
        if every[0].checkpoint_interval and self.step % every[0].checkpoint_interval == 0:
            self.save()

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

    def _watch_memory(self, record: events.StepCompleted) -> bool:
        """Compare this step's readings with the budget (free: they are already taken).

        From 90 %: one ``alarm`` (kind ``memory``), raised again only after the reading fell
        back under 85 %. Above 100 %: an ``alarm`` (kind ``memory_over``) saying what is over
        and by how much, a checkpoint, then a pause (the dashboard: p resumes) or, headless,
        the run stops (``budget_stop_message`` says why) instead of meeting the OOM killer.
        True when it was above the budget (saved; paused, or to stop when not paused).
        """
        if not self.budget.is_set:
            return False
        readings = self.budget.readings(record.rss_bytes, record.cuda_reserved_bytes)
        over = None
        for level, reading in self.budget_watch.observe(readings):
            if level == "over":
                over = reading
                continue
            self._memory_alarm(
                "memory",
                reading,
                f"{reading.describe()}: past 90 %; above 100 % training saves a checkpoint and "
                + ("pauses" if self.pause_on_nan else "stops"),
            )
        if over is None:
            return False
        then = "pausing (p resumes)" if self.pause_on_nan else "stopping"
        self._memory_alarm(
            "memory_over", over, f"{over.describe()} after step {self.step}: saving, then {then}"
        )
        self.save()
        if self.pause_on_nan:
            self._handle(commands.Pause())
            return True
        saved = (
            f"checkpoint {self.last_checkpoint}"
            if self.last_checkpoint and self.last_saved_step == self.step
            else "no checkpoint of this step (see the log)"
        )
        flag = "--vram-budget" if over.resource == "VRAM" else "--memory-budget"
        self.budget_stop_message = (
            f"{over.describe()} at step {self.step}; {saved}; continue with "
            f"--resume {self.run_dir} and a larger {flag}, or lower train.batch_size"
        )
        return True

    def _memory_alarm(self, kind: str, reading, message: str) -> None:
        limit = reading.limit.limit if reading.limit else 0
        self.emit(
            events.MemoryAlarmRaised(
                self.step, kind, message, reading.resource, reading.used or 0, limit
            )
        )

    def _on_nan(self) -> str | None:
        self.emit(
            events.AlarmRaised(
                self.step,
                "nan",
                f"loss or gradient is NaN/Inf at step {self.step + 1}; "
                "the step was skipped and the last checkpoint kept",
            )
        )
        if self.pause_on_nan:
            self._handle(commands.Pause())
            return None
        return "nan"

    def _finish(self, reason: str) -> str:
        if reason == "memory":  # saved already; a final eval would only allocate more
            self.notice(self.budget_stop_message)
        elif reason in SAVE_FIRST:
            if reason in STOP_SIGNALS:
                self.notice(
                    f"stopping ({STOP_SIGNALS[reason]}): saving a checkpoint, then a final "
                    f"eval if it takes under {STOP_EVAL_BUDGET_S:.0f} s…"
                )
            self.notice(f"saving checkpoint at step {self.step}…")
            self.save()
            if self._final_eval_due():
                self._final_eval_within(STOP_EVAL_BUDGET_S)
        elif reason != "nan":
            if self._final_eval_due():
                self.evaluate_heldout(final=True)
            self.notice(f"saving checkpoint at step {self.step}…")
            self.save()
        self.emit(events.RunFinished(self.step, self.tokens, self.elapsed_s(), reason))
        return reason

    def _final_eval_due(self) -> bool:
        """No held-out eval has run at this step yet."""
        interval = self.config.eval.heldout_interval
        return interval == 0 or self.step % interval != 0

    def _final_eval_within(self, budget_s: float) -> None:
        """After a stop has saved: the final eval, or a notice that it was skipped."""
        try:
            self.evaluate_heldout(final=True, deadline=time.perf_counter() + budget_s)
        except EvalOverBudget:
            self.model.train()  # the eval left it in eval mode
            self.notice(
                f"final eval skipped: it would take over {budget_s:.0f} s (the checkpoint is saved)"
            )
