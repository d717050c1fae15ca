"""Which tensors of a state_dict a method touches (the default policy and ``--keep``).

**Default policy** (tensor names are state_dict keys; ``keep`` globs, from ``--keep PATTERN``,
match them with fnmatch, case-sensitive):

- ``rank:K`` / ``rank-shared:K`` apply to the HamLinear layers only (structure banks
  ``*bank.A``/``*bank.extra.N`` and factors ``*.B``/``*.B_extra.N``, see
  :mod:`h2q_tui.codecs.kronecker`); it is an error on a model without them (a GPT).
  Truncation is model-wide (the model is rebuilt with rank K), so ``keep`` cannot exempt a
  layer from it; on a HamLinear tensor ``keep`` only skips the numeric step that follows.
- ``svd:K`` / ``svd:F`` apply to dense 2-D float weight matrices (both sides ≥ 2) except
  embeddings, the head and position tables (any dotted part of the name containing ``emb``,
  or equal to ``wte``, ``wpe``, ``head``, ``lm_head`` or ending in ``_head``); an error when
  no tensor qualifies (microstream and qrlm have none: their linear maps are HamLinear).
- ``int8`` / ``int6-gG`` / ``int5-gG`` / ``int4-gG`` apply to every float tensor with ≥ 2
  dimensions: 2-D weights
  *including* embeddings, head and position tables, HamLinear factor stacks (R, F, F), conv
  kernels, and the factors a structural step produced.
- ``bf16`` / ``fp16`` apply to every float tensor, 1-D ones included.
- Never touched by default: 1-D tensors (norm weights, biases) under int8/int4/svd, non-float
  tensors, and structure banks under any numeric step (a bank is R·4·S² numbers, a few
  hundred, shared by every layer: quantising it saves nothing and perturbs them all) —
  including the per-layer banks ``rank:K`` creates.
- A tensor tied to another (same storage, e.g. GPT's ``lm_head.weight`` = ``wte.weight``) is
  stored once, under its first name, and follows that name's policy.

In a combination each step applies where the policy allows it: under ``svd:0.5+int8`` an
embedding gets int8 only, a dense matrix its SVD factors in int8.

``head:N`` gives embeddings, head and position tables (by the names above, HamLinear tensors
never) the numeric step N instead of the method's own: under ``int4-g32+head:int8`` GPT's tied
embedding/head matrix is stored in int8 and every other matrix in int4 (llama.cpp's Q4_0 and
Q4_K keep that matrix at 8 bits too). ``cal`` changes no choice here, only the rounding.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

import torch

from h2q_tui.codecs.kronecker import VARIANTS, ham_groups
from h2q_tui.codecs.method import Step, core_steps, head_step, method_name, parse_method

_BANK_NAME = re.compile(r"(^|\.)bank\.(A|extra\.\d+)$")
_EMBEDDING_PARTS = {"wte", "wpe", "head", "lm_head"}

Plan = dict[str, "tuple[Step, ...] | None"]


# ----------------------------------------------------------------------------- policy
def is_bank(name: str) -> bool:
    return bool(_BANK_NAME.search(name))


def is_embedding_or_head(name: str) -> bool:
    """Embedding, head or position table, judged by the name's dotted parts."""
    return any(
        part in _EMBEDDING_PARTS or "emb" in part.lower() or part.endswith("_head")
        for part in name.split(".")
    )


def step_applies(step: Step, name: str, tensor: torch.Tensor) -> bool:
    """Whether a tensor codec step applies to this tensor by default (rank: see :func:`plan`)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return False
    if step.name in ("bf16", "fp16"):
        return not is_bank(name)
    if step.name in ("int8", "int4", "int5", "int6"):
        return tensor.ndim >= 2 and not is_bank(name)
    if step.name == "svd":
        return tensor.ndim == 2 and min(tensor.shape) >= 2 and not is_embedding_or_head(name)
    return False


def kept(name: str, keep: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in keep)


def as_steps(method: str | Iterable[Step]) -> tuple[Step, ...]:
    """A method given as a string or as parsed steps, as steps."""
    return parse_method(method) if isinstance(method, str) else tuple(method)


def split_steps(steps: tuple[Step, ...]) -> tuple[Step | None, Step | None]:
    """(the structural step or None, the numeric step or None), modifiers aside."""
    steps = core_steps(steps)
    structural = steps[0] if steps and steps[0].structural else None
    numeric = steps[-1] if steps and not steps[-1].structural else None
    return structural, numeric


def plan(
    state_dict: Mapping[str, torch.Tensor], method: str | Iterable[Step], keep: Iterable[str] = ()
) -> Plan:
    """name → the steps applied to it (None: stored as is), by the default policy above.

    For HamLinear tensors under rank the steps read "rank, then the numeric step on the
    truncated factors". Raises a one-line ValueError when the method's structural step
    applies to no tensor of this state_dict.
    """
    steps, keep = as_steps(method), tuple(keep)
    structural, numeric = split_steps(steps)
    head = head_step(steps)
    ham: set[str] = set()
    banks: set[str] = set()
    if structural is not None and structural.name in VARIANTS:
        groups = ham_groups(state_dict)
        if not groups:
            raise ValueError(
                f"{method_name(steps)} does not apply to this model: it has no HamLinear layers "
                "(rank truncation is for microstream, h2q-transformer and qrlm)"
            )
        ham = {key for group in groups for key in group.keys}
        banks = {key for group in groups for key in group.bank_keys}
    result: Plan = {}
    for name, tensor in state_dict.items():
        chosen: list[Step] = []
        if name in ham:
            chosen.append(structural)  # type: ignore[arg-type]
            if (
                numeric
                and name not in banks
                and not kept(name, keep)
                and step_applies(numeric, name, tensor)
            ):
                chosen.append(numeric)
        elif not kept(name, keep) and head is not None and is_embedding_or_head(name):
            if step_applies(head, name, tensor):
                chosen.append(head)
        elif not kept(name, keep):
            if (
                structural is not None
                and structural.name == "svd"
                and step_applies(structural, name, tensor)
            ):
                chosen.append(structural)
            if numeric is not None and step_applies(numeric, name, tensor):
                chosen.append(numeric)
        result[name] = tuple(chosen) or None
    if (
        structural is not None
        and structural.name == "svd"
        and not any(entry and entry[0] == structural for entry in result.values())
    ):
        raise ValueError(
            f"{method_name(steps)} does not apply to this model: it has no dense 2-D weight "
            "matrices besides embeddings, head and position tables"
            + (" (or --keep exempts them all)" if keep else "")
        )
    return result


def tied_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """alias → first name, for tensors that share storage, shape, strides and dtype."""
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state_dict.items():
        if tensor.numel() == 0:
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases
