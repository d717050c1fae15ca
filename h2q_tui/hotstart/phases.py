"""Load a checkpoint and generate its first token, timed by phase.

:func:`load_for_first_token` is what the ``hotstart`` command measures in-process and in
each fresh process (probe.py), and what a generator that wants its load phases (the
Generate pane, ``serve``) can call. Phases, in order:

- ``info``: find the checkpoint and read its metadata (config, step); on the ``naive`` path
  (and for crystallized checkpoints) this includes the checksum pass over every tensor;
- ``read``: the weights — memory-mapped safetensors (``fast``), pickle ``torch.load``
  (``naive``), or a crystallized file read and decoded;
- ``build``: the model, without random init (``fast``) or built and initialised as training
  does (``naive``; a crystallized checkpoint too);
- ``assign``: the tensors become the model's weights — assigned without a copy (``fast``)
  or copied by ``load_state_dict`` (``naive``);
- ``first_forward``: from the start of generation to the end of the first forward pass
  (the prompt), including decoder set-up and materialising HamLinear weights;
- ``first_token``: sampling the first token;
- ``verify_wait`` (``fast``): waiting for the checksum pass to finish before the first
  token (or the model) is handed over;
- ``rest``: whatever no named phase covers, so the phases add up to ``total_s``.

On the ``fast`` path the checksum pass over every tensor (what refuses a damaged or
half-written checkpoint) runs on a thread of its own (:class:`BackgroundCheck`) from the
moment the file is mapped, beside ``build``, ``assign`` and the first forward, over the
very tensors the model is given; the caller gets the first token (or the model) only after
it passed. Its own duration is reported apart, as ``overlapped["verify"]``: it is not one of
the phases that add up to the total, since they ran at the same time. When it fails, the
model is thrown away and the load starts again the verified way (``read_info``), which
refuses the file with the usual one-line error, or takes the newest sound checkpoint of a
run dir with a note, as every other command does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from h2q_tui import checkpoints
from h2q_tui.checkpoints import load as checkpoint_load
from h2q_tui.checkpoints.find import BackgroundCheck
from h2q_tui.checkpoints.layout import CheckpointInfo
from h2q_tui.errors import UserError
from h2q_tui.units import first_sentence

PROMPT = "Once upon a time"
RATE_TOKENS = 64  # tokens after the first one, for tokens/s
METHODS = ("fast", "naive")


class Clock:
    """Contiguous phases: each ``lap`` closes the phase that began at the previous one."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.last = self.start
        self.phases: dict[str, float] = {}
        # seconds of work that ran beside the phases on another thread (not in the total)
        self.overlapped: dict[str, float] = {}

    def lap(self, name: str, at: float | None = None) -> None:
        """End phase ``name`` now (or at the perf_counter time ``at``)."""
        now = time.perf_counter() if at is None else at
        self.phases[name] = self.phases.get(name, 0.0) + max(now - self.last, 0.0)
        self.last = max(now, self.last)

    @property
    def elapsed(self) -> float:
        return self.last - self.start


@dataclass
class PhaseTimes:
    """One load up to its first token: seconds per phase (in order), their total, and the
    decoding speed after it."""

    phases: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0
    tokens_per_s: float = 0.0
    rate_tokens: int = 0  # tokens the rate was measured over
    method: str = "fast"
    text: str = ""  # the prompt's continuation
    # work that ran on another thread beside the phases (``verify``: the checksum pass);
    # not part of ``total_s``, which the phases alone add up to
    overlapped: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "phases": dict(self.phases),
            "overlapped": dict(self.overlapped),
            "total_s": self.total_s,
            "tokens_per_s": self.tokens_per_s,
            "rate_tokens": self.rate_tokens,
            "method": self.method,
        }


def write_pickle_state(info: CheckpointInfo, folder: str | Path) -> Path:
    """Write the checkpoint's state_dict as a pickle (``torch.save``) in ``folder``: the
    naive path's input. Returns its path."""
    model = checkpoints.load_model_from(info)
    path = Path(folder) / "state_dict.pt"
    torch.save(model.state_dict(), path)
    return path


def _build_normally(info: CheckpointInfo) -> nn.Module:
    """The model as training builds it: on the CPU, randomly initialised."""
    from h2q_tui.models import build_model

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


class ChecksumFailed(Exception):
    """The overlapped checksum pass refused the file: load it again the verified way."""


def _confirm(check: BackgroundCheck | None, clock: Clock) -> None:
    """Wait for the overlapped checksum pass (phase ``verify_wait``); ChecksumFailed when
    the file failed it. Nothing to do for a load that verified first (``check`` None)."""
    if check is None:
        return
    problem = check.wait()
    clock.lap("verify_wait")
    clock.overlapped["verify"] = check.seconds
    if problem is not None:
        raise ChecksumFailed(problem)


