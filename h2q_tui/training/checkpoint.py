"""Checkpoints: safetensors weights with metadata, plus optimizer/RNG/data state, written atomically.

Layout: ``RUN_DIR/checkpoints/step_00001234/{model.safetensors, state.pt}`` and a
``RUN_DIR/checkpoints/latest`` pointer. A checkpoint is written into a temporary folder and
renamed into place, so a crash or Ctrl-C mid-write never touches the last good one.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from h2q_tui.config import RANGES, RunConfig, from_dict, validate_model
from h2q_tui.data.tokenizer import BpeTokenizer
from h2q_tui.errors import UserError, write_error
from h2q_tui.training import run_lock

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


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_pointer(root: Path, name: str) -> None:
    tmp = root / f".latest.{os.getpid()}"
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, root / LATEST)


def tensor_checksums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """CRC-32 of each tensor's bytes (catches flipped bits on disk)."""
    return {name: _crc(tensor) for name, tensor in tensors.items()}


def _crc(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _file_crc(path: Path) -> str:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


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
        "state_crc32": _file_crc(tmp / STATE),
        **(extra_metadata or {}),
    }
    save_model(model, str(tmp / WEIGHTS), metadata=metadata)
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
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                if name in expected and _crc(handle.get_tensor(name)) != expected[name]:
                    return f"damaged: tensor {name} does not match its checksum"
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        return f"corrupt or truncated ({_first_line(exc)})"
    state = weights.with_name(STATE)
    if need_state and _is_crystallized(metadata):
        return (
            f"a crystallized checkpoint ({metadata.get('h2q.crystal.method', '?')}): eval, "
            "generate and steer-eval load it, training cannot resume from it"
        )
    if need_state and not state.is_file():
        return f"missing its {STATE}"
    crc = metadata.get("state_crc32")
    if crc and state.is_file() and _file_crc(state) != crc:
        return f"damaged: {STATE} does not match its checksum"
    return None


def _is_crystallized(metadata: dict[str, str]) -> bool:
    from h2q_tui.crystal.policy import is_crystallized

    return is_crystallized(metadata)


def _crystal_problem(metadata: dict[str, str]) -> str | None:
    """Why a crystallized file's layout cannot be read (None when it can, or it is not one)."""
    if not _is_crystallized(metadata):
        return None
    from h2q_tui.crystal.policy import read_layout

    try:
        read_layout(metadata)
    except ValueError as exc:
        return f"a damaged crystallized file ({_first_line(exc)})"
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


def resolve_checkpoint(path: str | Path, need_state: bool = False) -> tuple[Path, str]:
    """(weights file, note) from a run dir, a checkpoint folder or a .safetensors file.

    A run dir means its ``latest``; when that is missing or damaged, the newest sound
    ``step_*`` checkpoint is used and the note says which and why. A folder or file named
    directly must itself be sound.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
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


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint's weights file from a run dir, a checkpoint folder or a .safetensors file."""
    return resolve_checkpoint(path)[0]


def read_info(path: str | Path, need_state: bool = False) -> CheckpointInfo:
    """Read a sound checkpoint's metadata (config, step); ``note`` says if latest was skipped."""
    weights, note = resolve_checkpoint(path, need_state)
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
        raw = json.loads(metadata["config"])
    except json.JSONDecodeError:
        raise UserError(f"checkpoint {weights} has unreadable config metadata") from None
    try:
        config = from_dict(raw, source="its config")
    except UserError as exc:
        raise UserError(f"checkpoint {weights} has bad config metadata: {exc}") from None
    try:
        validate_model(config.model)
    except UserError as exc:
        raise UserError(
            f"checkpoint {weights}: its config does not match a model this version can build "
            f"({exc})"
        ) from None
    step = _metadata_count(metadata, "step", weights)
    rank_growths = _metadata_count(metadata, "rank_growths", weights)
    if rank_growths and config.model.family != "qrlm":
        raise UserError(
            f"checkpoint {weights}: rank_growths={rank_growths} does not match its "
            f"{config.model.family} config (only qrlm grows its rank)"
        )
    if config.model.rank + rank_growths > RANGES["model", "rank"].high:
        raise UserError(f"checkpoint {weights}: rank_growths={rank_growths} is implausibly large")
    run_id = metadata.get("run_id", "")
    crystal = None
    if _is_crystallized(metadata):
        config, rank_growths, crystal = _crystal_info(metadata, weights, config, step, run_id)
    return CheckpointInfo(weights, config, step, run_id, rank_growths, note=note, crystal=crystal)


def _crystal_info(metadata, weights: Path, config: RunConfig, step: int, run_id: str):
    """(config with the layout's overrides, rank_growths, CrystalOrigin) of a crystallized file."""
    import dataclasses

    from h2q_tui.crystal import stored

    try:
        origin = stored.origin(metadata, weights, step, run_id)
        model = dataclasses.replace(config.model, **stored.config_overrides(origin))
        validate_model(model)
    except (ValueError, TypeError, UserError) as exc:
        raise UserError(
            f"checkpoint {weights} is a damaged crystallized file ({_first_line(exc)})"
        ) from None
    growths = origin.overrides.get(
        "rank_growths", _metadata_count(metadata, "rank_growths", weights)
    )
    if isinstance(growths, bool) or not isinstance(growths, int) or growths < 0:
        raise UserError(f"checkpoint {weights} is a damaged crystallized file (bad rank_growths)")
    return dataclasses.replace(config, model=model), growths, origin


