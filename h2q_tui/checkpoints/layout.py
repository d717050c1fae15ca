"""What a checkpoint folder holds: file names, the loaded checkpoint's description, checksums.

Layout: ``RUN_DIR/checkpoints/step_00001234/{model.safetensors, state.pt}`` and a
``RUN_DIR/checkpoints/latest`` pointer; ``best`` is kept apart from pruning. A crystallized
folder (h2q_tui/crystal/) has the same ``model.safetensors`` name with its layout in the
metadata and no ``state.pt``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from h2q_tui.config import RunConfig

FORMAT = "h2q-tui"
FORMAT_VERSION = "1"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
TOKENIZER = "tokenizer.json"  # beside the weights when the model reads BPE tokens
LATEST = "latest"
BEST = "best"  # the checkpoint with the best held-out loss, kept apart from pruning
STEP_NAME = re.compile(r"step_\d{8}")


@dataclass(frozen=True)
class CheckpointInfo:
    weights: Path
    config: RunConfig
    step: int
    run_id: str
    rank_growths: int = 0  # QRLM: how often the FFN rank grew before this checkpoint
    note: str = ""  # set when a damaged latest was skipped: which one was used instead, and why
    # a crystallized checkpoint (h2q_tui/crystal/stored.py): its method, source and size; the
    # config above already carries the layout's overrides (rank truncation: rank, shared_bank)
    crystal: Any = None

    def describe(self) -> str:
        """What was loaded, for eval/generate/steer-eval: ``int8 of run X step N, 3.8× smaller``."""
        if self.crystal is not None:
            return self.crystal.describe()
        return f"run {self.run_id} step {self.step}" if self.run_id else f"step {self.step}"

    @property
    def state_path(self) -> Path:
        return self.weights.with_name(STATE)


def tensor_checksums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """CRC-32 of each tensor's bytes (catches flipped bits on disk)."""
    return {name: tensor_crc(tensor) for name, tensor in tensors.items()}


def tensor_crc(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def file_crc(path: Path) -> str:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return f"{crc & 0xFFFFFFFF:08x}"
