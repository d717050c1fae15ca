"""The OpenAI-compatible ``/v1`` routes' JSON: a request's fields read and checked
(:func:`parse_chat`, :func:`parse_completion`) into Ollama's options, and the answers built
(:class:`Shape`: whole objects, server-sent events, the error object). No HTTP here.

Every field OpenAI documents is honoured, refused with a one-line reason (:data:`REFUSED`),
or accepted and ignored because it never changes the output (:data:`IGNORED`); fields that
are not OpenAI's are ignored, as Ollama ignores them, except :data:`EXTRA` and
``keep_alive``.
"""

from __future__ import annotations

import codecs
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from h2q_tui.generation.constraint import MAX_TOP_LOGPROBS
from h2q_tui.ollama import protocol

DONE = b"data: [DONE]\n\n"
MAX_CHOICES = 8  # n: choices are generated one after another, each a whole generation
# what OpenAI's API means when a request leaves them out (Ollama's /v1 sends the same); a
# model's own defaults (/api/create) come before these
DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
# not OpenAI's: our steering, and two of Ollama's options OpenAI has no field for
EXTRA = ("steer", "strength", "layer", "top_k", "repeat_penalty")
IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key")
# field -> what the model lacks (Ollama's words: '"name" does not support tools')
REFUSED = {
    "tools": "tools",
    "tool_choice": "tools",
    "functions": "tools",
    "function_call": "tools",
    "parallel_tool_calls": "tools",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "reasoning_effort": "thinking",
    "reasoning": "thinking",
    "web_search_options": "web search",
    "logit_bias": "logit_bias",
    "suffix": "insert",
}
HARMLESS = {"tool_choice": "none", "reasoning_effort": "none", "modalities": ["text"]}
EMPTY: tuple[Any, ...] = (None, "", [], {})
_MARK = "\x01"  # where a per-piece value goes in an event's template


class Invalid(ValueError):
    """A field OpenAI's way refuses: 400 with the field's name as ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_json(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object (its ``type`` as Ollama's /v1 names it for the status)."""
    if status == 404:
        kind = "not_found_error"
    elif 400 <= status < 500:
        kind = "invalid_request_error"
    else:
        kind = "api_error"
    code = "model_not_found" if status == 404 and message.startswith("model ") else None
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def event(obj: Mapping[str, Any]) -> bytes:
    """One server-sent event: ``data: {json}`` and a blank line."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return b"data: " + text.encode() + b"\n\n"


# ----------------------------------------------------------------------------- requests
@dataclass
class V1Request:
    """What a /v1 generation request asks, in Ollama's terms."""

    options: dict[str, Any]  # Ollama's options (before the model's and the /v1 defaults)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    format: Any = None  # None, "json" or a JSON schema
    echo: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)  # chat
    prompt: str = ""  # completions


