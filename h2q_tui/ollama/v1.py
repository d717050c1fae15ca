"""The OpenAI-compatible routes, as Ollama serves them: ``POST /v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, ``GET /v1/models`` and ``/v1/models/{id}`` (ids are
our ``name:tag`` names).

A generation request is translated into :class:`~h2q_tui.ollama.answer.Ask` objects (one per
choice: ``n`` choices are generated one after another with seeds ``seed``, ``seed + 1``, …)
and run by the same code as ``/api/generate`` and ``/api/chat`` (the same queue, sampling,
constraint and direct socket writes); only the answer's shape differs
(:mod:`~h2q_tui.ollama.v1_shapes`): one JSON object, or server-sent events (``data: {json}``
per piece, then ``data: [DONE]``). Errors are OpenAI's error object, for every /v1 path.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from h2q_tui.generation.grammar import check_schema
from h2q_tui.ollama import answer, api, completion, embed, protocol
from h2q_tui.ollama import v1_shapes as shapes
from h2q_tui.ollama.answer import Answer, Ask
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.models import Entry

# words of the generator's messages -> the /v1 field a client sent (the first found)
PARAMS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repeat_penalty": "repeat_penalty",
    "frequency": "frequency_penalty",
    "presence": "presence_penalty",
    "seed": "seed",
    "stop": "stop",
    "strength": "strength",  # before steer: "strength needs a steer word"
    "layer": "layer",
    "steer": "steer",
}


def is_v1(request: Request) -> bool:
    path = request.url.path
    return path == "/v1" or path.startswith("/v1/")


def error_response(status: int, message: str, param: str | None = None) -> Response:
    return JSONResponse(shapes.error_json(status, message, param), status_code=status)


# ----------------------------------------------------------------------------- models
def _model(entry: Entry) -> dict[str, Any]:
    created = int(entry.modified_at or time.time())
    return {"id": entry.name, "object": "model", "created": created, "owned_by": "library"}


async def models(request: Request) -> Response:
    entries = api.server_of(request).registry.entries.values()
    listed = [_model(entry) for entry in entries if entry.info is not None]
    return JSONResponse({"object": "list", "data": listed})


async def model(request: Request) -> Response:
    registry = api.server_of(request).registry
    return JSONResponse(_model(api.model_entry(registry, {"model": request.path_params["id"]})))


# ----------------------------------------------------------------------------- embeddings
async def embeddings(request: Request) -> Response:
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    entry = api.model_entry(server.registry, body)
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(s, str) for s in inputs):
        raise ApiError(400, "input must be a string or a list of strings", "input")
    if not all(inputs):
        raise ApiError(400, "input must not hold empty strings", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, "encoding_format must be float or base64", "encoding_format")
    keep_alive = api.keep_alive(body, server.config.keep_alive)
    vectors, tokens, _ = await embed.unit_vectors(
        server, entry, inputs, True, keep_alive, body.get("dimensions")
    )
    data = [
        {"object": "embedding", "index": index, "embedding": _encoded(vector, encoding)}
        for index, vector in enumerate(vectors)
    ]
    used = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": data, "model": entry.name, "usage": used})


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as asked: floats, or base64 of little-endian float32 (the openai client's
    default)."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


# ----------------------------------------------------------------------------- generation
async def chat_completions(request: Request) -> Response:
    return await _generate(request, chat=True)


async def completions(request: Request) -> Response:
    return await _generate(request, chat=False)


async def _generate(request: Request, chat: bool) -> Response:
    started = time.perf_counter()
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    entry = api.model_entry(server.registry, body)
    parse = shapes.parse_chat if chat else shapes.parse_completion
    try:
        wanted = parse(body, entry.name, server.config.max_predict)
        if isinstance(wanted.format, dict):
            check_schema(wanted.format)  # before a model loads for nothing
    except shapes.Invalid as exc:
        raise ApiError(400, str(exc), exc.param) from None
    except ValueError as exc:
        raise ApiError(400, str(exc), "response_format") from None
    keep_alive = api.keep_alive(body, server.config.keep_alive)
    asks = _asks(entry, wanted, chat, keep_alive, server.config.max_predict)
    shape = shapes.Shape(chat, entry.name, f"fp_{entry.digest[:12]}")
    if wanted.stream:
        first = await _begin(server, entry, asks[0], started, stream=True)
        choices = Choices(request, entry, shape, wanted, asks, first)
        return api.EventStreamResponse(choices.events(), choices)
    chosen, used = [], shapes.usage(0, 0)
    for index, ask in enumerate(asks):
        done = await _begin(server, entry, ask, started, stream=False)
        codec = entry.codec  # loaded now
        collected = await answer.collect(request, done)
        if collected is None:
            return Response(status_code=499)  # nobody reads it
        text, records = collected
        items = None
        if ask.logprobs is not None:
            items = [answer.logprob_json(codec, record) for record in records]
            items = items if chat else shapes.Offsets().legacy(items)
        text = wanted.prompt + text if wanted.echo else text
        chosen.append(shape.choice(index, text, done.done_reason, items))
        used = _used(used, done)
    return JSONResponse(shape.whole(chosen, used))


async def _begin(server: Any, entry: Entry, ask: Ask, started: float, stream: bool) -> Answer:
    """:func:`answer.begin`; a schema the grammar engine cannot compile is the fault of
    ``response_format`` (the only 400 it gives a /v1 request)."""
    try:
        return await answer.begin(server, entry, ask, started, stream)
    except ApiError as exc:
        if exc.status == 400 and ask.format is not None:
            raise ApiError(400, exc.message, "response_format") from None
        raise


def _prompt(entry: Entry, wanted: shapes.V1Request, chat: bool) -> str:
    """The text the model reads, rendered as the native routes render it (the chat template,
    the model's system prompt where the request gives none)."""
    body = {"messages": wanted.messages} if chat else {"prompt": wanted.prompt}
    return completion.prompt_of(body, chat, entry)[0]


def _asks(
    entry: Entry, wanted: shapes.V1Request, chat: bool, keep_alive: float | None, max_predict: int
) -> list[Ask]:
    """One :class:`Ask` per choice: the request's fields over the model's default options
    over OpenAI's defaults; choice i has seed ``seed + i`` (each its own random one when
    the request gives none)."""
    raw = {**shapes.DEFAULTS, **answer.merged_options(entry, wanted.options)}
    prompt = _prompt(entry, wanted, chat)
    asks = []
    try:
        options = protocol.parse_options(raw, max_predict)
        for index in range(wanted.n):
            seed = None if options.seed is None else options.seed + index
            sampling, steer = answer.settings(dataclasses.replace(options, seed=seed), chat)
            logprobs, format = wanted.logprobs, wanted.format
            asks.append(Ask(prompt, sampling, steer, keep_alive, logprobs=logprobs, format=format))
    except ValueError as exc:
        message = str(exc)
        param = next((field for key, field in PARAMS.items() if key in message), None)
        raise ApiError(400, message, param) from None
    return asks


def _used(used: dict[str, int], done: Answer) -> dict[str, int]:
    """The usage so far with one more choice: the prompt counted once, the tokens of all."""
    stats = done.generation.stats
    return shapes.usage(stats.prompt_tokens, used["completion_tokens"] + stats.new_tokens)


class Choices:
    """A streamed answer's events, one choice after another; ``cancel()`` (however the
    response ends) stops the generation running now."""

    def __init__(
        self,
        request: Request,
        entry: Entry,
        shape: shapes.Shape,
        wanted: shapes.V1Request,
        asks: list[Ask],
        first: Answer,
    ) -> None:
        self.request, self.entry, self.shape = request, entry, shape
        self.wanted, self.asks, self.current = wanted, asks, first
        self.started = first.started
        self.used = shapes.usage(0, 0)
        self.failed = False

    def cancel(self) -> None:
        self.current.job.cancel()

    async def events(self) -> AsyncIterator[bytes]:
        server = api.server_of(self.request)
        try:
            for index, ask in enumerate(self.asks):
                if index:
                    try:
                        self.current = await _begin(
                            server, self.entry, ask, self.started, stream=True
                        )
                    except ApiError as exc:  # the queue filled up, a load failed
                        yield shapes.event(shapes.error_json(exc.status, exc.message))
                        return
                opening = self.shape.opening(index, self.wanted.prompt if self.wanted.echo else "")
                if opening:
                    yield opening
                line, end = self._line(index, ask), self._end(index)
                pieces = answer.stream(
                    server, self.request.scope, self.current, line, end, self._error
                )
                async for data in pieces:
                    yield data
                if self.failed or self.current.generation.stats.stop_reason == "cancelled":
                    return  # an error event went out, or the client went away
        finally:
            self.cancel()

    def _line(self, index: int, ask: Ask) -> Callable[[Any, bytes], bytes]:
        """``line(piece, stamp)`` for :func:`answer.stream`: the piece's event (it runs on
        the generation thread once the socket is handed over)."""
        emit = self.shape.piece_line(index, ask.logprobs is not None)
        if ask.logprobs is None:
            return lambda piece, stamp: emit(piece, None)
        codec, chat, offsets = self.entry.codec, self.shape.chat, shapes.Offsets()

        def line(piece: Any, stamp: bytes) -> bytes:
            items = [answer.logprob_json(codec, record) for record in piece.logprobs]
            return emit(piece.text, items if chat else offsets.legacy(items))

        return line

    def _end(self, index: int) -> Callable[[Answer], bytes]:
        def end(done: Answer) -> bytes:
            self.used = _used(self.used, done)
            out = self.shape.finish(index, done.done_reason)
            if index < len(self.asks) - 1:
                return out
            if self.wanted.include_usage:
                out += self.shape.usage_event(self.used)
            return out + shapes.DONE

        return end

    def _error(self, message: str) -> bytes:
        self.failed = True
        return shapes.event(shapes.error_json(500, message))
