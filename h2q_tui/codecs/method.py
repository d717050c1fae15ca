"""Method strings and chains: ``svd:0.5+int8`` parsed into steps, and applied codec by codec.

A method is at most one structural step (``rank:K``, ``rank-shared:K``, ``svd:K``/``svd:F``),
first, then at most one numeric step (``bf16``, ``fp16``, ``int8``, ``intB-gG``), then the
modifiers, in this order: ``head:N`` (embeddings, head and position tables get the numeric
step N instead, e.g. ``int4-g32+head:int8``) and ``cal`` (int rounding that lowers each
layer's output error on calibration text: :mod:`h2q_tui.codecs.gptq`).
Combinations are applied left to right (``svd:0.5+int8``: the SVD, then int8 on each of its
factors ``u`` and ``v``); decoding runs in reverse. :func:`encode_chain` / :func:`decode_chain`
name a later step's parts ``factor::part`` (e.g. ``u::q``, ``u::scale``).
``rank:K`` / ``rank-shared:K`` (HamLinear Kronecker-rank truncation) act on a whole group of
tensors at once and live in :mod:`h2q_tui.codecs.kronecker`; the parser knows them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from h2q_tui.codecs.gptq import encode_calibrated
from h2q_tui.codecs.tensor import CODECS, INT4_GROUPS, CrystalFormatError, Meta, Stored

PART_SEPARATOR = "::"
METHOD_HELP = (
    "bf16, fp16, int8, int6-gG, int5-gG, int4-gG (G = 32, 64 or 128, e.g. int4-g32), rank:K, "
    "rank-shared:K, svd:K, svd:F "
    "(0 < F <= 1), or a structural one then a numeric one joined by '+', e.g. svd:0.5+int8; "
    "then +head:N (embeddings/head in numeric N, e.g. int4-g32+head:int8) and +cal "
    "(calibrated int rounding, needs --calibrate)"
)
MODIFIERS = ("head", "cal")  # after the numeric step, in this order; not codecs themselves
STRUCTURAL = ("rank", "rank-shared", "svd")  # change which numbers are stored; at most one, first
NUMERIC = (
    "bf16",
    "fp16",
    "int8",
    "int4",
    "int5",
    "int6",
)  # change how they are stored; at most one, last


# ----------------------------------------------------------------------------- method strings
@dataclass(frozen=True)
class Step:
    """One step of a method: ``name`` in STRUCTURAL + NUMERIC + MODIFIERS; ``value`` its K, F,
    group, or (``head``) the numeric step of embeddings and head."""

    name: str
    value: int | float | Step | None = None

    def __str__(self) -> str:
        if self.name == "head":
            return f"head:{self.value}"
        if self.name in ("int4", "int5", "int6"):
            return f"{self.name}-g{self.value}"
        if self.name == "svd" and isinstance(self.value, float):
            return f"svd:{self.value!r}"  # repr keeps a decimal point or exponent: 1.0, not 1
        if self.value is not None:
            return f"{self.name}:{self.value}"
        return self.name

    @property
    def structural(self) -> bool:
        return self.name in STRUCTURAL

    @property
    def modifier(self) -> bool:
        return self.name in MODIFIERS

    @property
    def integer(self) -> bool:
        """An int codec (int8, int4/5/6-gG): the steps ``cal`` calibrates."""
        return self.name in ("int8", "int4", "int5", "int6")

    def params(self) -> dict[str, Any]:
        """Keyword arguments of the codec's encode (tensor codecs only)."""
        if self.name in ("int4", "int5", "int6"):
            return {"group": self.value}
        if self.name == "svd":
            return (
                {"fraction": self.value} if isinstance(self.value, float) else {"rank": self.value}
            )
        return {}


def method_name(steps: tuple[Step, ...] | list[Step]) -> str:
    return "+".join(str(step) for step in steps)


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)")


