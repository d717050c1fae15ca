"""``/api/generate`` and ``/api/chat``: a request's prompt and options, its :class:`Job`, and
the answer, streamed (NDJSON, one :class:`~h2q_tui.ollama.replies.Reply` per piece, then the
final one) or collected into one object (``"stream": false``).

The final object's durations are measured here: ``total_duration`` from the request's arrival,
``load_duration`` what this request spent loading the model, ``prompt_eval_duration`` the time
to the first token (prompt forward + steering set-up), ``eval_duration`` the rest.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from h2q_tui.generation.generate import Generation
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.ollama import api, direct, protocol
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.jobs import Job
from h2q_tui.ollama.models import Entry, iso
from h2q_tui.ollama.replies import Reply, ndjson, piece_line

# the sampler's settings by the names of Ollama's options
OPTION_NAMES = {"repetition_penalty": "repeat_penalty", "max_new_tokens": "num_predict"}


async def generate(request: Request) -> Response:
    return await _complete(request, chat=False)


async def chat(request: Request) -> Response:
    return await _complete(request, chat=True)


async def _complete(request: Request, chat: bool) -> Response:
    started = time.perf_counter()
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    entry = api.model_entry(server.registry, body)
    stream = api.flag(body, "stream", True)
    keep_alive = api.keep_alive(body, server.config.keep_alive)
    try:
        options = protocol.parse_options(body.get("options"), server.config.max_predict)
        sampling, steer = settings(options, chat)  # before a model loads for nothing
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    prompt, context = _prompt(body, chat)
    lease, load_s = await server.hold(entry)
    if not prompt and not context:  # an empty prompt loads (keep_alive 0: unloads)
        server.request_done(entry, lease, keep_alive)
        reason = "unload" if keep_alive == 0 else "load"
        final = Reply(entry.name, iso(time.time()), chat=chat, done=True, done_reason=reason)
        if stream:
            return api.NdjsonResponse(api.lines([final.to_json()]))
        return JSONResponse(final.to_json())
    try:
        generation = _generation(entry, prompt, context, sampling, steer)
    except ValueError as exc:
        server.request_done(entry, lease, keep_alive)
        raise ApiError(400, f"invalid option: {exc}") from None
    except BaseException:
        server.request_done(entry, lease, keep_alive)
        raise
    job = Job(entry, lease, generation, keep_alive, server.job_ended, wake_per_piece=stream)
    server.start(job)
    timing = (started, load_s)
    if stream:
        return api.NdjsonResponse(_stream(server, request.scope, job, chat, timing), job)
    return await _collect(request, job, chat, timing)


def _prompt(body: dict[str, Any], chat: bool) -> tuple[str, list[int]]:
    """The request's prompt (a chat rendered as text) and its ``context`` token ids."""
    if chat:
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise ApiError(400, "messages must be a list")
        try:
            return (protocol.render_chat(messages) if messages else ""), []
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    prompt, system = api.text(body, "prompt"), api.text(body, "system")
    if system and prompt:
        prompt = f"{system}\n\n{prompt}"
    context = body.get("context") or []
    if not isinstance(context, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in context
    ):
        raise ApiError(400, "context must be a list of token ids")
    return prompt, context


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
        max_new_tokens=pick(options.num_predict, protocol.DEFAULT_PREDICT),
        seed=pick(options.seed, secrets.randbelow(2**31)),
        stop=options.stop + (protocol.CHAT_STOPS if chat else ()),
    )
    steer = SteerConfig(word=options.steer, strength=options.strength, layer=options.layer)
    try:
        sampling.check(OPTION_NAMES)
        steer.check()
    except ValueError as exc:
        raise ValueError(f"invalid option: {exc}") from None
    return sampling, steer


def _generation(entry: Entry, prompt: str, context: list[int], sampling, steer) -> Generation:
    vocab = entry.info.config.model.vocab_size
    if any(not 0 <= t < vocab for t in context):
        raise ValueError(f"context holds token ids outside 0..{vocab - 1}")
    if context:
        prompt = entry.codec.decode(context) + prompt
    return Generation(entry.model, entry.codec, prompt, sampling=sampling, steer=steer)


def _final(job: Job, chat: bool, timing: tuple[float, float], text: str) -> Reply:
    """The final object: why the generation stopped, and what it took."""
    started, load_s = timing
    stats = job.generation.stats
    first = stats.first_token_s if stats.new_tokens else stats.seconds
    return Reply(
        model=job.entry.name,
        created_at=iso(time.time()),
        text=text,
        chat=chat,
        done=True,
        done_reason="stop" if stats.stop_reason in ("stop", "cancelled") else "length",
        context=None if chat else job.generation.prompt_ids + job.generation.tokens,
        total_duration=api.nanoseconds(time.perf_counter() - started),
        load_duration=api.nanoseconds(load_s),
        prompt_eval_count=stats.prompt_tokens,
        prompt_eval_duration=api.nanoseconds(first),
        eval_count=stats.new_tokens,
        eval_duration=api.nanoseconds(stats.seconds - first) if stats.new_tokens else 0,
    )


async def _stream(server, scope, job: Job, chat: bool, timing) -> AsyncIterator[bytes]:
    """The NDJSON lines of a streamed answer; on serve's own stack the generation thread
    writes the pieces itself once the head is out, and this sends only the end."""
    line = piece_line(job.entry.name, chat)
    try:
        fd = direct.socket_of(scope)  # on serve's default stack (direct.Protocol)
        if fd is not None:  # the head is out: the generation thread writes the pieces
            writer = direct.ChunkWriter(fd, lambda: job.generation.cancelled)
            server.direct_streams += job.go_direct(writer, line)
        async for items in job.batches():
            lines = []
            stamp = iso(time.time()).encode()  # one batch goes out in one write: one time
            for kind, value in items:
                if kind == "piece":
                    lines.append(line(value, stamp))
                elif kind == "error":
                    lines.append(ndjson({"error": value}))
                else:
                    await job.ended()
                    lines.append(ndjson(_final(job, chat, timing, "").to_json()))
            yield b"".join(lines)
    finally:
        job.cancel()  # a client gone mid-stream: stop before the next token


async def _collect(request: Request, job: Job, chat: bool, timing) -> Response:
    """The whole answer as one object (``"stream": false``)."""
    parts: list[str] = []
    try:
        while True:
            try:
                items = await asyncio.wait_for(job.next_batch(), 0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return Response(status_code=499)  # nobody reads it
                continue
            for kind, value in items:
                if kind == "piece":
                    parts.append(value)
                elif kind == "error":
                    raise ApiError(500, value)
                else:
                    await job.ended()
                    final = _final(job, chat, timing, "".join(parts))
                    return JSONResponse(final.to_json())
    finally:
        job.cancel()
