"""Loading a checkpoint: its metadata (config, step, crystallized layout), the model with its
weights (crystallized folders decoded at load), its tokenizer and the trainer state.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model
from torch import nn

from h2q_tui.checkpoints import crystal_weights
from h2q_tui.checkpoints.find import candidate_weights, resolve_checkpoint
from h2q_tui.checkpoints.layout import FORMAT, STATE, TOKENIZER, CheckpointInfo
from h2q_tui.checkpoints.state import state_problem
from h2q_tui.codecs import stored
from h2q_tui.codecs.layout import is_crystallized
from h2q_tui.config import RunConfig, from_dict, validate_model
from h2q_tui.config.ranges import RANGES
from h2q_tui.data.tokenizer import BpeTokenizer
from h2q_tui.errors import UserError
from h2q_tui.models import build_model, memory
from h2q_tui.units import first_sentence


def read_info(path: str | Path, need_state: bool = False) -> CheckpointInfo:
    """Read a sound checkpoint's metadata (config, step); ``note`` says if latest was skipped."""
    weights, note = resolve_checkpoint(path, need_state)
    return info_of(weights, note)


def read_info_unverified(path: str | Path) -> CheckpointInfo | None:
    """The metadata of the checkpoint :func:`read_info` tries first, without its checksum pass
    (None when there is no such candidate: a run dir without a usable ``latest``).

    Only for a loader that verifies the same file beside its load (``BackgroundCheck``) and
    takes :func:`read_info`'s path when that fails: what :func:`read_info` would return when
    the candidate is sound. Raises UserError for metadata it cannot use.
    """
    weights = candidate_weights(path)
    return None if weights is None else info_of(weights, "")