def _metadata_count(metadata: dict[str, str], key: str, weights: Path) -> int:
    """A whole-number metadata entry (0 when absent), or a one-line UserError."""
    text = metadata.get(key, "0")
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(
            f"checkpoint {weights} has bad {key} metadata {text[:40]!r} (expected a whole "
            "number >= 0): the file was damaged or not written by h2q-tui"
        )
    return value


def load_model_from(info: CheckpointInfo, device: torch.device | str | None = None) -> nn.Module:
    """Build the checkpoint's model (with any grown rank) and load its weights, on the CPU.

    A crystallized checkpoint (``info.crystal``) is decoded at load: its stored tensors are
    read onto ``device`` (default the CPU) and turned back into float weights there, in the
    model its config and layout overrides build. ``device``: where the model ends up (the CPU
    when None). A model too large for this machine's memory is refused before anything is
    allocated (h2q_tui/training/memory.py).
    """
    from h2q_tui.models import build_model
    from h2q_tui.training import memory

    mismatch = (
        f"checkpoint {info.weights}: its config does not match a model this version can build"
    )
    try:
        memory.check_weights_memory(
            info.config.model, info.rank_growths, what=f"checkpoint {info.weights}"
        )
    except memory.ModelBuildError as exc:
        raise UserError(f"{mismatch} ({exc})") from None
    try:
        model = build_model(info.config.model)
        for _ in range(info.rank_growths):
            model.grow_ffn_rank()
    except Exception as exc:  # noqa: BLE001 - any builder failure means a config we cannot use
        raise UserError(f"{mismatch} ({_first_line(exc)})") from None
    if device is not None:
        model = model.to(device)
    load_weights(info, model, device)
    return model


def tokenizer_of(info: CheckpointInfo) -> BpeTokenizer | None:
    """The BPE tokenizer saved with the checkpoint; None for a byte model."""
    path = info.weights.with_name(TOKENIZER)
    return BpeTokenizer(path) if path.is_file() else None


def load_weights(
    info: CheckpointInfo, model: nn.Module, device: torch.device | str | None = None
) -> None:
    """Load the checkpoint's weights into ``model`` (strict: same names, same shapes).

    A crystallized checkpoint is decoded on ``device`` (default the CPU) first.
    """
    if info.crystal is not None:
        _load_crystallized(info, model, device or "cpu")
        return
    try:
        with safe_open(str(info.weights), framework="pt") as handle:
            shapes = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {info.weights} is corrupt or truncated ({_first_line(exc)})"
        ) from None
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    wrong = sorted(name for name, shape in shapes.items() if expected.get(name, shape) != shape)
    if wrong:
        raise UserError(
            f"checkpoint {info.weights} does not match its model: {wrong[0]} is "
            f"{shapes[wrong[0]]} in the file but {expected[wrong[0]]} in the model built from "
            f"its config ({len(wrong)} tensor(s) differ)"
        )
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


def _load_crystallized(info: CheckpointInfo, model: nn.Module, device) -> None:
    """Decode a crystallized file on ``device`` and load it strictly into ``model``."""
    from h2q_tui.crystal import stored

    try:
        state_dict, _ = stored.decode_file(info.weights, device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {info.weights} is a corrupt crystallized file ({_first_line(exc)})"
        ) from None
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        name
        for name, tensor in state_dict.items()
        if name in expected and list(tensor.shape) != expected[name]
    )
    if missing or unexpected or wrong:
        detail = (
            f"{wrong[0]} is {list(state_dict[wrong[0]].shape)} decoded but {expected[wrong[0]]} "
            "in the model built from its config"
            if wrong
            else f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
        raise UserError(
            f"crystallized checkpoint {info.weights} does not match its model: {detail}"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"crystallized checkpoint {info.weights} does not match its model ({_first_line(exc)})"
        ) from None


def load_state(info: CheckpointInfo) -> dict[str, Any]:
    """The optimizer/RNG/data state beside the weights (loaded without running pickle code)."""
    if not info.state_path.is_file():
        raise UserError(
            f"checkpoint {info.weights.parent} has no {STATE}; it can be evaluated but not resumed"
        )
    try:
        state = torch.load(info.state_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        reason = "not a torch state file"  # torch's own text advises weights_only=False: wrong here
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
        reason = _first_line(exc)
    else:
        problem = _state_problem(state, info.step)
        if problem is None:
            return state
        raise UserError(
            f"checkpoint state {info.state_path} {problem}: it cannot be resumed (h2q-tui eval "
            "and generate still read the weights)"
        )
    raise UserError(f"checkpoint state {info.state_path} is corrupt or truncated ({reason})")


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


def _state_problem(state: Any, step: int) -> str | None:
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


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's first line, at most 160 characters."""
    text = str(exc).strip().splitlines()
    return text[0].split(". ")[0][:160] if text else type(exc).__name__
