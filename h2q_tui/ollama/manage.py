"""Model management: Ollama's ``POST /api/create``, ``POST /api/copy`` and ``DELETE /api/delete``,
and our ``POST /api/swap`` (a served name pointed at another checkpoint between requests).

``from`` (create, swap) is a served name, or a path holding a ``/`` to a checkpoint, run dir
or crystallized folder inside the allowed roots (:class:`~h2q_tui.ollama.registry_file.Roots`).
A name made or replaced here is kept in the registry file
(:mod:`~h2q_tui.ollama.registry_file`); a command-line name changed here (deleted, replaced,
swapped) is changed until serve stops. A name deleted or replaced while requests use it keeps
serving them: they hold its entry, which is freed once they end (Ollama, too, lets them
finish).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from h2q_tui.errors import UserError
from h2q_tui.ollama import api, protocol
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.jobs import run_thread
from h2q_tui.ollama.models import Entry, Gate, Registry
from h2q_tui.ollama.registry_file import (
    Names,
    Refused,
    Roots,
    check_parameters,
    read_entry,
    target_of,
)
from h2q_tui.units import first_line

_NO_BLOBS = "h2q-tui serve serves checkpoints on this machine: give 'from' a name or a path"
REFUSED = {  # /api/create's fields we cannot do, and why
    "files": f"files are not supported: {_NO_BLOBS}",
    "adapters": f"adapters are not supported: {_NO_BLOBS}",
    "quantize": "quantize is not supported: h2q-tui crystallize makes quantized checkpoints "
    "(--method int8, ...); create from the crystallized folder",
    "template": "template is not supported: the prompt template is fixed (see /api/show)",
    "renderer": "renderer is not supported: the prompt template is fixed (see /api/show)",
    "parser": "parser is not supported: replies are plain text",
    "license": "license is not supported: a checkpoint here carries no license",
    "messages": "messages are not supported: send a conversation with /api/chat",
}


def names_of(server: Any) -> Names:
    """The server's :class:`Names`; a server made without serve's command line gets one in
    memory whose roots are its models' folders."""
    registry = server.registry
    if registry.names is None:
        paths = [e.path for e in registry.entries.values()]
        registry.names = Names(Roots(p if p.is_dir() else p.parent for p in paths))
    return registry.names


def _name(raw: Any, key: str) -> str:
    try:
        return protocol.normalize_name(raw)
    except ValueError as exc:
        raise ApiError(400, f"{key} is required" if not raw else f"{key}: {exc}") from None


def _source(server: Any, raw: Any) -> tuple[Entry | None, Path]:
    """(the served entry or None, the path) that ``from`` names; 400 or 404."""
    if not isinstance(raw, str) or not raw:
        raise ApiError(400, "from is required: a served model's name or a checkpoint path")
    if "/" not in raw:
        entry = server.registry.get(_name(raw, "from"))
        if entry is None:
            raise ApiError(404, f"model '{raw}' not found (a checkpoint path holds a '/': ./{raw})")
        return entry, entry.path
    try:
        return None, names_of(server).roots.check(raw)
    except Refused as exc:
        raise ApiError(400, str(exc)) from None
    except FileNotFoundError as exc:
        raise ApiError(404, str(exc)) from None


def _replace(server: Any, entry: Entry) -> None:
    """``entry`` served under its name from now on, in place of any entry of that name."""
    registry: Registry = server.registry
    old = registry.get(entry.name)
    if old is not None:
        _remove(server, old)
    registry.entries[entry.name] = entry
    names_of(server).put(entry)


def _remove(server: Any, entry: Entry) -> None:
    """``entry`` no longer served: requests holding it finish (its model is freed after)."""
    del server.registry.entries[entry.name]
    names_of(server).drop(entry.name)
    if not entry.gate.busy:
        entry.unload()


def _parameters(body: dict[str, Any], max_predict: int) -> dict[str, Any]:
    raw = body.get("parameters")
    if raw is not None and not isinstance(raw, dict):
        raise ApiError(400, "parameters must be an object of options")
    try:
        return check_parameters(raw, max_predict)
    except ValueError as exc:
        raise ApiError(400, f"parameters: {exc}") from None


