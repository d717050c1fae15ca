"""The trainer's saved state: what a checkpoint holds, restoring it, and when not to save."""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Any

import torch
from torch import nn

from h2q_tui import checkpoints
from h2q_tui.training import events
from h2q_tui.training.evaluate import mean_cross_entropy


class Checkpointing:
    """Part of Trainer (training/trainer.py), whose attributes it uses: checkpoints in and out.

    A checkpoint holds the weights and everything a resume needs to go on exactly (optimizer,
    data position, random states, counters); weights that went non-finite are never saved.
    """

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
