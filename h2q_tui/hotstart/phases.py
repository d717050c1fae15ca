"""Load a checkpoint and generate its first token, timed by phase.

:func:`load_for_first_token` is what the ``hotstart`` command measures in-process and in
each fresh process (probe.py). The load is :func:`h2q_tui.checkpoints.load_checkpoint`
(``fast`` or ``naive``), whose phases (info, read, build, assign) go on the same clock, then:

- ``first_forward``: from the start of generation to the end of the first forward pass
  (the prompt), including decoder set-up and materialising HamLinear weights;
- ``first_token``: sampling the first token;
- ``verify_wait`` (``fast``): waiting for the checksum pass, which ran beside the load and
  the first forward, before the first token is handed over;
- ``rest``: whatever no named phase covers, so the phases add up to ``total_s``.

When the checksum pass fails, the model is thrown away and the load starts again the
verified way, which refuses the file with the usual one-line error, or takes the newest
sound checkpoint of a run dir with a note, as every other command does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from h2q_tui.checkpoints import CheckpointInfo, load_checkpoint
from h2q_tui.checkpoints.loader import ChecksumFailed
from h2q_tui.checkpoints.timing import Clock
from h2q_tui.generation.generate import Generation
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import DEFAULT_PROMPT, Codec

PROMPT = DEFAULT_PROMPT
RATE_TOKENS = 64  # tokens after the first one, for tokens/s
METHODS = ("fast", "naive")


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
    naive path's input (a crystallized checkpoint's weights decoded to float, as a plain
    ``torch.load`` of a state dict holds them). Returns its path."""
    model = load_checkpoint(info, dequantize=True).model
    path = Path(folder) / "state_dict.pt"
    torch.save(model.state_dict(), path)
    return path


def _timed_generation(forward_done: list[float]):
    """A Generation whose decoder notes when its first call (the prompt's forward) returned.

    Wrapping the decoder, rather than a forward hook on the model, keeps the step program
    that ``generate`` uses (h2q_tui/generation/decoder.py takes the model path whenever a
    module has a forward hook), so the figures are those of a real generation.
    """

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
    confirm: Callable[[], None] | None = None,
) -> tuple[float, int, str]:
    """Generate from ``prompt`` as ``h2q-tui generate`` does; laps first_forward and
    first_token on ``clock``, calls ``confirm`` (the wait for the overlapped checksum pass:
    lap verify_wait; ChecksumFailed when the file failed it), ``on_first_token`` then,
    and goes on for ``rate_tokens`` more tokens. Returns (tokens/s after the first token,
    tokens counted, the text)."""
    forward_done: list[float] = []
    generation = _timed_generation(forward_done)(
        model, codec, prompt, SamplingConfig(max_new_tokens=1 + rate_tokens, seed=seed)
    )
    first_at = None

    def reached_first_token() -> None:
        clock.lap("first_forward", forward_done[0] if forward_done else first_at)
        clock.lap("first_token", first_at)
        if confirm is not None:
            confirm()
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
        if confirm is not None:
            confirm()  # ChecksumFailed for a damaged file
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
    loaded = load_checkpoint(path, method, clock=clock, verify="later", pickle_path=pickle_path)
    codec = Codec(loaded.tokenizer)
    try:
        rate, counted, text = first_token(
            loaded.model,
            codec,
            prompt,
            clock,
            rate_tokens,
            callback,
            confirm=lambda: loaded.confirm(clock),
        )
    except ChecksumFailed:  # the file failed its checksums: the verified path decides
        del loaded
        loaded = load_checkpoint(path, method, clock=clock, verify="first", pickle_path=pickle_path)
        codec = Codec(loaded.tokenizer)
        rate, counted, text = first_token(loaded.model, codec, prompt, clock, rate_tokens, callback)
    phases = dict(clock.phases)
    total = clock.elapsed
    phases["rest"] = max(total - sum(phases.values()), 0.0)
    times = PhaseTimes(phases, total, rate, counted, method, text, dict(clock.overlapped))
    return loaded.info, loaded.model, codec, times
