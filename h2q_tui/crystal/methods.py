"""Which methods a crystallization runs: ``--method``'s list, or the sweep ladder for a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from h2q_tui.codecs.kronecker import model_rank
from h2q_tui.codecs.method import Step, calibrated, method_name, parse_method
from h2q_tui.codecs.policy import plan, tied_names
from h2q_tui.errors import UserError

SWEEP = "sweep"
BASE_METHODS = ("bf16", "int8", "int6-g128", "int5-g64", "int4-g128", "int4-g32")
MIXED = ("int5-g64+head:int8", "int4-g128+head:int8", "int4-g64+head:int8", "int4-g32+head:int8")
CALIBRATED = ("int8", "int4-g32", "int4-g64+head:int8", "int4-g32+head:int8")  # + "+cal"
SVD_LADDER = ("svd:0.75", "svd:0.5", "svd:0.25", "svd:0.5+int8", "svd:0.25+int8")


def sweep_methods(
    state_dict: dict[str, torch.Tensor], keep: Sequence[str] = (), calibrate: bool = False
) -> tuple[list[str], list[str]]:
    """The standard ladder for this state_dict, and one line per ladder that does not apply.

    bf16, int8, int6-g128, int5-g64, int4-g128, int4-g32, then int5-g64, int4-g128, int4-g64
    and int4-g32 with embeddings/head in int8 (``+head:int8``); with ``calibrate`` also int8,
    int4-g32, int4-g64+head:int8 and int4-g32+head:int8 calibrated (``+cal``); for HamLinear
    models rank:K and
    rank-shared:K at K ≈ 3R/4, R/2, R/4 (K < R) and rank:R/2 with int8, int5-g64 and int4-g32;
    for models with dense matrices (besides embeddings and head) svd:0.75/0.5/0.25 of the
    break-even rank and svd:F+int8.
    """
    methods, skipped = list(BASE_METHODS) + list(MIXED), []
    if calibrate:
        methods += [f"{name}+cal" for name in CALIBRATED]
    try:
        rank = model_rank(state_dict)
    except ValueError as exc:
        rank, why = None, str(exc)
    else:
        why = "no HamLinear layers (rank truncation is for microstream, h2q-transformer and qrlm)"
    if rank is None:
        skipped.append(f"rank ladder skipped: {why}")
    elif rank < 2:
        skipped.append("rank ladder skipped: the Kronecker rank R = 1 leaves nothing to truncate")
    else:
        ks = sorted({max(1, rank * 3 // 4), max(1, rank // 2), max(1, rank // 4)}, reverse=True)
        for k in ks:
            methods += [f"rank:{k}", f"rank-shared:{k}"]
        middle = max(1, rank // 2)
        methods += [f"rank:{middle}+{m}" for m in ("int8", "int5-g64", "int4-g32")]
    try:
        plan(state_dict, parse_method("svd:0.5"), keep)
    except ValueError as exc:
        skipped.append(f"svd ladder skipped: {str(exc).removeprefix('svd:0.5 ')}")
    else:
        methods += list(SVD_LADDER)
    return methods, skipped


def resolve_methods(
    text: str,
    state_dict: dict[str, torch.Tensor],
    keep: Sequence[str] = (),
    calibrate: bool | None = None,
) -> tuple[list[tuple[Step, ...]], list[str]]:
    """Parsed methods of ``--method`` (a comma list, or ``sweep``), each checked against the
    model; and the notes of ladders a sweep skipped. One-line UserError for a bad method.

    ``calibrate``: whether calibration data is given (``--calibrate``): a ``cal`` method needs
    it, and it needs a ``cal`` method (a sweep adds them); None: not checked."""
    try:
        rank = model_rank(state_dict)
    except ValueError:
        rank = None
    unique = {name: t for name, t in state_dict.items() if name not in tied_names(state_dict)}
    parts = [part.strip() for part in text.split(",")]
    skipped: list[str] = []
    if SWEEP in parts:
        if parts != [SWEEP]:
            raise UserError("--method sweep runs the whole ladder; give it alone")
        names, skipped = sweep_methods(unique, keep, bool(calibrate))
    else:
        names = parts
    methods: list[tuple[Step, ...]] = []
    for name in names:
        try:
            steps = parse_method(name, rank)
            plan(unique, steps, keep)
        except ValueError as exc:
            raise method_error(name, exc) from None
        if method_name(steps) in {method_name(m) for m in methods}:
            raise UserError(f"--method names {method_name(steps)} twice")
        methods.append(steps)
    _check_calibration(methods, calibrate)
    return methods, skipped


def _check_calibration(methods: list[tuple[Step, ...]], calibrate: bool | None) -> None:
    """A cal method without --calibrate, or --calibrate without a cal method: a UserError."""
    if calibrate is None:
        return
    needing = [method_name(steps) for steps in methods if calibrated(steps)]
    if needing and not calibrate:
        raise UserError(
            f"--method {needing[0]} rounds by calibration: give --calibrate BYTES "
            "(held-out bytes to calibrate on, e.g. --calibrate 65536)"
        )
    if calibrate and not needing:
        raise UserError(
            "--calibrate is for cal methods: add +cal to one (e.g. --method int4-g32+cal) "
            "or use --method sweep"
        )


def method_error(name: str, exc: Exception) -> UserError:
    """``--method rank:2 does not apply ...`` / ``--method foo: unknown method 'foo' ...``."""
    text = str(exc)
    return UserError(f"--method {text}" if text.startswith(name) else f"--method {name}: {text}")
