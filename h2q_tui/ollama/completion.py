"""``/api/generate`` and ``/api/chat``: a request's prompt and options become an
:class:`~h2q_tui.ollama.answer.Ask`, and the answer is streamed (NDJSON, one
:class:`~h2q_tui.ollama.replies.Reply` per piece, then the final one) or collected into one
object (``"stream": false``).

The final object's durations are measured here: ``total_duration`` from the request's arrival,
``load_duration`` what this request spent loading the model, ``prompt_eval_duration`` the time
to the first token (prompt forward + steering set-up), ``eval_duration`` the rest.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from h2q_tui.ollama import answer, api, protocol
from h2q_tui.ollama.answer import Answer, Ask
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.models import Entry, iso
from h2q_tui.ollama.replies import Reply, ndjson, piece_line


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
        raw_options = answer.merged_options(entry, body.get("options"))
        options = protocol.parse_options(raw_options, server.config.max_predict)
        sampling, steer = answer.settings(options, chat)  # before a model loads for nothing
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    prompt, context = _prompt(body, chat, entry)
    if not prompt and not context:  # an empty prompt loads (keep_alive 0: unloads)
        lease, _ = await server.hold(entry)
        server.request_done(entry, lease, keep_alive)
        reason = "unload" if keep_alive == 0 else "load"
        final = Reply(entry.name, iso(time.time()), chat=chat, done=True, done_reason=reason)
        if stream:
            return api.NdjsonResponse(api.lines([final.to_json()]))
        return JSONResponse(final.to_json())
    ask = Ask(prompt, sampling, steer, keep_alive, context)
    started_answer = await answer.begin(server, entry, ask, started, stream)
    if stream:
        line = piece_line(entry.name, chat)
        end = lambda done: ndjson(_final(done, chat, "").to_json())  # noqa: E731
        error = lambda message: ndjson({"error": message})  # noqa: E731
        content = answer.stream(server, request.scope, started_answer, line, end, error)
        return api.NdjsonResponse(content, started_answer.job)
    collected = await answer.collect(request, started_answer)
    if collected is None:
        return Response(status_code=499)  # nobody reads it
    return JSONResponse(_final(started_answer, chat, collected[0]).to_json())


def _prompt(body: dict[str, Any], chat: bool, entry: Entry) -> tuple[str, list[int]]:
    """The request's prompt (a chat rendered as text) and its ``context`` token ids; the
    model's system prompt (``/api/create``) where the request gives none."""
    if chat:
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise ApiError(400, "messages must be a list")
        if messages and entry.system and not _has_system(messages):
            messages = [{"role": "system", "content": entry.system}, *messages]
        try:
            return (protocol.render_chat(messages) if messages else ""), []
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    prompt, system = api.text(body, "prompt"), api.text(body, "system") or entry.system
    if system and prompt:
        prompt = f"{system}\n\n{prompt}"
    context = body.get("context") or []
    if not isinstance(context, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in context
    ):
        raise ApiError(400, "context must be a list of token ids")
    return prompt, context


def _has_system(messages: list[Any]) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "system" for m in messages)


def _final(done: Answer, chat: bool, text: str) -> Reply:
    """The final object: why the generation stopped, and what it took."""
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
        context=None if chat else generation.prompt_ids + generation.tokens,
        total_duration=api.nanoseconds(done.total_s),
        load_duration=api.nanoseconds(done.load_s),
        prompt_eval_count=stats.prompt_tokens,
        prompt_eval_duration=api.nanoseconds(prompt_s),
        eval_count=stats.new_tokens,
        eval_duration=api.nanoseconds(eval_s),
    )