def core_steps(steps: tuple[Step, ...] | list[Step]) -> tuple[Step, ...]:
    """The codec steps of a method, without its modifiers (``head:N``, ``cal``)."""
    return tuple(step for step in steps if not step.modifier)


def head_step(steps: tuple[Step, ...] | list[Step]) -> Step | None:
    """The numeric step ``head:N`` gives embeddings, head and position tables, or None."""
    return next((step.value for step in steps if step.name == "head"), None)  # type: ignore[misc]


def calibrated(steps: tuple[Step, ...] | list[Step]) -> bool:
    """Whether the method ends in ``cal`` (int rounding from calibration data)."""
    return any(step.name == "cal" for step in steps)


def _parse_step(text: str, rank: int | None) -> Step:
    if text in ("bf16", "fp16", "int8", "cal"):
        return Step(text)
    if text.startswith("head:"):
        inner = _parse_step(text[5:], rank)
        if inner.structural or inner.modifier:
            raise ValueError(
                f"{text}: head takes a numeric step (bf16, fp16, int8, intB-gG), e.g. head:int8"
            )
        return Step("head", inner)
    if re.fullmatch(r"int[456](-.*)?", text):
        bits = text[3]
        match = re.fullmatch(r"int[456]-g(\d+)", text)
        if not match:
            raise ValueError(
                f"unknown method {text!r}: int{bits} needs a group, int{bits}-g32, "
                f"int{bits}-g64 or int{bits}-g128"
            )
        group = int(match.group(1))
        if group not in INT4_GROUPS:
            raise ValueError(f"{text}: group size must be 32, 64 or 128")
        return Step(f"int{bits}", group)
    name, colon, value = text.partition(":")
    if name in ("rank", "rank-shared"):
        if not colon or not _INT.fullmatch(value):
            raise ValueError(f"{text}: {name} needs an integer K, e.g. {name}:4")
        k = int(value)
        if k < 1:
            raise ValueError(f"{text}: K must be at least 1")
        if rank is not None and k >= rank:
            raise ValueError(
                f"{text}: K must be below the Kronecker rank R = {rank} (1 <= K < {rank})"
            )
        return Step(name, k)
    if name == "svd":
        if colon and _INT.fullmatch(value):
            if int(value) < 1:
                raise ValueError(f"{text}: the rank K must be at least 1")
            return Step("svd", int(value))
        if colon and _FLOAT.fullmatch(value):
            fraction = float(value)
            if not 0.0 < fraction <= 1.0:
                raise ValueError(
                    f"{text}: a fraction F of the break-even rank must be in (0, 1] "
                    "(write an integer for a rank)"
                )
            return Step("svd", fraction)
        raise ValueError(f"{text}: svd needs a rank K (svd:16) or a fraction F in (0, 1] (svd:0.5)")
    raise ValueError(f"unknown method {text!r} (known: {METHOD_HELP})")


