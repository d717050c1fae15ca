"""``/api/generate`` and ``/api/chat``: a request's prompt and options become an
:class:`~h2q_tui.ollama.answer.Ask`, and the answer is streamed (NDJSON, one
:class:`~h2q_tui.ollama.replies.Reply` per piece, then the final one) or collected into one
object (``"stream": false``).

The final object's durations are measured here: ``total_duration`` from the request's arrival,
``load_duration`` what this request spent loading the model, ``prompt_eval_duration`` the time
to the first token (prompt forward + steering set-up), ``eval_duration`` the rest.

The other fields (:mod:`~h2q_tui.ollama.fields`): ``format`` constrains the decoding to JSON
or a JSON schema; ``logprobs`` puts on each streamed piece the log-probabilities of the tokens
that made its text (on an unstreamed answer, all of them), the model's raw distribution:
before the repetition, frequency and presence penalties, temperature, top-k/top-p/min-p and
the format constraint; ``raw`` sends the prompt as given and returns no ``context``;
``truncate`` and ``shift`` fit prompt and reply to the model's context
(``answer.fit_context``; a chat first drops its oldest messages, as Ollama does).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from h2q_tui import checkpoints
from h2q_tui.generation.text import Codec
from h2q_tui.ollama import answer, api, fields, protocol
from h2q_tui.ollama.answer import Answer, Ask
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.models import Entry, iso
from h2q_tui.ollama.replies import Reply, logprob_line, ndjson, piece_line


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
    fields.refuse_unsupported(body, entry.name, chat)  # all before a model loads for nothing
    context_length = entry.info.config.model.context if entry.info is not None else None
    try:
        raw_options = answer.merged_options(entry, body.get("options"))
        options = protocol.parse_options(raw_options, server.config.max_predict, context_length)
        sampling, steer = answer.settings(options, chat)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    raw = not chat and api.flag(body, "raw", False)
    truncate = api.flag(body, "truncate", True)
    prompt, context = prompt_of(body, chat, entry, raw, truncate)
    ask = Ask(
        prompt,
        sampling,
        steer,
        keep_alive,
        context,
        logprobs=fields.read_logprobs(body),
        format=fields.read_format(body),
        truncate=truncate,
        shift=api.flag(body, "shift", True),
        keep=options.num_keep,
    )
    if not prompt and not context:  # an empty prompt loads (keep_alive 0: unloads)
        lease, _ = await server.hold(entry)
        server.request_done(entry, lease, keep_alive)
        reason = "unload" if keep_alive == 0 else "load"
        final = Reply(entry.name, iso(time.time()), chat=chat, done=True, done_reason=reason)
        if stream:
            return api.NdjsonResponse(api.lines([final.to_json()]))
        return JSONResponse(final.to_json())
    started_answer = await answer.begin(server, entry, ask, started, stream)
    codec = entry.codec  # the loaded model's, for the log-probabilities' bytes
    if stream:
        if ask.logprobs is None:
            line = piece_line(entry.name, chat)
        else:
            line = logprob_line(entry.name, chat, lambda r: answer.logprob_json(codec, r))
        end = lambda done: ndjson(_final(done, chat, "", raw).to_json())  # noqa: E731
        error = lambda message: ndjson({"error": message})  # noqa: E731
        content = answer.stream(server, request.scope, started_answer, line, end, error)
        return api.NdjsonResponse(content, started_answer.job)
    collected = await answer.collect(request, started_answer)
    if collected is None:
        return Response(status_code=499)  # nobody reads it
    text, records = collected
    final = _final(started_answer, chat, text, raw)
    if ask.logprobs is not None:
        final.logprobs = [answer.logprob_json(codec, record) for record in records]
    return JSONResponse(final.to_json())


def prompt_of(
    body: dict[str, Any], chat: bool, entry: Entry, raw: bool = False, truncate: bool = True
) -> tuple[str, list[int]]:
    """The request's prompt (a chat rendered as text, :func:`_fitted_chat` when
    ``truncate``) and its ``context`` token ids; the model's system prompt (``/api/create``)
    where the request gives none. ``raw``: the prompt as given (no system prompt; with
    ``system`` or ``context``, 400 as in Ollama)."""
    if chat:
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise ApiError(400, "messages must be a list")
        if messages and entry.system and not _has_system(messages):
            messages = [{"role": "system", "content": entry.system}, *messages]
        try:
            if not messages:
                return "", []
            return (
                _fitted_chat(messages, entry) if truncate else protocol.render_chat(messages)
            ), []
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    if raw:
        if api.text(body, "system") or body.get("context"):
            raise ApiError(400, "raw mode does not support template, system, or context")
        return api.text(body, "prompt"), []
    prompt, system = api.text(body, "prompt"), api.text(body, "system") or entry.system
    if system and prompt:
        prompt = f"{system}\n\n{prompt}"
    context = body.get("context") or []
    if not isinstance(context, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in context
    ):
        raise ApiError(400, "context must be a list of token ids")
    return prompt, context


def _fitted_chat(messages: list[Any], entry: Entry) -> str:
    """The rendered chat; when it is longer than the model's context, Ollama's truncation
    of a chat: the oldest messages dropped, the system ones and the last kept, until it
    fits or nothing else is left (then the prompt's tokens are cut, ``answer.fit_context``).
    """
    rendered = protocol.render_chat(messages)
    if entry.info is None or len(rendered.encode()) <= entry.info.config.model.context:
        return rendered  # a token is at least a byte: it fits without counting tokens
    context = entry.info.config.model.context
    codec = entry.codec or Codec(checkpoints.tokenizer_of(entry.info))
    system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]

    def fits(dropped: int) -> bool:
        return len(codec.encode(protocol.render_chat(system + rest[dropped:]))) <= context

    low, high = 0, max(0, len(rest) - 1)  # the fewest dropped that fit (at most all but one)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle + 1, high)
    return protocol.render_chat(system + rest[low:])


def _has_system(messages: list[Any]) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "system" for m in messages)


def _final(done: Answer, chat: bool, text: str, raw: bool) -> Reply:
    """The final object: why the generation stopped, and what it took (``context``: on
    generate's, unless ``raw``, as in Ollama)."""
    generation = done.generation
    stats = generation.stats
    prompt_s, eval_s = done.durations()
    return Reply(
        model=done.job.entry.name,
        created_at=iso(time.time()),
        text=text,
        chat=chat,
        done=True,
        done_reason=done.done_reason,
        context=None if chat or raw else generation.prompt_ids + generation.tokens,
        total_duration=api.nanoseconds(done.total_s),
        load_duration=api.nanoseconds(done.load_s),
        prompt_eval_count=stats.prompt_tokens,
        prompt_eval_duration=api.nanoseconds(prompt_s),
        eval_count=stats.new_tokens,
        eval_duration=api.nanoseconds(eval_s),
    )
