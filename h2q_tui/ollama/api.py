"""What every endpoint of ``h2q-tui serve`` shares: :class:`ApiError` (Ollama's
``{"error": ...}`` with a status), a request's JSON body and its fields read and checked, and
the NDJSON response that cancels its generation however it ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from h2q_tui.ollama import protocol, replies
from h2q_tui.ollama.jobs import Job
from h2q_tui.ollama.models import Entry, Registry
from h2q_tui.units import first_line

MAX_BODY = 1 << 20  # bytes; far more than any prompt these models can read
SSE = "text/event-stream"  # the media type of a streamed /v1 answer


class ApiError(Exception):
    """A refused request: its status and one line; ``param`` names the field at fault (the
    /v1 routes' error object carries it)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def server_of(request: Request) -> Any:
    """The :class:`~h2q_tui.ollama.server.Server` whose app answers ``request``."""
    return request.app.state.server


def nanoseconds(seconds: float) -> int:
    """A duration as Ollama reports it: whole nanoseconds, never negative."""
    return max(0, int(round(seconds * 1e9)))


async def read_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object; 413 past ``limit`` bytes, 400 for anything but an object."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(
            413, f"request body of {int(length):,} bytes is over the {limit:,}-byte limit"
        )
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"request body is over the {limit:,}-byte limit")
    if not data.strip():
        raise ApiError(400, "missing request body")
    try:
        body = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"invalid JSON: {first_line(exc)}") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def model_entry(registry: Registry, body: dict[str, Any]) -> Entry:
    """The served model the body names (``model``, or the older ``name``); 400 or 404."""
    raw = body.get("model") or body.get("name")
    try:
        name = protocol.normalize_name(raw)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    entry = registry.get(name)
    if entry is None:
        raise ApiError(404, f"model '{raw}' not found")
    return entry


def keep_alive(body: dict[str, Any], default: float | None) -> float | None:
    """Seconds the model stays loaded after this request (None: forever)."""
    if body.get("keep_alive") is None:
        return default
    try:
        return protocol.parse_duration(body["keep_alive"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} must be true or false")
    return value


def text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string")
    return value


class NdjsonResponse(StreamingResponse):
    """NDJSON lines as they are made; the job (anything with ``cancel()``: a :class:`Job`,
    or the /v1 route's choices) is cancelled however the response ends."""

    media_type = replies.NDJSON

    def __init__(self, content: AsyncIterator[bytes], job: Job | Any = None) -> None:
        super().__init__(content, media_type=self.media_type)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.job is not None:
                self.job.cancel()


class EventStreamResponse(NdjsonResponse):
    """Server-sent events (the /v1 routes' streams) as they are made, cancelled the same way."""

    media_type = SSE


async def lines(objects: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The objects as NDJSON lines, for a :class:`NdjsonResponse` known in advance."""
    for obj in objects:
        yield replies.ndjson(obj)