def load_timed(
    path: str | Path,
    method: str = "fast",
    pickle_path: str | Path | None = None,
    clock: Clock | None = None,
) -> tuple[CheckpointInfo, nn.Module, object]:
    """(info, model in eval mode, codec), with the load's phases on ``clock``.

    ``method``: ``fast`` (memory-mapped safetensors, the model built without init, the
    tensors assigned; the checksum pass beside it, waited for at the end) or ``naive``
    (checksums first, the model built as training does, pickle ``torch.load`` of
    ``pickle_path``, ``load_state_dict``). A crystallized checkpoint is verified first,
    built normally and decoded (the phases info, build and read).
    """
    clock = clock or Clock()
    info, model, codec, check = _load(path, method, pickle_path, clock)
    try:
        _confirm(check, clock)
    except ChecksumFailed:
        info, model, codec, _ = _load(path, method, pickle_path, clock, overlap=False)
    return info, model, codec


def _load(
    path: str | Path,
    method: str,
    pickle_path: str | Path | None,
    clock: Clock,
    overlap: bool = True,
) -> tuple[CheckpointInfo, nn.Module, object, BackgroundCheck | None]:
    """(info, model in eval mode, codec, the checksum pass still running or None).

    With ``overlap`` (the fast path, a plain checkpoint) the pass runs beside the load and
    the caller must :func:`_confirm` it before anything computed from the model leaves its
    hands; otherwise it ran first (``read_info``) and None is returned for it.
    """
    from h2q_tui.generation.text import Codec

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "fast" and overlap:
        started = _load_overlapped(path, clock)
        if started is not None:
            return started
    info = checkpoints.read_info(path)
    codec = Codec(checkpoints.tokenizer_of(info))
    clock.lap("info")
    if method == "naive":
        if pickle_path is None:
            raise ValueError("the naive path needs pickle_path (see write_pickle_state)")
        model = _build_normally(info)
        clock.lap("build")
        state = torch.load(pickle_path, map_location="cpu", weights_only=True)
        clock.lap("read")
        model.load_state_dict(state, strict=True)
        del state
        clock.lap("assign")
    elif info.crystal is not None:
        model = _build_normally(info)
        clock.lap("build")
        checkpoints.load_weights(info, model)
        clock.lap("read")
    else:
        tensors = checkpoint_load.read_tensors(info)
        clock.lap("read")
        model, _ = _fill(info, tensors, clock)
        del tensors
    return info, model.eval(), codec, None


def _fill(
    info: CheckpointInfo, tensors, clock: Clock, before_init: Callable[[], None] | None = None
) -> tuple[nn.Module, bool]:
    """The model with ``tensors`` assigned; a builder that needs its init takes the normal
    path instead (after ``before_init``). Returns (model, whether that normal path ran)."""
    model = checkpoint_load.build_unfilled(info)
    clock.lap("build")
    normal = model is None
    if normal:
        if before_init is not None:
            before_init()
        model = checkpoints.load_model_from(info)
    else:
        checkpoint_load.assign_weights(info, model, tensors)
    clock.lap("assign")
    return model, normal


def _load_overlapped(
    path: str | Path, clock: Clock
) -> tuple[CheckpointInfo, nn.Module, object, BackgroundCheck | None] | None:
    """The fast load with its checksum pass on a thread beside it, or None where the
    verified path must be taken: no candidate to try unverified (a run dir without a
    usable ``latest``), a crystallized file, metadata or a file the loader refuses (the
    verified path says what is wrong, in the words every command uses)."""
    from h2q_tui.generation.text import Codec

    try:
        info = checkpoint_load.read_info_unverified(path)
        if info is None or info.crystal is not None:
            return None
        codec = Codec(checkpoints.tokenizer_of(info))
        clock.lap("info")
        tensors = checkpoint_load.read_tensors(info)
    except UserError:
        return None
    check = BackgroundCheck(info.weights, tensors)  # sums the very tensors the model gets
    clock.lap("read")
    try:  # a builder that needs its init: verified first, then the normal path
        model, normal = _fill(info, tensors, clock, before_init=lambda: _confirm(check, clock))
        if normal:
            check = None
    except ChecksumFailed:
        return None
    except UserError:
        if check is not None and check.wait() is not None:
            return None  # a damaged file: refused (or skipped) by the verified path
        raise
    del tensors
    return info, model.eval(), codec, check


