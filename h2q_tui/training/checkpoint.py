"""Checkpoints: safetensors weights with metadata, plus optimizer/RNG/data state, written atomically.

Layout: ``RUN_DIR/checkpoints/step_00001234/{model.safetensors, state.pt}`` and a
``RUN_DIR/checkpoints/latest`` pointer. A checkpoint is written into a temporary folder and
renamed into place, so a crash or Ctrl-C mid-write never touches the last good one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from h2q_tui.config import RunConfig, from_dict
from h2q_tui.data.tokenizer import BpeTokenizer
from h2q_tui.errors import UserError

FORMAT = "h2q-tui"
FORMAT_VERSION = "1"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
TOKENIZER = "tokenizer.json"  # beside the weights when the model reads BPE tokens


@dataclass(frozen=True)
class CheckpointInfo:
    weights: Path
    config: RunConfig
    step: int
    run_id: str
    rank_growths: int = 0  # QRLM: how often the FFN rank grew before this checkpoint

    @property
    def state_path(self) -> Path:
        return self.weights.with_name(STATE)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_pointer(root: Path, name: str) -> None:
    tmp = root / f".latest.{os.getpid()}"
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, root / "latest")


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    config: RunConfig,
    step: int,
    run_id: str,
    state: dict[str, Any],
    keep: int = 3,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write a checkpoint atomically and prune all but the newest ``keep``.

    Args:
        run_dir: the run folder.
        model: weights to store (shared/tied tensors are stored once).
        config: the full run config, stored as JSON metadata.
        step: optimizer steps taken.
        run_id: the run's id.
        state: optimizer, RNG and data state (torch tensors and plain data only).
        keep: checkpoints to keep.
        extra_files: files copied into the checkpoint (e.g. its tokenizer.json).

    Returns:
        The checkpoint folder.
    """
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": str(step),
        "run_id": run_id,
        "config": json.dumps(config.to_dict()),
        "rank_growths": str(state.get("rank_growths", 0)),
    }
    save_model(model, str(tmp / WEIGHTS), metadata=metadata)
    torch.save(state, tmp / STATE)
    for file_name, source in (extra_files or {}).items():
        shutil.copyfile(source, tmp / file_name)
    for file in (WEIGHTS, STATE):
        _fsync(tmp / file)
    final = root / name
    if final.exists():  # same step saved twice: swap, never leave a gap without a good copy
        old = root / f".old-{name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _write_pointer(root, name)
    for stale in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint's weights file from a run dir, a checkpoint folder or a .safetensors file."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if (path / WEIGHTS).is_file():
        return path / WEIGHTS
    root = path / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip() / WEIGHTS
        if candidate.is_file():
            return candidate
    steps = sorted(root.glob("step_*/" + WEIGHTS)) if root.is_dir() else []
    if not steps:
        raise UserError(f"no checkpoint in {path} (expected {WEIGHTS} or checkpoints/step_*/)")
    return steps[-1]


def read_info(path: str | Path) -> CheckpointInfo:
    """Read a checkpoint's metadata (config, step) without loading its tensors."""
    weights = find_checkpoint(path)
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"checkpoint {weights} is corrupt or truncated ({_first_line(exc)})"
        ) from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise UserError(f"{weights} is not an h2q-tui checkpoint (no config metadata)")
    try:
        config = from_dict(json.loads(metadata["config"]), source=str(weights))
    except json.JSONDecodeError:
        raise UserError(f"checkpoint {weights} has unreadable config metadata") from None
    return CheckpointInfo(
        weights,
        config,
        int(metadata.get("step", 0)),
        metadata.get("run_id", ""),
        int(metadata.get("rank_growths", 0)),
    )


def load_model_from(info: CheckpointInfo) -> nn.Module:
    """Build the checkpoint's model (with any grown rank) and load its weights, on the CPU."""
    from h2q_tui.models import build_model

    model = build_model(info.config.model)
    for _ in range(info.rank_growths):
        model.grow_ffn_rank()
    load_weights(info, model)
    return model


def tokenizer_of(info: CheckpointInfo) -> BpeTokenizer | None:
    """The BPE tokenizer saved with the checkpoint; None for a byte model."""
    path = info.weights.with_name(TOKENIZER)
    return BpeTokenizer(path) if path.is_file() else None


def load_weights(info: CheckpointInfo, model: nn.Module) -> None:
    """Load the checkpoint's weights into ``model`` (strict)."""
    try:
        missing, unexpected = load_model(model, str(info.weights), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {info.weights} is corrupt or truncated ({_first_line(exc)})"
        ) from None
    if missing or unexpected:
        raise UserError(
            f"checkpoint {info.weights} does not match its model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def load_state(info: CheckpointInfo) -> dict[str, Any]:
    """The optimizer/RNG/data state beside the weights (loaded without running pickle code)."""
    if not info.state_path.is_file():
        raise UserError(
            f"checkpoint {info.weights.parent} has no {STATE}; it can be evaluated but not resumed"
        )
    try:
        return torch.load(info.state_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "not a torch state file"  # torch's own text advises weights_only=False: wrong here
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        reason = _first_line(exc)
    raise UserError(f"checkpoint state {info.state_path} is corrupt or truncated ({reason})")


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's first line, at most 160 characters."""
    text = str(exc).strip().splitlines()
    return text[0].split(". ")[0][:160] if text else type(exc).__name__
