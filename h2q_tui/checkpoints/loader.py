"""The one way to turn a checkpoint (a run dir, a checkpoint folder, a ``.safetensors`` file or
a crystallized folder) into a model: :func:`load_checkpoint`.

Its variants are options of the same call: ``plain`` (the checksums first, the model built
and its weights loaded: ``generate``, ``eval``, ``serve``), ``fast`` (the model built without
init and the memory-mapped tensors assigned without a copy, the checksum pass on a thread
beside it: the panes, ``--follow``, ``hotstart``), ``naive`` (hotstart's anchor: a pickle
``torch.load`` of the state dict), each timed by phase on a :class:`~.timing.Clock`, and
recorded in the timeline when a ``consumer`` is named. Phases, in order:

- ``info``: find the checkpoint and read its metadata (config, step); where the checksums
  are checked first (``plain``, ``naive``, crystallized checkpoints) this includes that pass;
- ``read``: the weights — memory-mapped safetensors (``fast``), pickle ``torch.load``
  (``naive``), or read and copied into the model (``plain``; a crystallized file decoded);
- ``build``: the model, without random init (``fast``) or built and initialised as training
  does;
- ``assign``: the tensors become the model's weights — assigned without a copy (``fast``)
  or copied by ``load_state_dict`` (``naive``);
- ``verify_wait`` (``fast``): waiting for the checksum pass before the model is handed over.

On the ``fast`` path the checksum pass over every tensor (what refuses a damaged or
half-written checkpoint) runs on a thread of its own (:class:`BackgroundCheck`) from the
moment the file is mapped, over the very tensors the model is given; its own duration is
``overlapped["verify"]``, apart from the phases. When it fails, the model is thrown away and
the load starts again the verified way (``read_info``), which refuses the file with the usual
one-line error, or takes the newest sound checkpoint of a run dir with a note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from h2q_tui.checkpoints import fast, timing
from h2q_tui.checkpoints.find import BackgroundCheck, candidate_weights
from h2q_tui.checkpoints.layout import CheckpointInfo
from h2q_tui.checkpoints.load import (
    build_model_of,
    load_model_from,
    load_weights,
    read_info,
    read_info_unverified,
    tokenizer_of,
)
from h2q_tui.checkpoints.page_cache import cache_state
from h2q_tui.data.tokenizer import BpeTokenizer
from h2q_tui.errors import UserError

METHODS = ("plain", "fast", "naive")
VERIFY = ("beside", "later", "first")


class ChecksumFailed(Exception):
    """The overlapped checksum pass refused the file: load it again the verified way."""


@dataclass
class Loaded:
    """A loaded checkpoint: its info, its model (eval mode) and tokenizer (None for bytes).

    ``event``: what was recorded in the timeline (with a ``consumer``); ``pending``: the
    checksum pass still running (``verify="later"``), for :meth:`confirm`.
    """

    info: CheckpointInfo
    model: nn.Module
    tokenizer: BpeTokenizer | None
    event: timing.LoadEvent | None = None
    pending: BackgroundCheck | None = None

    def confirm(self, clock: timing.Clock) -> None:
        """Wait for the pending checksum pass (phase ``verify_wait``); ChecksumFailed when the
        file failed it. Nothing to do for a load that verified first."""
        check, self.pending = self.pending, None
        _confirm(check, clock)


def _confirm(check: BackgroundCheck | None, clock: timing.Clock) -> None:
    """Wait for ``check`` (lap ``verify_wait``); ChecksumFailed when the file failed it."""
    if check is None:
        return
    problem = check.wait()
    clock.lap("verify_wait")
    if check.beside:
        clock.overlapped["verify"] = check.seconds
    if problem is not None:
        raise ChecksumFailed(problem)


def load_checkpoint(
    source: str | Path | CheckpointInfo,
    method: str = "plain",
    *,
    device: torch.device | str | None = None,
    clock: timing.Clock | None = None,
    verify: str = "beside",
    pickle_path: str | Path | None = None,
    consumer: str | None = None,
    note: str = "",
    dequantize: bool = False,
) -> Loaded:
    """Load ``source`` (a path, or a CheckpointInfo already read and verified) as ``method``.

    ``device``: where the model ends up (the CPU when None). ``clock``: a running clock the
    phases go on (the probe's, started at interpreter start). ``verify`` (``fast`` from a
    path): ``beside`` (the checksum pass beside the load, waited for before returning),
    ``later`` (the caller calls :meth:`Loaded.confirm` before anything computed from the
    model leaves its hands) or ``first``. ``pickle_path``: the ``naive`` path's state dict.
    ``consumer``: record the load in the timeline under that name, with whether the file was
    in the page cache beforehand, and ``note`` (``Loaded.event``). ``dequantize``: decode a
    crystallized checkpoint's integer matrices to float instead of multiplying by them. Raises
    UserError (one line) for a missing or damaged checkpoint.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {', '.join(VERIFY)}, got {verify!r}")
    if method == "naive" and pickle_path is None:
        raise ValueError("the naive path needs pickle_path (a torch.save'd state_dict)")
    if consumer is not None and verify == "later":
        raise ValueError("a recorded load is verified before it is recorded (not verify='later')")
    if consumer is not None:
        return _recorded(
            source, method, device, clock, verify, pickle_path, consumer, note, dequantize
        )
    clock = clock or timing.Clock()
    overlap = verify != "first" and method == "fast" and device is None
    loaded = _load(source, method, device, pickle_path, clock, overlap, dequantize)
    if verify == "later":
        return loaded
    try:
        loaded.confirm(clock)
    except ChecksumFailed:
        loaded = _load(source, method, device, pickle_path, clock, False, dequantize)
    return loaded