def _timed_generation(forward_done: list[float]):
    """A Generation whose decoder notes when its first call (the prompt's forward) returned.

    Wrapping the decoder, rather than a forward hook on the model, keeps the step program
    that ``generate`` uses (h2q_tui/generation/decoder.py takes the model path whenever a
    module has a forward hook), so the figures are those of a real generation.
    """
    from h2q_tui.generation.generate import Generation

    class FirstCallTimed:
        def __init__(self, decoder) -> None:
            self._decoder = decoder

        def __call__(self, tokens):
            out = self._decoder(tokens)
            if not forward_done:
                forward_done.append(time.perf_counter())
            return out

        def __getattr__(self, name: str):
            return getattr(self._decoder, name)

    class TimedGeneration(Generation):
        def _loop(self, decoder, started):
            return super()._loop(FirstCallTimed(decoder), started)

    return TimedGeneration


def first_token(
    model: nn.Module,
    codec,
    prompt: str,
    clock: Clock,
    rate_tokens: int = RATE_TOKENS,
    on_first_token: Callable[[], None] | None = None,
    seed: int = 0,
    check: BackgroundCheck | None = None,
) -> tuple[float, int, str]:
    """Generate from ``prompt`` as ``h2q-tui generate`` does; laps first_forward and
    first_token on ``clock``, waits for the overlapped checksum pass ``check`` (lap
    verify_wait; ChecksumFailed when the file failed it), calls ``on_first_token`` then,
    and goes on for ``rate_tokens`` more tokens. Returns (tokens/s after the first token,
    tokens counted, the text)."""
    from h2q_tui.generation.sampling import SamplingConfig

    forward_done: list[float] = []
    generation = _timed_generation(forward_done)(
        model, codec, prompt, SamplingConfig(max_new_tokens=1 + rate_tokens, seed=seed)
    )
    first_at = None

    def reached_first_token() -> None:
        clock.lap("first_forward", forward_done[0] if forward_done else first_at)
        clock.lap("first_token", first_at)
        _confirm(check, clock)
        if on_first_token is not None:
            on_first_token()

    try:
        began = time.perf_counter()
        for _ in generation:
            if first_at is None and generation.tokens:
                # when the caller has the first piece: always after the prompt's forward
                # (the generation's own first_token_s counts from a later start than
                # ``began``, which could put it before the forward and make a phase 0)
                first_at = time.perf_counter()
                reached_first_token()
        ended = time.perf_counter()
        if first_at is None:  # no piece was emitted at all (a partial UTF-8 sequence)
            first_at = began + generation.stats.first_token_s
            if forward_done:
                first_at = max(first_at, forward_done[0])
            reached_first_token()
    except ChecksumFailed:
        raise
    except Exception:
        # weights that fail their checksums can make the forward fail (NaN logits): the
        # checksum verdict comes first, so that such a file is refused like any other
        problem = check.wait() if check is not None else None
        if problem is not None:
            raise ChecksumFailed(problem) from None
        raise
    counted = max(len(generation.tokens) - 1, 0)
    rate = counted / (ended - first_at) if counted and ended > first_at else 0.0
    return rate, counted, generation.text


def load_for_first_token(
    path: str | Path,
    prompt: str = PROMPT,
    method: str = "fast",
    pickle_path: str | Path | None = None,
    rate_tokens: int = RATE_TOKENS,
    clock: Clock | None = None,
    on_first_token: Callable[[Clock], None] | None = None,
) -> tuple[CheckpointInfo, nn.Module, object, PhaseTimes]:
    """Load ``path`` and generate its first token (then ``rate_tokens`` more), timed.

    Returns (info, model, codec, PhaseTimes). ``clock``: a running clock to continue (the
    probe starts its own at interpreter start); ``on_first_token(clock)`` is called as soon
    as the first token exists and the file passed its checksums, before the rate tokens.
    The phases add up to ``total_s``, the time from the clock's start to the first token;
    ``PhaseTimes.overlapped`` holds the checksum pass that ran beside them (fast path).
    Raises UserError for a missing or damaged checkpoint, whether the pass ran first or
    beside the load.
    """
    clock = clock or Clock()
    callback = None if on_first_token is None else (lambda: on_first_token(clock))
    info, model, codec, check = _load(path, method, pickle_path, clock)
    try:
        rate, counted, text = first_token(
            model, codec, prompt, clock, rate_tokens, callback, check=check
        )
    except ChecksumFailed:  # the file failed its checksums: the verified path decides
        del model
        info, model, codec, _ = _load(path, method, pickle_path, clock, overlap=False)
        rate, counted, text = first_token(model, codec, prompt, clock, rate_tokens, callback)
    phases = dict(clock.phases)
    total = clock.elapsed
    phases["rest"] = max(total - sum(phases.values()), 0.0)
    times = PhaseTimes(phases, total, rate, counted, method, text, dict(clock.overlapped))
    return info, model, codec, times
