"""One generation behind either API: Ollama's ``/api/generate`` and ``/api/chat``
(:mod:`~h2q_tui.ollama.completion`) and the OpenAI-compatible ``/v1`` routes
(:mod:`~h2q_tui.ollama.v1`) each translate their request into an :class:`Ask`, start it with
:func:`begin`, and shape the pieces that :func:`stream` or :func:`collect` hand back; the
sampling, the constraint, the queue and the measured durations are the same for both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from h2q_tui.generation.constraint import TokenLogprob
from h2q_tui.generation.generate import Generation
from h2q_tui.generation.grammar import json_constraint
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.generation.text import Codec
from h2q_tui.ollama import direct, protocol
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.jobs import Job, Piece
from h2q_tui.ollama.models import Entry, iso

# the sampler's settings by the names of Ollama's options
OPTION_NAMES = {
    "repetition_penalty": "repeat_penalty",
    "max_new_tokens": "num_predict",
    "penalty_window": "repeat_last_n",
}
Line = Callable[[Any, bytes], bytes]  # (a piece: str or Piece, created-at stamp) -> bytes


@dataclass
class Ask:
    """What a request asks of a generation, whichever API it came through."""

    prompt: str
    sampling: SamplingConfig
    steer: SteerConfig = field(default_factory=SteerConfig)
    keep_alive: float | None = None  # seconds the model stays loaded after; None: forever
    context: list[int] = field(default_factory=list)  # token ids before the prompt
    logprobs: int | None = None  # alternatives per token (0..20); None: no logprobs
    format: Any = None  # None, "json" (any JSON object) or a JSON schema
    truncate: bool = True  # a prompt longer than the context is cut (see fit_context); or 400
    shift: bool = True  # past the context the window moves on; False: stop, reason "length"
    keep: int = 0  # num_keep: the prompt's first tokens that a cut keeps (-1: all)


@dataclass
class Answer:
    """A started generation and what its final object reports."""

    job: Job
    started: float  # perf_counter at the request's arrival
    load_s: float  # what this request spent loading the model

    @property
    def generation(self) -> Generation:
        return self.job.generation

    @property
    def done_reason(self) -> str:
        return "length" if self.generation.stats.stop_reason == "length" else "stop"

    @property
    def total_s(self) -> float:
        return time.perf_counter() - self.started

    def durations(self) -> tuple[float, float]:
        """(seconds to the first token, seconds after it): prompt and eval time."""
        stats = self.generation.stats
        first = stats.first_token_s if stats.new_tokens else stats.seconds
        return first, (stats.seconds - first) if stats.new_tokens else 0.0


def merged_options(entry: Entry, raw: Any) -> Any:
    """A request's options over its model's defaults (``/api/create``'s parameters)."""
    if not entry.default_options or not isinstance(raw, dict | None):
        return raw
    return {**entry.default_options, **(raw or {})}


def settings(options: protocol.Options, chat: bool) -> tuple[SamplingConfig, SteerConfig]:
    """The sampler's and the steering's settings from a request's options; ValueError (one
    line, naming the option as Ollama does) for a value outside the generator's limits."""
    default = SamplingConfig()
    pick = lambda value, fallback: fallback if value is None else value  # noqa: E731
    sampling = SamplingConfig(
        temperature=pick(options.temperature, default.temperature),
        top_k=pick(options.top_k, default.top_k),
        top_p=pick(options.top_p, default.top_p),
        repetition_penalty=pick(options.repeat_penalty, default.repetition_penalty),
        frequency_penalty=pick(options.frequency_penalty, default.frequency_penalty),
        presence_penalty=pick(options.presence_penalty, default.presence_penalty),
        min_p=pick(options.min_p, default.min_p),
        penalty_window=max(0, pick(options.repeat_last_n, default.penalty_window)),
        max_new_tokens=pick(options.num_predict, protocol.DEFAULT_PREDICT),
        seed=pick(options.seed, secrets.randbelow(2**31)),
        stop=options.stop + (protocol.CHAT_STOPS if chat else ()),
    )
    if options.repeat_last_n == 0:  # Ollama's repeat_last_n 0: the penalties are off
        off = {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
        sampling = dataclasses.replace(sampling, **off)
    steer = SteerConfig(word=options.steer, strength=options.strength, layer=options.layer)
    try:
        sampling.check(OPTION_NAMES)
        steer.check()
    except ValueError as exc:
        raise ValueError(f"invalid option: {exc}") from None
    return sampling, steer


async def begin(server: Any, entry: Entry, ask: Ask, started: float, stream: bool) -> Answer:
    """Hold the model (queue, load) and start the generation on its own thread; ApiError 400
    for a request the loaded model cannot take (context ids, a schema it cannot compile).
    ``stream`` false: the pieces are read only at the end (the loop is not woken per piece)."""
    lease, load_s = await server.hold(entry)
    try:
        generation = _generation(entry, ask)
    except ValueError as exc:
        server.request_done(entry, lease, ask.keep_alive)
        raise ApiError(400, str(exc)) from None
    except BaseException:
        server.request_done(entry, lease, ask.keep_alive)
        raise
    job = Job(entry, lease, generation, ask.keep_alive, server.job_ended, wake_per_piece=stream)
    server.start(job)
    return Answer(job, started, load_s)


def _generation(entry: Entry, ask: Ask) -> Generation:
    vocab = entry.info.config.model.vocab_size
    if any(not 0 <= t < vocab for t in ask.context):
        raise ValueError(f"invalid option: context holds token ids outside 0..{vocab - 1}")
    prompt = entry.codec.decode(ask.context) + ask.prompt if ask.context else ask.prompt
    constraint = None
    if ask.format is not None:
        constraint = json_constraint(ask.format, entry.codec.vocabulary(vocab))
    generation = Generation(
        entry.model,
        entry.codec,
        prompt,
        sampling=ask.sampling,
        steer=ask.steer,
        logprobs=ask.logprobs,
        constraint=constraint,
    )
    fit_context(generation, ask)
    return generation


async def stream(
    server: Any,
    scope: dict[str, Any],
    answer: Answer,
    line: Line,
    end: Callable[[Answer], bytes],
    error: Callable[[str], bytes],
) -> AsyncIterator[bytes]:
    """The bytes of a streamed answer: ``line`` per piece, ``error`` for a failure, ``end``
    once the generation is over (its keep-alive applied). On serve's own stack the generation
    thread writes the pieces itself once the head is out, and this sends only the end."""
    job = answer.job
    try:
        fd = direct.socket_of(scope)  # on serve's default stack (direct.Protocol)
        if fd is not None:  # the head is out: the generation thread writes the pieces
            writer = direct.ChunkWriter(fd, lambda: job.generation.cancelled)
            server.direct_streams += job.go_direct(writer, line)
        async for items in job.batches():
            out = []
            stamp = iso(time.time()).encode()  # one batch goes out in one write: one time
            for kind, value in items:
                if kind == "piece":
                    out.append(line(value, stamp))
                elif kind == "error":
                    out.append(error(value))
                else:
                    await job.ended()
                    out.append(end(answer))
            yield b"".join(out)
    finally:
        job.cancel()  # a client gone mid-stream: stop before the next token


async def collect(request: Request, answer: Answer) -> tuple[str, list[TokenLogprob]] | None:
    """The whole text and its log-probabilities once the generation is over (its keep-alive
    applied); None when the client went away first. ApiError 500 for a failed generation."""
    job, parts, records = answer.job, [], []
    try:
        while True:
            try:
                items = await asyncio.wait_for(job.next_batch(), 0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return None
                continue
            for kind, value in items:
                if kind == "piece":
                    parts.append(value.text if isinstance(value, Piece) else value)
                    records.extend(value.logprobs if isinstance(value, Piece) else ())
                elif kind == "error":
                    raise ApiError(500, value)
                else:
                    await job.ended()
                    return "".join(parts), records
    finally:
        job.cancel()


def logprob_json(codec: Codec, record: TokenLogprob) -> dict[str, Any]:
    """One token's log-probability as both APIs write it: ``token`` (its text; a byte that is
    not a character alone shows as U+FFFD), ``logprob``, ``bytes`` (the exact bytes) and
    ``top_logprobs`` (the likeliest tokens, each with the same three fields)."""

    def one(token: int, logprob: float) -> dict[str, Any]:
        raw = codec.token_bytes(token)
        text = raw.decode("utf-8", errors="replace")
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    top = [one(token, logprob) for token, logprob in record.top]
    return one(record.token, record.logprob) | {"top_logprobs": top}


def fit_context(generation: Generation, ask: Ask) -> None:
    """The prompt and the generation fitted to the model's context before it starts, as
    Ollama does: a prompt longer than the context keeps its first ``ask.keep`` tokens and
    its last ones, the context's length in all (``truncate``; off: ValueError with Ollama's
    words); with ``shift`` off the reply stops (reason "length") where prompt and reply fill
    the context, instead of the decoder's window moving on by half the context."""
    context = generation.model.config.context
    ids = generation.prompt_ids
    if len(ids) > context:
        if not ask.truncate:
            raise ValueError(
                f"the input length exceeds the context length ({len(ids)} tokens; the "
                f"context is {context}; truncate true keeps its last tokens)"
            )
        keep = len(ids) if ask.keep < 0 else ask.keep
        keep = min(keep, context - 1)
        generation.prompt_ids = ids[:keep] + ids[len(ids) - (context - keep) :]
        generation.stats.prompt_tokens = len(generation.prompt_ids)
    if not ask.shift:
        room = max(0, context - len(generation.prompt_ids))
        generation.sampling.max_new_tokens = min(generation.sampling.max_new_tokens, room)