async def create(request: Request) -> Response:
    """``POST /api/create``: a new ``name:tag`` from a served name or a checkpoint path, with
    default options (``parameters``) and a system prompt; an existing name is replaced."""
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    stream = api.flag(body, "stream", True)
    for key, why in REFUSED.items():
        if body.get(key) not in (None, "", [], {}):
            raise ApiError(400, why)
    name = _name(body.get("model") or body.get("name"), "model")
    served, path = _source(server, body.get("from"))
    defaults = _parameters(body, server.config.max_predict)
    system = None if body.get("system") is None else api.text(body, "system")
    if served is not None:  # as Ollama: what the new name is made from, then what it changes
        defaults = {**served.default_options, **defaults}
        system = served.system if system is None else system
    try:
        entry = await run_thread(
            read_entry, name, path, server.config.queue, system or "", defaults
        )
    except UserError as exc:
        raise ApiError(400, str(exc)) from None
    entry.follow = served is not None and served.follow
    _replace(server, entry)
    kept = "writing registry" if names_of(server).path else "kept in memory (no registry file)"
    steps = [
        {"status": "reading model metadata"},
        {"status": f"using {entry.describe} ({entry.info.weights.parent})"},
        {"status": kept},
        {"status": "success"},
    ]
    if not stream:
        return JSONResponse(steps[-1])
    return api.NdjsonResponse(api.lines(steps))


async def copy(request: Request) -> Response:
    """``POST /api/copy``: ``destination`` serves what ``source`` serves (200, empty)."""
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    source_name = _name(body.get("source"), "source")
    destination = _name(body.get("destination"), "destination")
    source = server.registry.get(source_name)
    if source is None:
        raise ApiError(404, f"model '{body['source']}' not found")
    if server.registry.get(destination) is source:
        return Response(status_code=200)
    entry = Entry(
        destination,
        source.path,
        follow=source.follow,
        gate=Gate(server.config.queue),
        default_options=dict(source.default_options),
        system=source.system,
    )
    if source.info is not None:
        entry.refresh(source.info)
    entry.error = source.error
    _replace(server, entry)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    """``DELETE /api/delete``: the name is gone (200); requests using it finish first."""
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    _remove(server, api.model_entry(server.registry, body))
    return Response(status_code=200)


async def swap(request: Request) -> Response:
    """``POST /api/swap``: ``model`` serves the checkpoint ``from`` names from its next
    request on; requests already holding it finish on the old weights.

    The new weights load on a thread of their own first, then the swap waits for the model's
    gate (the requests ahead of it) and switches at once, so requests wait only for that.
    """
    started = time.perf_counter()
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    entry = api.model_entry(server.registry, body)
    _, path = _source(server, body.get("from"))
    try:
        fresh = Entry(entry.name, target_of(path))
        load_s, _ = await run_thread(
            fresh.ensure_loaded, server.config.device, server.config.dequantize
        )
    except UserError as exc:
        raise ApiError(400, f"cannot load {body['from']}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a failed load is one line; the old model stays
        why = f"{type(exc).__name__}: {first_line(exc)}"
        raise ApiError(500, f"cannot load {body['from']}: {why}") from None
    lease = entry.gate.reserve()
    if lease is None:
        raise ApiError(503, protocol.BUSY)
    waited = time.perf_counter()
    try:
        await lease.acquire()
        wait_s = time.perf_counter() - waited
        if server.registry.get(entry.name) is not entry:
            raise ApiError(404, f"model '{entry.name}' was deleted or replaced during the swap")
        previous = entry.info.step if entry.info is not None else None
        entry.adopt(fresh)
    finally:
        server.request_done(entry, lease, server.config.keep_alive)
    if entry.name in names_of(server).records:
        names_of(server).put(entry)
    return JSONResponse(
        {
            "model": entry.name,
            "from": str(entry.info.weights.parent),
            "step": entry.info.step,
            "previous_step": previous,
            "describe": entry.describe,
            "load_duration": api.nanoseconds(load_s),
            "wait_duration": api.nanoseconds(wait_s),
            "total_duration": api.nanoseconds(time.perf_counter() - started),
        }
    )
