"""A Hugging Face ``Trainer`` callback that logs to a run dir; transformers is never imported.

    trainer = Trainer(..., callbacks=[H2QCallback("runs/hf")])

``Trainer`` calls these methods by name, so the class need not derive from its
``TrainerCallback``; the methods it has no use for it finds missing and skips.
"""

from __future__ import annotations

import os
from typing import Any

from h2q_tui import track

# keys of the summary dict Trainer logs once at the end (its train_loss is a mean, not a step's)
SUMMARY_KEY = "train_runtime"


class H2QCallback:
    """Start a run at ``on_train_begin`` (on the main process), log each ``on_log`` dict,
    finish at ``on_train_end``; ``run_dir`` defaults to the Trainer's ``output_dir``."""

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, name: str | None = None):
        self.run_dir, self.name = run_dir, name
        self.run: track.Run | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not getattr(state, "is_world_process_zero", True) or self.run is not None:
            return
        config = args.to_dict() if hasattr(args, "to_dict") else {}
        max_steps = getattr(state, "max_steps", 0) or None
        self.run = track.start(self.run_dir or args.output_dir, config, self.name, max_steps)

    def on_log(self, args: Any, state: Any, control: Any, logs=None, **kwargs: Any) -> None:
        if self.run is None or not logs or SUMMARY_KEY in logs:
            return
        numbers: dict[str, Any] = {
            k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.run.log(step=max(state.global_step, self.run.step), **numbers)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