def info_of(weights: Path, note: str = "") -> CheckpointInfo:
    """The CheckpointInfo of the weights file ``weights`` (its checksums not checked here)."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"checkpoint {weights} is corrupt or truncated ({first_sentence(exc)})"
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
    if is_crystallized(metadata):
        config, rank_growths, crystal = _crystal_info(metadata, weights, config, step, run_id)
    return CheckpointInfo(weights, config, step, run_id, rank_growths, note=note, crystal=crystal)


def _crystal_info(metadata, weights: Path, config: RunConfig, step: int, run_id: str):
    """(config with the layout's overrides, rank_growths, CrystalOrigin) of a crystallized file."""
    try:
        origin = stored.origin(metadata, weights, step, run_id)
        model = dataclasses.replace(config.model, **stored.config_overrides(origin))
        validate_model(model)
    except (ValueError, TypeError, UserError) as exc:
        raise UserError(
            f"checkpoint {weights} is a damaged crystallized file ({first_sentence(exc)})"
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


def check_memory(info: CheckpointInfo) -> None:
    """Refuse, in one line, a model too large for this machine's memory, before anything is
    allocated (h2q_tui/models/memory.py)."""
    try:
        memory.check_weights_memory(
            info.config.model, info.rank_growths, what=f"checkpoint {info.weights}"
        )
    except memory.ModelBuildError as exc:
        raise UserError(
            f"checkpoint {info.weights}: its config does not match a model this version can "
            f"build ({exc})"
        ) from None


def build_model_of(info: CheckpointInfo) -> nn.Module:
    """The checkpoint's model (with any grown rank) as training builds it: on the CPU,
    randomly initialised; one-line UserErrors for a model this version cannot build."""
    check_memory(info)
    try:
        model = build_model(info.config.model)
        for _ in range(info.rank_growths):
            model.grow_ffn_rank()
    except Exception as exc:  # noqa: BLE001 - any builder failure means a config we cannot use
        raise UserError(
            f"checkpoint {info.weights}: its config does not match a model this version can "
            f"build ({first_sentence(exc)})"
        ) from None
    return model


def load_model_from(
    info: CheckpointInfo, device: torch.device | str | None = None, dequantize: bool = False
) -> nn.Module:
    """Build the checkpoint's model (with any grown rank) and load its weights.

    A crystallized checkpoint (``info.crystal``) is read onto ``device`` (default the CPU), in
    the model its config and layout overrides build: on the CPU its integer matrices stay
    integers, unless ``dequantize``; elsewhere they are decoded to float.
    """
    model = build_model_of(info)
    if device is not None:
        model = model.to(device)
    load_weights(info, model, device, dequantize)
    return model


def tokenizer_of(info: CheckpointInfo) -> BpeTokenizer | None:
    """The BPE tokenizer saved with the checkpoint; None for a byte model."""
    path = info.weights.with_name(TOKENIZER)
    return BpeTokenizer(path) if path.is_file() else None


def load_weights(
    info: CheckpointInfo,
    model: nn.Module,
    device: torch.device | str | None = None,
    dequantize: bool = False,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Load the checkpoint's weights into ``model`` (strict: same names, same shapes).

    A crystallized checkpoint is read on ``device`` (default the CPU); there its integer
    matrices stay integers unless ``dequantize`` (:mod:`~h2q_tui.checkpoints.crystal_weights`);
    ``tensors``: a crystallized file's tensors already mapped by the caller.
    """
    if info.crystal is not None:
        _load_crystallized(info, model, device or "cpu", dequantize, tensors)
        return
    try:
        with safe_open(str(info.weights), framework="pt") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118
            shapes = {name: list(part.get_shape()) for name, part in slices.items()}
            dtypes = {name: part.get_dtype() for name, part in slices.items()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {info.weights} is corrupt or truncated ({first_sentence(exc)})"
        ) from None
    state = model.state_dict()
    refuse_wrong_dtypes(
        info,
        state,
        {n: d in SAFETENSORS_FLOATS for n, d in dtypes.items()},
        {n: _dtype_name(d) for n, d in dtypes.items()},
    )
    expected = {name: list(tensor.shape) for name, tensor in state.items()}
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
            f"checkpoint {info.weights} is corrupt or truncated ({first_sentence(exc)})"
        ) from None
    if missing or unexpected:
        raise UserError(
            f"checkpoint {info.weights} does not match its model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def _load_crystallized(info: CheckpointInfo, model: nn.Module, device, dequantize, tensors) -> None:
    """Read a crystallized file on ``device`` and load it strictly into ``model``: on the CPU
    its integer matrices stay integers (``crystal_weights.pack``), else all decoded to float."""
    pack = crystal_weights.wanted(device, dequantize)
    try:
        state_dict, _, records = stored.decode_file(info.weights, device, pack, tensors)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {info.weights} is a corrupt crystallized file ({first_sentence(exc)})"
        ) from None
    packed = crystal_weights.pack_linears(model, state_dict)
    model_state = model.state_dict()
    refuse_wrong_dtypes(
        info,
        model_state,
        {n: t.is_floating_point() for n, t in state_dict.items()},
        {n: str(t.dtype).removeprefix("torch.") for n, t in state_dict.items()},
        "decoded as",
    )
    expected = {name: list(tensor.shape) for name, tensor in model_state.items()}
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
            f"crystallized checkpoint {info.weights} does not match its model ({first_sentence(exc)})"
        ) from None
    if pack:
        packed += crystal_weights.pack_ham_layers(model, records)
    crystal_weights.describe(model, packed, pack)


SAFETENSORS_FLOATS = frozenset({"F16", "BF16", "F32", "F64"})


def _dtype_name(safetensors_dtype: str) -> str:
    """``I8`` → ``int8``, ``U8`` → ``uint8``, ``BOOL`` → ``bool``: torch's names."""
    prefix = {"I": "int", "U": "uint"}.get(safetensors_dtype[:1])
    if prefix and safetensors_dtype[1:].isdigit():
        return prefix + safetensors_dtype[1:]
    return safetensors_dtype.lower()


def refuse_wrong_dtypes(
    info: CheckpointInfo,
    model_state: dict[str, torch.Tensor],
    is_float: dict[str, bool],
    dtype_names: dict[str, str],
    stored: str = "stored as",
) -> None:
    """A one-line UserError when a tensor the model holds as floats is not a float tensor
    in the file (bool, int8, int64, ...): it would be cast silently and compute nonsense."""
    for name in sorted(is_float):
        model_tensor = model_state.get(name)
        if model_tensor is not None and model_tensor.is_floating_point() and not is_float[name]:
            raise UserError(
                f"checkpoint {info.weights} is unusable: tensor {name} is {stored} "
                f"{dtype_names[name]} where the model needs floats (a damaged file, or not "
                "written by h2q-tui)"
            )


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
        reason = first_sentence(exc)
    else:
        problem = state_problem(state, info.step)
        if problem is None:
            return state
        raise UserError(
            f"checkpoint state {info.state_path} {problem}: it cannot be resumed (h2q-tui eval "
            "and generate still read the weights)"
        )
    raise UserError(f"checkpoint state {info.state_path} is corrupt or truncated ({reason})")