def parse_chat(body: Mapping[str, Any], model: str, max_predict: int) -> V1Request:
    """A ``/v1/chat/completions`` body; :class:`Invalid` for a bad or refused field."""
    _refuse(body, model)
    request = _common(body, max_predict, ("max_completion_tokens", "max_tokens"))
    request.messages = _messages(body.get("messages"), model)
    logprobs = _flag(body, "logprobs")
    top = _whole(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise Invalid("top_logprobs needs logprobs: true", "top_logprobs")
    request.logprobs = (top or 0) if logprobs else None
    return request


def parse_completion(body: Mapping[str, Any], model: str, max_predict: int) -> V1Request:
    """A ``/v1/completions`` body; :class:`Invalid` for a bad or refused field."""
    _refuse(body, model)
    request = _common(body, max_predict, ("max_tokens",))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise Invalid("prompt must be a string (or a list of one string)", "prompt")
    request.prompt = prompt
    request.logprobs = _whole(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    request.echo = _flag(body, "echo")
    if request.echo and request.logprobs is not None:
        raise Invalid("echo with logprobs is not supported (no logprobs of the prompt)", "echo")
    best_of = _whole(body, "best_of", 1, MAX_CHOICES)
    if best_of is not None and best_of != request.n:
        raise Invalid("best_of other than n is not supported (it ranks choices)", "best_of")
    return request


def _refuse(body: Mapping[str, Any], model: str) -> None:
    for key, lacks in REFUSED.items():
        value = body.get(key)
        if value not in EMPTY and value != HARMLESS.get(key):
            raise Invalid(f'"{model}" does not support {lacks}', key)
    modalities = body.get("modalities")
    if modalities not in EMPTY and modalities != HARMLESS["modalities"]:
        raise Invalid(f'"{model}" does not support audio output', "modalities")


def _common(body: Mapping[str, Any], max_predict: int, budget: tuple[str, ...]) -> V1Request:
    options: dict[str, Any] = {}
    for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
        if body.get(key) is not None:
            options[key] = body[key]
    for key in EXTRA:
        if body.get(key) is not None:
            options[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise Invalid("stop must be a string or a list of strings", "stop")
        options["stop"] = stop
    given = {key: _whole(body, key, 0, max_predict) for key in budget if key in body}
    given = {key: tokens for key, tokens in given.items() if tokens is not None}
    if len(set(given.values())) > 1:
        raise Invalid(f"{' and '.join(given)} differ: give one of them", budget[-1])
    if given:
        options["num_predict"] = next(iter(given.values()))
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, Mapping):
        raise Invalid("stream_options must be an object", "stream_options")
    return V1Request(
        options=options,
        n=_whole(body, "n", 1, MAX_CHOICES) or 1,
        stream=_flag(body, "stream"),
        include_usage=_flag(stream_options or {}, "include_usage", "stream_options"),
        format=response_format(body.get("response_format")),
    )


def response_format(raw: Any) -> Any:
    """Ollama's ``format`` of OpenAI's ``response_format``: None, ``"json"`` or the schema."""
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, dict):
            raise Invalid(
                "response_format.json_schema.schema must be a JSON schema (an object)",
                "response_format",
            )
        return schema
    raise Invalid(
        'response_format must be {"type": "text", "json_object" or "json_schema"}',
        "response_format",
    )


def _messages(raw: Any, model: str) -> list[dict[str, str]]:
    """Chat messages as :func:`protocol.render_chat` reads them: ``developer`` is ``system``,
    a list of text parts is their texts joined by newlines."""
    if not isinstance(raw, list) or not raw:
        raise Invalid("messages must be a non-empty list", "messages")
    out = []
    for message in raw:
        if not isinstance(message, Mapping):
            raise Invalid("each message must be an object with role and content", "messages")
        if message.get("tool_calls") not in EMPTY:
            raise Invalid(f'"{model}" does not support tools', "messages")
        role, content = message.get("role"), message.get("content")
        if isinstance(content, list):
            content = "\n".join(_part_text(part, model) for part in content)
        out.append({"role": "system" if role == "developer" else role, "content": content})
    try:
        protocol.render_chat(out)  # roles and content types checked once, where they are read
    except ValueError as exc:
        raise Invalid(str(exc), "messages") from None
    return out


def _part_text(part: Any, model: str) -> str:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return part["text"]
    if kind in ("image_url", "input_image"):
        raise Invalid(f'"{model}" does not support vision', "messages")
    if kind in ("input_audio", "file"):
        raise Invalid(f'"{model}" does not support {kind.replace("_", " ")}', "messages")
    raise Invalid('a content part must be {"type": "text", "text": "..."}', "messages")


def _flag(body: Mapping[str, Any], key: str, param: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise Invalid(f"{key} must be true or false", param or key)
    return value


def _whole(body: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = protocol.shorten(value)
        raise Invalid(f"{key} must be a whole number in {low}..{high}, got {shown}", key)
    return value


# ----------------------------------------------------------------------------- answers
def legacy_token(item: Mapping[str, Any]) -> str:
    """A token as legacy completions' logprobs name it: its text, or ``bytes:\\xNN`` for a
    byte that is not a character alone (as OpenAI writes such tokens)."""
    raw = bytes(item["bytes"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class Offsets:
    """``text_offset`` of legacy completions' logprobs: where each token starts, in
    characters of the choice's text as it is decoded (a byte that continues a character
    starts where the character does)."""

    def __init__(self, start: int = 0) -> None:
        self.at = start
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def legacy(self, items: list[Mapping[str, Any]]) -> dict[str, Any]:
        """Legacy logprobs of ``items`` (:func:`answer.logprob_json`'s), the next offsets."""
        offsets = []
        for item in items:
            offsets.append(self.at)
            self.at += len(self._decoder.decode(bytes(item["bytes"])))
        return {
            "tokens": [legacy_token(item) for item in items],
            "token_logprobs": [item["logprob"] for item in items],
            "top_logprobs": [
                {legacy_token(top): top["logprob"] for top in item["top_logprobs"]}
                for item in items
            ],
            "text_offset": offsets,
        }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


class Shape:
    """One answer's objects: the whole answer, or its events one piece at a time."""

    def __init__(self, chat: bool, model: str, fingerprint: str) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.head = {
            "id": self.id,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": fingerprint,
        }
        self.chunk_head = self.head | ({"object": "chat.completion.chunk"} if chat else {})

    def choice(self, index: int, text: str, reason: str | None, logprobs: Any) -> dict[str, Any]:
        """One choice: ``logprobs`` is chat's list of items or legacy's object (or None)."""
        if self.chat:
            message = {"role": "assistant", "content": text, "refusal": None}
            listed = None if logprobs is None else {"content": logprobs, "refusal": None}
            return {"index": index, "message": message, "logprobs": listed, "finish_reason": reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    def whole(self, choices: list[dict[str, Any]], used: dict[str, int]) -> dict[str, Any]:
        return self.head | {"choices": choices, "usage": used}

    def opening(self, index: int, echo: str) -> bytes:
        """The first event of a choice: chat's role, or the echoed prompt ("" for none)."""
        if self.chat:
            delta = {"role": "assistant", "content": ""}
            return event(self.chunk_head | {"choices": [self._delta(index, delta, None)]})
        if not echo:
            return b""
        return event(self.chunk_head | {"choices": [self.choice(index, echo, None, None)]})

    def piece_line(self, index: int, logprobs: bool) -> Callable[[str, Any], bytes]:
        """``line(text, logprobs)``: one piece's event, cut from a template (it runs once a
        token, on the generation thread); ``logprobs`` is the piece's chat items or legacy
        object when the request asked for them."""
        if self.chat:
            delta = {"content": _MARK}
            choice = self._delta(index, delta, None) | ({"logprobs": _MARK} if logprobs else {})
        else:
            choice = self.choice(index, _MARK, None, _MARK if logprobs else None)
        parts = event(self.chunk_head | {"choices": [choice]}).split(b'"\\u0001"')
        text = json.JSONEncoder(ensure_ascii=False).encode
        value = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        if self.chat and logprobs:
            head, middle, tail = parts
            return lambda piece, items: b"".join(
                (head, text(piece).encode(), middle, value({"content": items}).encode(), tail)
            )
        if logprobs:
            head, middle, tail = parts
            return lambda piece, items: b"".join(
                (head, text(piece).encode(), middle, value(items).encode(), tail)
            )
        head, tail = parts
        return lambda piece, items: b"".join((head, text(piece).encode(), tail))

    def finish(self, index: int, reason: str) -> bytes:
        """A choice's last event: its ``finish_reason`` (chat: with an empty delta)."""
        if self.chat:
            return event(self.chunk_head | {"choices": [self._delta(index, {}, reason)]})
        return event(self.chunk_head | {"choices": [self.choice(index, "", reason, None)]})

    def usage_event(self, used: dict[str, int]) -> bytes:
        """``stream_options.include_usage``'s last event: no choices, the usage."""
        return event(self.chunk_head | {"choices": [], "usage": used})

    @staticmethod
    def _delta(index: int, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
