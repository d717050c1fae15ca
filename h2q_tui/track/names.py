"""Which field of a metrics record a logged scalar fills: one rule for ``track`` and TensorBoard tags.

The dashboard charts ``train_loss_nats`` and held-out ``val_loss_nats``; a script calls them
``loss``, ``train/loss`` or ``eval_loss``. Names are matched case-insensitively on their
parts (split at ``/``); anything the rule does not know is kept under its own name.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

TRAIN_WORDS = {"train", "training"}
EVAL_WORDS = {"val", "valid", "validation", "eval", "evaluation", "test", "heldout"}
LOSS_WORDS = {"loss", "ce", "cross_entropy", "nll", "loss_nats"}
# a base name (lower case, train/eval words taken out) -> the step field it fills
STEP_FIELDS = {
    "lr": "lr",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "gradient_norm": "grad_norm",
    "bpb": "train_bpb",
    "aux_loss": "aux_loss",
    "penalty": "penalty",
    "energy": "energy",
    "step_ms": "step_ms",
    "tokens_per_s": "tokens_per_s",
    "tokens_per_second": "tokens_per_s",
    "data_progress": "data_progress",
    "epoch": "epoch",
}
# names a record already uses for something else: refused from a script
RESERVED = {"event", "step", "tokens", "time", "split"}
COUNT_FIELDS = {"rss_bytes", "cuda_allocated_bytes", "cuda_reserved_bytes"}


def number(name: str, value: Any) -> float | int:
    """``value`` as an int or a float (a 0-dim tensor or a NumPy scalar too), or a TypeError."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{name}={value!r}: a scalar must be a number")
    try:
        return operator.index(value)  # ints (and integer NumPy scalars) stay exact
    except TypeError:
        pass
    try:
        return float(value)
    except (TypeError, ValueError):  # a tensor of several elements, an object with no number
        raise TypeError(f"{name}={_short(value)}: a scalar must be a single number") from None


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def field_of(name: str) -> tuple[str, str]:
    """(record, field) a scalar named ``name`` goes to: ("step", "train_loss_nats"),
    ("eval", "val_loss_nats"), ("step", "lr"), or (either, name) for any other name.

    The name's words (split at ``/ _ - .`` and spaces) less the train and eval words make
    its base: ``Loss/val``, ``eval_loss`` and ``val/loss`` are all an evaluation "loss".
    """
    words = [w for w in re.split(r"[/_\-. ]+", name.lower()) if w]
    evaluation = any(w in EVAL_WORDS for w in words)
    # each word once: add_scalars("Loss", {"val": ...}) writes tag Loss in folder Loss_val
    base = "_".join(dict.fromkeys(w for w in words if w not in TRAIN_WORDS | EVAL_WORDS))
    if base in LOSS_WORDS:
        return ("eval", "val_loss_nats") if evaluation else ("step", "train_loss_nats")
    if base in STEP_FIELDS and not evaluation:
        return "step", STEP_FIELDS[base]
    return ("eval" if evaluation else "step"), name


def fields(scalars: dict[str, float | int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(step fields, eval fields) of some named numbers; a name a record reserves, or a count
    that is not one, is a ValueError. Evaluation scalars go with a held-out loss when there
    is one (and an evaluation's epoch with them), else into the step record."""
    step: dict[str, Any] = {}
    evaluation: dict[str, Any] = {}
    for name, value in scalars.items():
        record, field = field_of(name)
        if field in RESERVED:
            raise ValueError(f"{name}: the record uses this name itself; log it under another")
        if field == "epoch":  # Hugging Face logs a fractional epoch: 1.25 is epoch 1, 25 % done
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value!r}: an epoch must be a number >= 0")
            step["epoch"], step["data_progress"] = int(value), value - int(value)
        elif field in COUNT_FIELDS and not (isinstance(value, int) and value >= 0):
            raise ValueError(f"{name}={value!r}: a byte count must be an int >= 0")
        else:
            (evaluation if record == "eval" else step)[field] = value
    if "val_loss_nats" not in evaluation:  # an eval record is a held-out loss, and more
        return {**step, **evaluation}, {}
    if set(step) <= {"epoch", "data_progress"}:  # an evaluation's own epoch
        return {}, {**evaluation, **step}
    return step, evaluation
