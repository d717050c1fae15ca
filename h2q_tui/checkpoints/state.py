"""The trainer state beside the weights (``state.pt``): the fields a resume needs, checked
before anything is restored so a damaged file is one clear line instead of a traceback.
"""

from __future__ import annotations

from typing import Any

import torch

_NUMBER = (int, float)
STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "optimizer": dict,
    "sampler": dict,
    "torch_rng": torch.Tensor,
    "sample_rng": torch.Tensor,
    "step": int,
    "tokens": int,
    "elapsed_s": _NUMBER,
    "lr_scale": _NUMBER,
    "chunk_loss_sum": _NUMBER,
    "chunk_steps": int,
    "pending_horizon_val": (int, float, type(None)),
    "best_heldout": _NUMBER,
    "bad_evals": int,
    "run_id": str,
}
OPTIONAL_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "rank_growths": int,
    "growth_rule": dict,
}
SAMPLER_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "horizon": {"epoch": int, "chunk": int, "window": int},
    "random": {"generator": torch.Tensor, "windows_drawn": int},
}


def _wrong_fields(values: dict, fields: dict[str, type | tuple[type, ...]], required: bool):
    missing = [key for key in fields if required and key not in values]
    wrong = [
        key
        for key, kind in fields.items()
        if key in values
        and (not isinstance(values[key], kind) or (kind is int and isinstance(values[key], bool)))
    ]
    return missing, wrong


def state_problem(state: Any, step: int) -> str | None:
    """Why a loaded state.pt cannot restore a trainer (None when its structure is sound)."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not the trainer's state"
    missing, wrong = _wrong_fields(state, STATE_FIELDS, required=True)
    more_missing, more_wrong = _wrong_fields(state, OPTIONAL_STATE_FIELDS, required=False)
    if missing:
        return f"lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
    if wrong or more_wrong:
        return f"has a bad {(wrong + more_wrong)[0]} entry"
    optimizer, sampler = state["optimizer"], state["sampler"]
    if not isinstance(optimizer.get("param_groups"), list) or not isinstance(
        optimizer.get("state"), dict
    ):
        return "has a bad optimizer entry"
    fields = SAMPLER_FIELDS.get(sampler.get("kind"))
    if fields is None or any(_wrong_fields(sampler, fields, required=True)):
        return "has a bad sampler entry"
    if not isinstance(state.get("growth_rule", {"losses": []}).get("losses"), list):
        return "has a bad growth_rule entry"
    if state["step"] != step:
        return f"is for step {state['step']}, but its weights are step {step}"
    return None
