"""The top-level fields of ``/api/generate`` and ``/api/chat`` beside the prompt and the
options, read and checked before a model loads: ``format``, ``logprobs``/``top_logprobs``,
``truncate``/``shift``, and the ones these models cannot do (``suffix``, ``tools``,
``think``, ``images``, ``template``), refused with Ollama's words. Fields Ollama does not
document are ignored, as Ollama ignores them.
"""

from __future__ import annotations

import json
from typing import Any

from h2q_tui.generation.constraint import MAX_TOP_LOGPROBS
from h2q_tui.generation.grammar import check_schema
from h2q_tui.ollama import api
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.protocol import shorten

THINK_LEVELS = ("high", "medium", "low", "max")  # Ollama's thinking levels
CAPABILITIES = ("completion", "embedding")  # what /api/show lists: all that is real here


def refuse_unsupported(body: dict[str, Any], name: str, chat: bool) -> None:
    """400 for a field asking for a capability these models lack, in Ollama's words
    (``<name> does not support insert|tools|vision``, ``"<model>" does not support
    thinking``); an empty value (``suffix: ""``, ``tools: []``, ``think: false``) asks for
    nothing and passes."""
    if not chat and api.text(body, "suffix"):
        raise ApiError(400, f"{name} does not support insert")
    if chat and _items(body, "tools"):
        raise ApiError(400, f"{name} does not support tools")
    if _thinks(body.get("think")):
        raise ApiError(400, f"{json.dumps(body.get('model') or name)} does not support thinking")
    if not chat and _items(body, "images"):
        raise ApiError(400, f"{name} does not support vision")
    messages = body.get("messages") if chat else None
    if isinstance(messages, list) and any(
        isinstance(m, dict) and _items(m, "images") for m in messages
    ):
        raise ApiError(400, f"{name} does not support vision")
    if not chat and api.text(body, "template"):
        raise ApiError(
            400,
            "template is not supported: these models have no prompt template (send the prompt "
            'as the model should read it, with "raw": true)',
        )


def _items(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if not isinstance(value, list):
        raise ApiError(400, f"{key} must be a list")
    return len(value)


def _thinks(value: Any) -> bool:
    """Whether ``think`` asks for thinking (true or a level); 400 for another value."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise ApiError(
                400,
                f'invalid think value: {shorten(value)} (must be "high", "medium", "low", '
                '"max", true, or false)',
            )
        return True
    raise ApiError(
        400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def read_format(body: dict[str, Any]) -> Any:
    """``format``: None (absent, null or ""), ``"json"`` or a JSON schema (checked against
    its meta-schema); 400 in Ollama's words for anything else, one line for a bad schema."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return value
    if not isinstance(value, dict):
        raise ApiError(
            400,
            f'invalid format: {shorten(value)}; expected "json" or a valid JSON Schema object',
        )
    try:
        return check_schema(value)
    except ValueError as exc:
        raise ApiError(400, f"invalid format: {str(exc).splitlines()[0]}") from None


def read_logprobs(body: dict[str, Any]) -> int | None:
    """Alternatives per token (0..20) when ``logprobs`` is true, else None; 400 for
    ``top_logprobs`` outside 0..20 (Ollama's words) or not an integer."""
    top = body.get("top_logprobs")
    if top is None:
        top = 0
    elif isinstance(top, bool) or not isinstance(top, int):
        raise ApiError(400, f"top_logprobs must be an integer, got {shorten(top)}")
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    return top if api.flag(body, "logprobs", False) else None
