"""Loading a checkpoint: its metadata (config, step, crystallized layout), the model with its
weights (crystallized folders decoded at load), its tokenizer and the trainer state.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model
from torch import nn

from h2q_tui.checkpoints.find import candidate_weights, is_crystallized, resolve_checkpoint
from h2q_tui.checkpoints.layout import FORMAT, STATE, TOKENIZER, CheckpointInfo
from h2q_tui.checkpoints.state import state_problem
from h2q_tui.config import RunConfig, from_dict, validate_model
from h2q_tui.config.ranges import RANGES
from h2q_tui.data.tokenizer import BpeTokenizer
from h2q_tui.errors import UserError
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
    import dataclasses

    from h2q_tui.codecs import stored

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


def load_model_from(info: CheckpointInfo, device: torch.device | str | None = None) -> nn.Module:
    """Build the checkpoint's model (with any grown rank) and load its weights, on the CPU.

    A crystallized checkpoint (``info.crystal``) is decoded at load: its stored tensors are
    read onto ``device`` (default the CPU) and turned back into float weights there, in the
    model its config and layout overrides build. ``device``: where the model ends up (the CPU
    when None). A model too large for this machine's memory is refused before anything is
    allocated (h2q_tui/system/memory.py).
    """
    from h2q_tui.models import build_model, memory

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
        raise UserError(f"{mismatch} ({first_sentence(exc)})") from None
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


def _load_crystallized(info: CheckpointInfo, model: nn.Module, device) -> None:
    """Decode a crystallized file on ``device`` and load it strictly into ``model``."""
    from h2q_tui.codecs import stored

    try:
        state_dict, _ = stored.decode_file(info.weights, device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {info.weights} is a corrupt crystallized file ({first_sentence(exc)})"
        ) from None
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


# ----------------------------------------------------------------------------- fast loading
# The hot-start path (h2q_tui/hotstart): the model is built with its initialisers skipped
# (storage allocated but never filled: no random init), the safetensors file is memory-mapped,
# and its tensors become the model's parameters as they are
# (``load_state_dict(assign=True)``), without a copy.
#
# Why not the meta device: on torch's meta device elementwise ops (``randn(...) * 0.02`` in
# a builder) run Python reference kernels whose first call imports torch._dynamo, 1.1-1.9 s
# in a fresh process on a 2-core EPYC, more than the whole load. Unfilled CPU storage costs
# next to nothing (untouched pages are never faulted in) and buffers and plain tensors that a
# builder computes (``energy``, tables from ``arange``) come out right without any fix-up.


class _SkipInitialisers(torch.overrides.TorchFunctionMode):
    """Within the block, initialisers (``nn.init.normal_``, ``Tensor.uniform_``, ...) do
    nothing: for a model whose every parameter is replaced by a checkpoint's right after.

    A torch function mode is thread-local: a trainer on another thread is unaffected.
    """

    TENSOR_FILLS = ("normal_", "uniform_", "random_", "bernoulli_", "exponential_")
    INIT_FILLS = (
        "normal_",
        "uniform_",
        "trunc_normal_",
        "constant_",
        "zeros_",
        "ones_",
        "eye_",
        "dirac_",
        "orthogonal_",
        "sparse_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
    )
    FILLS = frozenset(
        [getattr(torch.Tensor, name) for name in TENSOR_FILLS]
        + [getattr(nn.init, name) for name in INIT_FILLS if hasattr(nn.init, name)]
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FILLS:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor):
                return target
        return func(*args, **kwargs)


def build_unfilled(info: CheckpointInfo) -> nn.Module | None:
    """The checkpoint's model (with any grown rank) on the CPU, its parameters unfilled.

    Their values are whatever the allocator left (often NaN after a builder's rescaling):
    only for :func:`assign_weights` to replace. Refuses, like :func:`load_model_from`, a
    model too large for this machine's memory. Returns None when the model cannot be built
    this way (a builder that fails without its random init): the caller then takes the
    normal path.
    """
    from h2q_tui.models import build_model, memory

    try:
        memory.check_weights_memory(
            info.config.model, info.rank_growths, what=f"checkpoint {info.weights}"
        )
    except memory.ModelBuildError as exc:
        raise UserError(
            f"checkpoint {info.weights}: its config does not match a model this version can "
            f"build ({exc})"
        ) from None
    try:
        with torch.no_grad(), _SkipInitialisers():
            model = build_model(info.config.model)
            for _ in range(info.rank_growths):
                model.grow_ffn_rank()
    except Exception:  # noqa: BLE001 - any failure here only means "use the normal path"
        return None
    return model


def read_tensors(
    info: CheckpointInfo, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of a plain (not crystallized) checkpoint, memory-mapped by safetensors.

    ``device``: where the tensors are put (default the CPU). Raises a one-line UserError for
    a damaged file.
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(info.weights), device=str(device or "cpu"))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint {info.weights} is corrupt or truncated ({first_sentence(exc)})"
        ) from None


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one tensor (tied weights, a shared bank), in state-dict order."""
    groups: dict[int, list[str]] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(the module holding the dotted ``name``, its attribute name there)."""
    owner_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(owner_name) if owner_name else model), leaf


def assign_weights(
    info: CheckpointInfo,
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    device: torch.device | str | None = None,
) -> None:
    """Make ``tensors`` the parameters and buffers of ``model`` in place, without a copy.

    Strict like :func:`load_weights` (same names, same shapes; a one-line UserError
    otherwise), so every parameter of a :func:`build_unfilled` model is replaced. A tensor
    stored once for several tied names (the GPT head and token embedding) serves them all
    and they are tied again afterwards, so they stay one parameter. A tensor of another
    dtype than the model's is converted (a copy); one on another device than ``device``
    is moved there.
    """
    expected = model.state_dict(keep_vars=True)
    groups = _alias_groups(model)
    for group in groups:
        stored = [name for name in group if name in tensors]
        for name in group if stored else ():
            tensors.setdefault(name, tensors[stored[0]])
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"checkpoint {info.weights} does not match its model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    wrong = sorted(
        name for name in expected if list(tensors[name].shape) != list(expected[name].shape)
    )
    if wrong:
        raise UserError(
            f"checkpoint {info.weights} does not match its model: {wrong[0]} is "
            f"{list(tensors[wrong[0]].shape)} in the file but {list(expected[wrong[0]].shape)} "
            f"in the model built from its config ({len(wrong)} tensor(s) differ)"
        )
    refuse_wrong_dtypes(
        info,
        expected,
        {n: tensors[n].is_floating_point() for n in expected},
        {n: str(tensors[n].dtype).removeprefix("torch.") for n in expected},
    )
    target = torch.device(device or "cpu")
    state = {
        name: tensors[name].to(device=target, dtype=model_tensor.dtype)
        for name, model_tensor in expected.items()
    }  # .to is a no-op (no copy) when device and dtype already match
    model.load_state_dict(state, strict=True, assign=True)
    for group in groups:  # assign gave each name its own Parameter: make them one again
        owner, leaf = _owner(model, group[0])
        table = owner._parameters if leaf in owner._parameters else owner._buffers
        shared = table[leaf]
        for name in group[1:]:
            owner, leaf = _owner(model, name)
            (owner._parameters if leaf in owner._parameters else owner._buffers)[leaf] = shared


def load_model_fast(info: CheckpointInfo, device: torch.device | str | None = None) -> nn.Module:
    """:func:`load_model_from`, faster: the same model, bit for bit, built without random
    init and with the checkpoint's memory-mapped tensors assigned as its weights (no copy).

    Crystallized checkpoints (decoded at load) and models that cannot be built without their
    init take the normal path (:func:`load_model_from`). ``device``: where the model ends up
    (the CPU when None).
    """
    if info.crystal is not None:
        return load_model_from(info, device)
    model = build_unfilled(info)
    if model is None:
        return load_model_from(info, device)
    if device is not None:
        model = model.to(device)  # buffers and plain tensors; parameters are replaced below
    assign_weights(info, model, read_tensors(info, device), device)
    return model
