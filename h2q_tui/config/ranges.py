"""The range of every numeric config key, and the check that names the key and its bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from h2q_tui.errors import UserError

NO_LIMIT = -1  # train.max_steps / train.max_seconds: train on until stopped
BIG = 2**62  # "no practical limit" for counts of steps and bytes (and far from int64 overflow)


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take; ``low_open``/``high_open`` exclude the bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""  # what the key means, appended to the error

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        low = (
            f"{'>' if self.low_open else '>='} {_number(self.low)}" if self.low is not None else ""
        )
        high = (
            f"{'<' if self.high_open else '<='} {_number(self.high)}"
            if self.high is not None
            else ""
        )
        if low and high and not (self.low_open or self.high_open):
            return f"between {_number(self.low)} and {_number(self.high)}"
        return " and ".join(part for part in (low, high) if part)


def _number(value: float | None) -> str:
    """A bound as a message shows it: ints with thousands separators, floats short."""
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _int(low: int, high: int = BIG, note: str = "") -> Range:
    return Range(low, high, note=note)


def _positive(note: str = "", high: float | None = None) -> Range:
    return Range(0.0, high, low_open=True, note=note)


def _non_negative(note: str = "", high: float | None = None) -> Range:
    return Range(0.0, high, note=note)


def _fraction(note: str = "", high_open: bool = True) -> Range:
    return Range(0.0, 1.0, low_open=True, high_open=high_open, note=note)


# One rule per numeric key of every section (tests/test_config_fuzz.py checks none is missing).
# The upper bounds of sizes are far beyond any machine (the memory check refuses much less);
# they keep every product of sizes far from int64 overflow.
RANGES: dict[tuple[str, str], Range] = {
    ("model", "vocab_size"): _int(1, 2**24, "256 for bytes, the tokenizer's size for BPE"),
    ("model", "d_model"): _int(1, 2**20, "model width"),
    ("model", "n_layers"): _int(1, 2**16),
    ("model", "n_heads"): _int(1, 2**16),
    ("model", "context"): _int(1, 2**24, "tokens per window"),
    ("model", "dropout"): Range(0.0, 1.0, high_open=True, note="a probability"),
    ("model", "factor_size"): _int(1, 2**16),
    ("model", "rank"): _int(1, 2**12),
    ("model", "mlp_ratio"): _int(1, 2**10),
    ("model", "momentum_beta"): Range(0.0, 1.0),
    ("model", "separator_token"): _int(-1, 2**24 - 1, "-1 = none"),
    ("model", "separator_damping"): Range(0.0, 1.0),
    ("model", "gravity_strength"): _non_negative(),
    ("model", "gravity_max_distance"): _int(0, 2**31),
    ("model", "reflex_kernel"): _int(1, 2**16),
    ("model", "rope_base"): Range(1.0, low_open=True, note="10000 in the source"),
    ("train", "batch_size"): _int(1, 2**24),
    ("train", "chunk_bytes"): _int(1),
    ("train", "lr"): _positive("the peak learning rate"),
    ("train", "min_lr"): _non_negative("the cosine schedule's floor"),
    ("train", "weight_decay"): _non_negative(),
    ("train", "beta1"): Range(0.0, 1.0, high_open=True, note="AdamW beta1"),
    ("train", "beta2"): Range(0.0, 1.0, high_open=True, note="AdamW beta2"),
    ("train", "grad_clip"): _positive("the largest gradient norm; 1e9 in effect turns it off"),
    ("train", "warmup_steps"): _int(0),
    ("train", "axiom_lambda"): _non_negative(),
    ("train", "threads"): _int(0, 4096, "0 = auto"),
    ("train", "grad_accum"): _int(1, 2**20, "micro-batches per optimizer step"),
    ("train", "growth_start_step"): _int(0),
    ("train", "growth_interval"): _int(1),
    ("train", "growth_window"): _int(1),
    ("train", "growth_lookback"): _int(1),
    ("train", "growth_threshold"): _non_negative(),
    ("train", "growth_max_rank"): _int(1, 2**12),
    ("train", "growth_lr_factor"): _positive(),
    ("train", "max_steps"): _int(NO_LIMIT, note="-1 = no limit; --max-steps sets it"),
    ("train", "max_seconds"): Range(float(NO_LIMIT), note="-1 = no limit; --max-seconds sets it"),
    ("train", "seed"): _int(0, note="--seed sets it"),
    ("eval", "heldout_interval"): _int(0, note="0 = only at the end"),
    ("eval", "heldout_bytes"): _int(1),
    ("eval", "heldout_fraction"): _fraction("the share of the corpus held out"),
    ("eval", "horizon_val_fraction"): _fraction(high_open=False),
    ("eval", "random_val_interval"): _int(0),
    ("log", "log_interval"): _int(1, note="steps between console lines"),
    ("log", "sample_interval"): _int(0, note="0 = never"),
    ("log", "sample_bytes"): _int(1, 2**20),
    ("log", "sample_temperature"): _positive(),
    ("log", "checkpoint_interval"): _int(0, note="0 = only at the end"),
    ("log", "keep_checkpoints"): _int(1, 2**20, "step_* checkpoints kept"),
    ("log", "system_interval_s"): _non_negative("seconds between system events; 0 = none"),
}


def check_value(section: str, key: str, value: Any) -> None:
    """A numeric key's value is finite and inside its Range (bools and strings pass)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    name = f"{section}.{key}"
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {name} must be a finite number, got {value}")
    rule = RANGES.get((section, key))
    if rule is not None and not rule.holds(value):
        note = f" ({rule.note})" if rule.note else ""
        raise UserError(f"config key {name} must be {rule.describe()}{note}, got {shown(value)}")


def shown(value: Any, limit: int = 60) -> str:
    """A value as one short line for an error message (repr, newlines escaped, cut)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