def parse_method(text: str, rank: int | None = None) -> tuple[Step, ...]:
    """``"svd:0.5+int8"`` → (Step("svd", 0.5), Step("int8")); one-line ValueError otherwise.

    At most one structural step (rank, rank-shared, svd), first; at most one numeric step
    (bf16, fp16, int8, int6-gG, int5-gG, int4-gG), last; then ``head:N`` and ``cal``, in that
    order. An integer after ``svd:`` is a rank, a decimal a fraction. ``rank``: the model's
    Kronecker rank R, when known, bounds rank:K to K < R.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty method (known: {METHOD_HELP})")
    parts = [part.strip() for part in stripped.split("+")]
    if any(not part for part in parts):
        raise ValueError(f"{stripped}: empty step between '+' signs")
    steps = tuple(_parse_step(part, rank) for part in parts)
    _check_modifiers(stripped, steps)
    core = core_steps(steps)
    if not core:
        raise ValueError(f"{stripped}: a method needs a codec step before head:N or cal")
    _check_core(stripped, core)
    return steps


def _check_modifiers(text: str, steps: tuple[Step, ...]) -> None:
    """head:N then cal, each at most once, after every codec step; cal needs an int step."""
    names = [step.name for step in steps if step.modifier]
    tail = [step.name for step in steps[len(steps) - len(names) :]]
    if tail != names or names not in ([], ["head"], ["cal"], ["head", "cal"]):
        raise ValueError(f"{text}: head:N and then cal come last, each at most once")
    if "cal" in names and not any(
        step.integer or (step.name == "head" and step.value.integer)  # type: ignore[union-attr]
        for step in steps
    ):
        raise ValueError(f"{text}: cal calibrates int rounding, and this method has no int step")


def _check_core(stripped: str, steps: tuple[Step, ...]) -> None:
    structural = [i for i, step in enumerate(steps) if step.structural]
    numeric = [i for i, step in enumerate(steps) if not step.structural]
    if len(structural) > 1 or (structural and structural[0] != 0):
        raise ValueError(
            f"{stripped}: at most one structural step (rank or svd), and it comes first"
        )
    if len(numeric) > 1 or (numeric and numeric[0] != len(steps) - 1):
        raise ValueError(
            f"{stripped}: at most one numeric step (bf16, fp16, int8, intB-gG), and it comes last"
        )


def parse_methods(text: str, rank: int | None = None) -> list[tuple[Step, ...]]:
    """A comma-separated list of methods (``--method int8,svd:0.5+int8``)."""
    return [parse_method(part, rank) for part in text.split(",")]


# ----------------------------------------------------------------------------- chains
def encode_chain(
    tensor: torch.Tensor,
    steps: tuple[Step, ...] | list[Step],
    importance: torch.Tensor | None = None,
) -> tuple[Stored, Meta]:
    """Apply tensor-codec steps left to right; a later step encodes each factor part of the first.

    Stored parts of a later step are named ``factor::part``; meta["parts"] maps each factor to
    its own meta. ``importance`` (one per column of the last dimension, or their second-moment
    matrix H): an int first step rounds by it (:mod:`h2q_tui.codecs.gptq`), the same parts
    stored.
    """
    if not steps:
        raise ValueError("encode_chain needs at least one step")
    first, rest = steps[0], tuple(steps[1:])
    if first.name not in CODECS:
        raise ValueError(f"{first}: not a tensor codec (rank acts on HamLinear groups)")
    codec = CODECS[first.name]
    if importance is not None and first.integer:
        stored, meta = encode_calibrated(first.name, tensor, first.params(), importance)
    else:
        stored, meta = codec.encode(tensor, **first.params())
    if not rest:
        return stored, meta
    if not codec.factor_parts:
        raise ValueError(f"{method_name(steps)}: {first} leaves nothing for a later step to encode")
    out: Stored = {}
    parts: dict[str, Meta] = {}
    for part, value in stored.items():
        if part in codec.factor_parts:
            sub, sub_meta = encode_chain(value, rest)
            out.update({f"{part}{PART_SEPARATOR}{key}": t for key, t in sub.items()})
            parts[part] = sub_meta
        else:
            out[part] = value
    return out, {**meta, "parts": parts}


def decode_chain(stored: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> torch.Tensor:
    """Inverse of :func:`encode_chain` (decodes the factors, then the first step)."""
    name = meta.get("codec") if isinstance(meta, Mapping) else None
    if name not in CODECS:
        raise CrystalFormatError(f"unknown codec {name!r} in crystallized metadata")
    direct: dict[str, torch.Tensor] = {
        key: value for key, value in stored.items() if PART_SEPARATOR not in key
    }
    parts = meta.get("parts", {})
    if not isinstance(parts, Mapping):
        raise CrystalFormatError(f"{name}: bad 'parts' in crystallized metadata")
    for part, part_meta in parts.items():
        prefix = f"{part}{PART_SEPARATOR}"
        sub = {key[len(prefix) :]: value for key, value in stored.items() if key.startswith(prefix)}
        direct[part] = decode_chain(sub, part_meta)
    return CODECS[name].decode(direct, meta)
