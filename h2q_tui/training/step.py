"""One optimizer step and what it runs on: device, threads, precision, compiling, rank growth."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch
from torch import nn

from h2q_tui.system import hardware, thread_choice
from h2q_tui.system.budget import cuda_memory, rss_bytes
from h2q_tui.training import compiled, events


class Stepping:
    """Part of Trainer (training/trainer.py), whose attributes it uses: the training step."""

    def _choose_machine(self, device: str) -> None:
        """The device (this rank's under torchrun), the thread count and the precision."""
        t = self.config.train
        self.device = self.world.device(hardware.resolve_device(device))
        # train.threads, else auto: steps timed at 1 and N threads (h2q_tui/system/thread_choice.py)
        self.thread_chooser, choice = thread_choice.for_training(
            t.threads,
            self.device.type,
            t.compile,
            thread_choice.local_process_count(self.world.size),
        )
        self.threads, self.threads_reason = choice.threads, choice.reason
        torch.set_num_threads(self.threads)
        self.precision = hardware.choose_precision(t.precision, self.device)
        if hardware.enable_tf32(self.device):
            self.precision = dataclasses.replace(
                self.precision, reason=f"{self.precision.reason}; TF32 for fp32 matmuls"
            )

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

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        )

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
