"""Load a checkpoint and generate its first token, timed by phase.

:func:`load_for_first_token` is what the ``hotstart`` command measures in-process and in
each fresh process (probe.py), and what a generator that wants its load phases (the
Generate pane, ``serve``) can call. Phases, in order:

- ``info``: find the checkpoint and read its metadata (config, step);
- ``build``: the model, without random init (``fast``) or built and initialised as training
  does (``naive``; a crystallized checkpoint too);
- ``read``: the weights — memory-mapped safetensors (``fast``), pickle ``torch.load``
  (``naive``), or a crystallized file read and decoded;
- ``assign``: the tensors become the model's weights — assigned without a copy (``fast``)
  or copied by ``load_state_dict`` (``naive``);
- ``first_forward``: from the start of generation to the end of the first forward pass
  (the prompt), including decoder set-up and materialising HamLinear weights;
- ``first_token``: sampling and emitting the first token;
- ``rest``: whatever no named phase covers, so the phases add up to ``total_s``.
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
from h2q_tui.checkpoints.layout import CheckpointInfo, first_line
from h2q_tui.errors import UserError

PROMPT = "Once upon a time"
RATE_TOKENS = 64  # tokens after the first one, for tokens/s
METHODS = ("fast", "naive")


class Clock:
    """Contiguous phases: each ``lap`` closes the phase that began at the previous one."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.last = self.start
        self.phases: dict[str, float] = {}

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

    def to_dict(self) -> dict[str, object]:
        return {
            "phases": dict(self.phases),
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
            f"build ({first_line(exc)})"
        ) from None
    return model


def load_timed(
    path: str | Path,
    method: str = "fast",
    pickle_path: str | Path | None = None,
    clock: Clock | None = None,
) -> tuple[CheckpointInfo, nn.Module, object]:
    """(info, model in eval mode, codec), with the phases info, build, read, assign on
    ``clock``.

    ``method``: ``fast`` (build without init, memory-mapped safetensors, assign) or
    ``naive`` (build as training does, pickle ``torch.load`` of ``pickle_path``,
    ``load_state_dict``). A crystallized checkpoint is built normally and decoded (the
    phases build and read).
    """
    from h2q_tui.generation.text import Codec

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    clock = clock or Clock()
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
        model = checkpoint_load.build_unfilled(info)
        clock.lap("build")
        if model is None:  # a builder that needs its init: the normal path
            model = checkpoints.load_model_from(info)
            clock.lap("read")
        else:
            tensors = checkpoint_load.read_tensors(info)
            clock.lap("read")
            checkpoint_load.assign_weights(info, model, tensors)
            del tensors
            clock.lap("assign")
    return info, model.eval(), codec


def first_token(
    model: nn.Module,
    codec,
    prompt: str,
    clock: Clock,
    rate_tokens: int = RATE_TOKENS,
    on_first_token: Callable[[], None] | None = None,
    seed: int = 0,
) -> tuple[float, int, str]:
    """Generate from ``prompt`` as ``h2q-tui generate`` does; laps first_forward and
    first_token on ``clock``, calls ``on_first_token`` then, and goes on for
    ``rate_tokens`` more tokens. Returns (tokens/s after the first token, tokens counted,
    the text)."""
    from h2q_tui.generation.generate import Generation
    from h2q_tui.generation.sampling import SamplingConfig

    forward_done: list[float] = []

    def hook(module, inputs, output) -> None:
        if not forward_done:
            forward_done.append(time.perf_counter())

    generation = Generation(
        model, codec, prompt, SamplingConfig(max_new_tokens=1 + rate_tokens, seed=seed)
    )
    handle = model.register_forward_hook(hook)
    first_at = None
    try:
        began = time.perf_counter()
        for _ in generation:
            if first_at is None and generation.tokens:
                first_at = began + generation.stats.first_token_s
                clock.lap("first_forward", forward_done[0] if forward_done else first_at)
                clock.lap("first_token", first_at)
                if on_first_token is not None:
                    on_first_token()
                handle.remove()
        ended = time.perf_counter()
    finally:
        handle.remove()
    if first_at is None:  # no piece was emitted at all (a partial UTF-8 sequence)
        first_at = began + generation.stats.first_token_s
        clock.lap("first_forward", forward_done[0] if forward_done else first_at)
        clock.lap("first_token", first_at)
        if on_first_token is not None:
            on_first_token()
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
    as the first token exists, before the rate tokens. The phases add up to ``total_s``,
    the time from the clock's start to the first token.
    """
    clock = clock or Clock()
    info, model, codec = load_timed(path, method, pickle_path, clock)
    rate, counted, text = first_token(
        model,
        codec,
        prompt,
        clock,
        rate_tokens,
        None if on_first_token is None else (lambda: on_first_token(clock)),
    )
    phases = dict(clock.phases)
    total = clock.elapsed
    phases["rest"] = max(total - sum(phases.values()), 0.0)
    times = PhaseTimes(phases, total, rate, counted, method, text)
    return info, model, codec, times
