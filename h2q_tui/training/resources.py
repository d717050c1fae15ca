"""Cheap per-step readings of this process: RSS and CUDA memory."""

from __future__ import annotations

import psutil
import torch

_PROCESS = psutil.Process()


def rss_bytes() -> int:
    return _PROCESS.memory_info().rss


def cuda_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(allocated, reserved) bytes on a CUDA device, or (None, None)."""
    if device.type != "cuda":
        return None, None
    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
