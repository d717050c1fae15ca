"""Writing checkpoints atomically: a temporary folder renamed into place, then ``latest`` moved.

A crash, a stop signal or a full disk mid-write never touches the last good checkpoint; the
leftovers of a dead writer are removed the next time the run saves or starts.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors import SafetensorError
from safetensors.torch import save_model
from torch import nn

from h2q_tui.checkpoints import run_lock
from h2q_tui.checkpoints.layout import (
    FORMAT,
    FORMAT_VERSION,
    LATEST,
    STATE,
    WEIGHTS,
    file_crc,
    tensor_checksums,
)
from h2q_tui.config import RunConfig
from h2q_tui.errors import write_error
from h2q_tui.system.files import give_umask_mode


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_pointer(root: Path, name: str) -> None:
    tmp = root / f".latest.{os.getpid()}"
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, root / LATEST)


def remove_leftovers(root: Path, owner: bool = False) -> list[Path]:
    """Remove temporary folders/files that dead writers left in ``root``.

    ``owner``: this process holds the run-dir lock, so every leftover but its own is dead.
    Otherwise only those whose PID no longer runs are removed.
    """
    removed = []
    for path in [*root.glob(".tmp-*"), *root.glob(".old-*"), *root.glob(".latest.*")]:
        pid = re.search(r"(\d+)$", path.name)
        if pid and int(pid.group(1)) == os.getpid():
            continue
        if pid and not owner and psutil.pid_exists(int(pid.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    config: RunConfig,
    step: int,
    run_id: str,
    state: dict[str, Any],
    keep: int = 3,
    extra_files: dict[str, Path] | None = None,
    name: str | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint atomically and prune all but the newest ``keep``.

    Args:
        run_dir: the run folder.
        model: weights to store (shared/tied tensors are stored once).
        config: the full run config, stored as JSON metadata.
        step: optimizer steps taken.
        run_id: the run's id.
        state: optimizer, RNG and data state (torch tensors and plain data only).
        keep: step_* checkpoints to keep.
        extra_files: files copied into the checkpoint (e.g. its tokenizer.json).
        name: folder name (default ``step_NNNNNNNN``, which also moves ``latest``); ``best``
            is written the same way but leaves ``latest`` and pruning alone.
        extra_metadata: more string metadata (e.g. the held-out loss of ``best``).

    Returns:
        The checkpoint folder.

    Raises:
        UserError: the disk is full or the folder is not writable; no partial folder is left
            and the last good checkpoint is untouched.
    """
    root = run_dir / "checkpoints"
    name = name or f"step_{step:08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root, owner=run_lock.holds(run_dir))
        _write_folder(tmp, model, config, step, run_id, state, extra_files, extra_metadata)
        final = root / name
        _move_into_place(tmp, final)
        if name.startswith("step_"):
            _write_pointer(root, name)
    except (OSError, RuntimeError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(f"checkpoint {name}", root, _as_os_error(exc, root)) from None
    if name.startswith("step_"):
        for stale in sorted(root.glob("step_*"))[: -max(1, keep)]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _as_os_error(exc: BaseException, root: Path) -> OSError:
    """torch.save and safetensors report a full disk as RuntimeError/SafetensorError."""
    if isinstance(exc, OSError):
        return exc
    try:
        full = shutil.disk_usage(root).free < (1 << 20) or "space" in str(exc).lower()
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    raise exc


def _write_folder(tmp, model, config, step, run_id, state, extra_files, extra_metadata) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / STATE, "wb") as handle:  # Python file I/O: a full disk is an OSError
        torch.save(state, handle)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": str(step),
        "run_id": run_id,
        "config": json.dumps(config.to_dict()),
        "rank_growths": str(state.get("rank_growths", 0)),
        "checksums": json.dumps(tensor_checksums(model.state_dict())),
        "state_crc32": file_crc(tmp / STATE),
        **(extra_metadata or {}),
    }
    save_model(model, str(tmp / WEIGHTS), metadata=metadata)
    give_umask_mode(tmp / WEIGHTS)  # safetensors writes 0600; state.pt has the umask's mode
    for file_name, source in (extra_files or {}).items():
        shutil.copyfile(source, tmp / file_name)
    for file in (WEIGHTS, STATE):
        _fsync(tmp / file)


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists():  # same name saved twice: swap, never leave a gap without a good copy
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