def _recorded(
    source, method, device, clock, verify, pickle_path, consumer, note, dequantize
) -> Loaded:
    """:func:`load_checkpoint`, timed and recorded in the timeline as one ``load`` event."""
    if isinstance(source, CheckpointInfo):
        weights = source.weights
    else:  # unverified: read_info's checksum pass would warm the file
        weights = candidate_weights(source)
    cold = cache_state(weights) if weights is not None else None
    clock = clock or timing.Clock()
    loaded = load_checkpoint(
        source,
        method,
        device=device,
        clock=clock,
        verify=verify,
        pickle_path=pickle_path,
        dequantize=dequantize,
    )
    info = loaded.info
    if weights != info.weights:
        cold = None  # another checkpoint was taken (the first was damaged): state unknown
    total = clock.elapsed
    phases = dict(clock.phases)
    rest = total - sum(phases.values())
    if rest > 0:
        phases["rest"] = rest
    loaded.event = timing.record(
        timing.LoadEvent(
            kind="load",
            what=info.describe(),
            path=str(info.weights.parent),
            step=info.step,
            total_s=total,
            phases=phases,
            cold=cold,
            consumer=consumer,
            note=note,
            overlapped=dict(clock.overlapped),
        )
    )
    return loaded


def _load(
    source: str | Path | CheckpointInfo,
    method: str,
    device: torch.device | str | None,
    pickle_path: str | Path | None,
    clock: timing.Clock,
    overlap: bool,
    dequantize: bool = False,
) -> Loaded:
    """The model in eval mode; with ``overlap`` (the fast path from a path) the checksum pass
    may still be running (``Loaded.pending``), else it ran first (``read_info``)."""
    if overlap and not isinstance(source, CheckpointInfo):
        started = _load_overlapped(source, clock, dequantize)
        if started is not None:
            return started
    info = source if isinstance(source, CheckpointInfo) else read_info(source)
    tokenizer = tokenizer_of(info)
    clock.lap("info")
    if method == "naive":
        model = build_model_of(info)
        clock.lap("build")
        state = torch.load(pickle_path, map_location="cpu", weights_only=True)
        clock.lap("read")
        model.load_state_dict(state, strict=True)
        del state
        clock.lap("assign")
    elif method == "plain" or info.crystal is not None:
        model = _crystal_model(info) if info.crystal is not None else build_model_of(info)
        clock.lap("build")
        if device is not None:
            model = model.to(device)
        load_weights(info, model, device, dequantize)
        clock.lap("read")
    else:
        tensors = fast.read_tensors(info, device)
        clock.lap("read")
        model, _ = _fill(info, tensors, clock, device)
        del tensors
    return Loaded(info, model.eval(), tokenizer)


def _fill(
    info: CheckpointInfo,
    tensors: dict[str, torch.Tensor],
    clock: timing.Clock,
    device: torch.device | str | None = None,
    before_init: Callable[[], None] | None = None,
) -> tuple[nn.Module, bool]:
    """The model with ``tensors`` assigned; a builder that needs its init takes the normal
    path instead (after ``before_init``). Returns (model, whether that normal path ran)."""
    model = fast.build_unfilled(info)
    clock.lap("build")
    normal = model is None
    if normal:
        if before_init is not None:
            before_init()
        model = load_model_from(info, device)
    else:
        if device is not None:
            model = model.to(device)  # buffers and plain tensors; parameters are replaced
        fast.assign_weights(info, model, tensors, device)
    clock.lap("assign")
    return model, normal


def _crystal_model(info: CheckpointInfo) -> nn.Module:
    """The model a crystallized file fills: every weight comes from the file, so it is built
    without random init, and the float weights its integer matrices replace are never touched
    (never resident); a builder that needs its init is built the normal way."""
    unfilled = fast.build_unfilled(info)
    return unfilled if unfilled is not None else build_model_of(info)


def _crystal_overlapped(info, tensors, check, tokenizer, clock, dequantize) -> Loaded | None:
    """A crystallized file's model from its mapped tensors while ``check`` sums them."""
    model = _crystal_model(info)
    clock.lap("build")
    try:
        load_weights(info, model, None, dequantize, tensors)
    except UserError:
        if check.wait() is not None:
            return None  # a damaged file: refused (or skipped) by the verified path
        raise
    clock.lap("assign")
    return Loaded(info, model.eval(), tokenizer, pending=check)


def _load_overlapped(source: str | Path, clock: timing.Clock, dequantize: bool) -> Loaded | None:
    """The fast load with its checksum pass on a thread beside it, or None where the
    verified path must be taken: no candidate to try unverified (a run dir without a
    usable ``latest``), metadata or a file the loader refuses (the verified path says what
    is wrong, in the words every command uses)."""
    try:
        info = read_info_unverified(source)
        if info is None:
            return None
        tokenizer = tokenizer_of(info)
        clock.lap("info")
        tensors = fast.read_tensors(info)
    except UserError:
        return None
    check = BackgroundCheck(info.weights, tensors)  # sums the very tensors the model gets
    clock.lap("read")
    if info.crystal is not None:
        return _crystal_overlapped(info, tensors, check, tokenizer, clock, dequantize)
    try:  # a builder that needs its init: verified first, then the normal path
        model, normal = _fill(info, tensors, clock, before_init=lambda: _confirm(check, clock))
    except ChecksumFailed:
        return None
    except UserError:
        if check.wait() is not None:
            return None  # a damaged file: refused (or skipped) by the verified path
        raise
    del tensors
    return Loaded(info, model.eval(), tokenizer, pending=None if normal else check)
