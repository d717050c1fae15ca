"""What a run does every so many steps: horizon and held-out evals, samples, checkpoints."""

from __future__ import annotations

import math
import time

from h2q_tui import checkpoints
from h2q_tui.data.streams import HorizonSampler
from h2q_tui.generation.text import Codec
from h2q_tui.generation.thought_stream import sample_tokens
from h2q_tui.training import events
from h2q_tui.training.evaluate import heldout_cross_entropy, mean_cross_entropy

DIVERGENCE_NATS = 1.0  # held-out CE this far above its best ...
DIVERGENCE_EVALS = 3  # ... for this many evals in a row raises an alarm


class EvalOverBudget(Exception):
    """The final eval after a stop would run past its time budget."""


class Intervals:
    """Part of Trainer (training/trainer.py), whose attributes it uses: the work between steps.

    Only rank 0 of a torchrun job evaluates and samples; the other ranks have nothing to report.
    """

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
