"""The endpoints that describe what is served: ``/`` ("Ollama is running"), ``/api/version``,
``/api/tags``, ``/api/ps``, ``/api/show`` and ``/api/pull`` (our models are local: a served
name "pulls" at once)."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from h2q_tui import __version__
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.ollama import api, fields, protocol
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.models import Entry, iso
from h2q_tui.ollama.replies import ModelInfo, PullProgress

FOREVER = "2318-01-01T00:00:00Z"  # expires_at of a model kept loaded forever (as Ollama shows it)


async def index(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    return JSONResponse({"version": __version__})


def _listing(entry: Entry) -> ModelInfo:
    return ModelInfo(
        name=entry.name,
        modified_at=iso(entry.modified_at or time.time()),
        size=entry.size,
        digest=entry.digest,
        details=entry.details(),
    )


async def tags(request: Request) -> Response:
    entries = api.server_of(request).registry.entries.values()
    listed = [_listing(e).to_json() for e in entries if e.info is not None]
    return JSONResponse({"models": listed})


async def ps(request: Request) -> Response:
    models = []
    for entry in api.server_of(request).registry.entries.values():
        if not entry.loaded:
            continue
        shown = _listing(entry)
        shown.expires_at = FOREVER if entry.expires_at is None else iso(entry.expires_at)
        shown.size_vram, shown.context_length = 0, entry.info.config.model.context
        models.append(shown.to_json())
    return JSONResponse({"models": models})


async def show(request: Request) -> Response:
    server = api.server_of(request)
    entry = api.model_entry(server.registry, await api.read_body(request, server.config.max_body))
    if entry.info is None:
        raise ApiError(500, f"{entry.name}: {entry.error}")
    context = entry.info.config.model.context
    parameters = _parameters(entry, context)
    modelfile = f"# {entry.describe} (h2q-tui serve)\nFROM {entry.info.weights}\n"
    modelfile += "".join(f"PARAMETER {line}\n" for line in parameters.splitlines())
    if entry.system:
        modelfile += f'SYSTEM """{entry.system}"""\n'
    shown = {"system": entry.system} if entry.system else {}
    return JSONResponse(
        {
            "modelfile": modelfile,
            "parameters": parameters,
            "template": protocol.CHAT_TEMPLATE,
            **shown,
            "details": entry.details(),
            "model_info": entry.model_info() | past_context(context),
            "capabilities": list(fields.CAPABILITIES),
            "modified_at": iso(entry.modified_at or time.time()),
        }
    )


async def pull(request: Request) -> Response:
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    stream = api.flag(body, "stream", True)
    try:
        entry = api.model_entry(server.registry, body)
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise ApiError(
            404, f"{exc.message}: h2q-tui serve serves local checkpoints, nothing to pull"
        ) from None
    steps = [
        PullProgress("pulling manifest"),
        PullProgress(
            "using local checkpoint",
            completed=entry.size,
            total=entry.size,
            digest=f"sha256:{entry.digest}",
        ),
        PullProgress("success"),
    ]
    if not stream:
        return JSONResponse(steps[-1].to_json())
    return api.NdjsonResponse(api.lines([step.to_json() for step in steps]))


def _parameters(entry: Entry, context: int) -> str:
    """Ollama's ``parameters`` text: the defaults a request gets, the model's own
    (``/api/create``) over the server's, one ``name value`` line each (``stop`` once per
    string, quoted)."""
    s = SamplingConfig()
    values: dict[str, Any] = {
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "repeat_penalty": s.repetition_penalty,
        "num_predict": protocol.DEFAULT_PREDICT,
        "num_ctx": context,
        "num_keep": 0,
    }
    values |= entry.default_options
    lines = []
    for name, value in values.items():
        for one in value if isinstance(value, list) else [value]:
            lines.append(f"{name} {json.dumps(one) if isinstance(one, str) else one}")
    return "\n".join(lines)


def past_context(context: int) -> dict[str, str]:
    """What happens past the model's context, as ``/api/show``'s ``model_info`` states it."""
    return {
        "h2q.truncate": (
            f"a chat longer than {context} tokens drops its oldest messages (not the system "
            f"ones, not the last); a prompt still longer keeps its first num_keep tokens "
            f"(default 0) and its last ones, {context} in all (truncate true, the default); "
            "truncate false: 400"
        ),
        "h2q.shift": (
            f"past {context} tokens of prompt and reply the window jumps on by {context // 2} "
            "tokens (shift true, the default; positions are learned, the window cannot slide "
            "by one); shift false: the reply stops there, done_reason length"
        ),
    }
