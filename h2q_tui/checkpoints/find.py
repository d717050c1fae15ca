"""Finding a sound checkpoint: a run dir's ``latest`` (or the newest sound step when it is
damaged), a checkpoint folder, or a ``.safetensors`` file, each checked against its checksums.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from safetensors import SafetensorError, safe_open

from h2q_tui.checkpoints.layout import (
    FORMAT,
    LATEST,
    STATE,
    STEP_NAME,
    WEIGHTS,
    file_crc,
    first_line,
    tensor_crc,
)
from h2q_tui.errors import UserError

CRC_THREADS = 2  # checksum threads (zlib, no OpenMP); more gain nothing on these machines


def checkpoint_problem(weights: Path, need_state: bool = False) -> str | None:
    """Why the checkpoint at ``weights`` cannot be trusted (None when it is sound).

    Reads the safetensors header and every tensor, and compares them with the per-tensor
    CRC-32s in its metadata (checkpoints written before checksums existed pass on the header).
    """
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT or "config" not in metadata:
                return "not an h2q-tui checkpoint (no config metadata)"
            expected = json.loads(metadata.get("checksums", "{}"))
            if not isinstance(expected, dict):
                return "unreadable checksums metadata"
            crystal = _crystal_problem(metadata)
            if crystal:
                return crystal
            names = [name for name in handle.keys() if name in expected]  # noqa: SIM118
            damaged = _first_mismatch(names, [handle.get_tensor(n) for n in names], expected)
            if damaged is not None:
                return f"damaged: tensor {damaged} does not match its checksum"
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        return f"corrupt or truncated ({first_line(exc)})"
    state = weights.with_name(STATE)
    if need_state and is_crystallized(metadata):
        return (
            f"a crystallized checkpoint ({metadata.get('h2q.crystal.method', '?')}): eval, "
            "generate and steer-eval load it, training cannot resume from it"
        )
    if need_state and not state.is_file():
        return f"missing its {STATE}"
    crc = metadata.get("state_crc32")
    if crc and state.is_file() and file_crc(state) != crc:
        return f"damaged: {STATE} does not match its checksum"
    return None


def _first_mismatch(names: list[str], tensors: list, expected: dict[str, str]) -> str | None:
    """The first name whose tensor's CRC-32 differs from ``expected`` (None: all match).

    The tensors are views of the memory-mapped file; zlib releases the GIL while it sums,
    so two threads (ended when the pool closes) halve the wait on a 2-core machine.
    """
    workers = max(1, min(CRC_THREADS, os.cpu_count() or 1, len(tensors)))
    if workers == 1:
        crcs = [tensor_crc(t) for t in tensors]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="h2q-crc") as pool:
            crcs = list(pool.map(tensor_crc, tensors))
    for name, crc in zip(names, crcs, strict=True):
        if crc != expected[name]:
            return name
    return None


def is_crystallized(metadata: dict[str, str]) -> bool:
    from h2q_tui.crystal.policy import is_crystallized

    return is_crystallized(metadata)


def _crystal_problem(metadata: dict[str, str]) -> str | None:
    """Why a crystallized file's layout cannot be read (None when it can, or it is not one)."""
    if not is_crystallized(metadata):
        return None
    from h2q_tui.crystal.policy import read_layout

    try:
        read_layout(metadata)
    except ValueError as exc:
        return f"a damaged crystallized file ({first_line(exc)})"
    return None


def _pointer_target(root: Path) -> tuple[Path | None, str | None]:
    """The folder ``latest`` names, or (None, why it cannot be used)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None, None
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, f"{pointer} is unreadable"
    if not STEP_NAME.fullmatch(name):
        return None, f"{pointer} names {name[:40]!r}, not a step_NNNNNNNN folder of {root}"
    if not (root / name / WEIGHTS).is_file():
        return None, f"{pointer} names {name}, which holds no {WEIGHTS}"
    return root / name, None


def named_run_dir(path: Path) -> Path:
    """The run dir meant when ``RUN/checkpoints/latest`` (the pointer file itself) or
    ``RUN/checkpoints`` is named; any other path as it is. Nothing needs to exist yet."""
    if path.name == LATEST and path.parent.name == "checkpoints" and not path.is_dir():
        return path.parent.parent
    if path.name == "checkpoints" and not (path / WEIGHTS).is_file():
        return path.parent
    return path


def resolve_checkpoint(path: str | Path, need_state: bool = False) -> tuple[Path, str]:
    """(weights file, note) from a run dir, a checkpoint folder or a .safetensors file.

    A run dir means its ``latest``; when that is missing or damaged, the newest sound
    ``step_*`` checkpoint is used and the note says which and why. A folder or file named
    directly must itself be sound.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    path = named_run_dir(path)
    direct = path if path.is_file() else path / WEIGHTS
    if direct.is_file():
        problem = checkpoint_problem(direct, need_state)
        if problem:
            raise UserError(f"checkpoint {direct} is {problem}")
        return direct, ""
    root = path / "checkpoints"
    target, pointer_problem = _pointer_target(root)
    steps = sorted(root.glob("step_*/" + WEIGHTS), reverse=True) if root.is_dir() else []
    candidates = ([target / WEIGHTS] if target else []) + [s for s in steps if s.parent != target]
    if not candidates:
        raise UserError(f"no checkpoint in {path} (expected {WEIGHTS} or checkpoints/step_*/)")
    first_problem = pointer_problem
    for weights in candidates:
        problem = checkpoint_problem(weights, need_state)
        if problem is None:
            if first_problem is None:
                return weights, ""
            return weights, f"{first_problem}; using {weights.parent.name}, the newest sound one"
        first_problem = first_problem or f"{weights.parent.name} is {problem}"
    raise UserError(f"no sound checkpoint in {root}: {first_problem}")


def candidate_weights(path: str | Path) -> Path | None:
    """The weights file :func:`resolve_checkpoint` tries first, unchecked (no checksum pass,
    so nothing is read): for looking at a file's page-cache state before loading it."""
    path = named_run_dir(Path(path))
    direct = path if path.is_file() else path / WEIGHTS
    if direct.is_file():
        return direct
    target, _ = _pointer_target(path / "checkpoints")
    return target / WEIGHTS if target else None


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint's weights file from a run dir, a checkpoint folder or a .safetensors file."""
    return resolve_checkpoint(path)[0]
