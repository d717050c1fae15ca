"""``/api/embed`` and the older ``/api/embeddings``: the mean final hidden state of each
input, unit length (as Ollama's embed gives them), computed on a thread of its own."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from h2q_kernels.hamiltonian import frozen_weights
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from h2q_tui.generation.generate import use_decoding_threads
from h2q_tui.models.common import DecodeState
from h2q_tui.ollama import api
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.jobs import run_thread
from h2q_tui.ollama.models import Entry


async def embed(request: Request) -> Response:
    started = time.perf_counter()
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    entry = api.model_entry(server.registry, body)
    keep_alive = api.keep_alive(body, server.config.keep_alive)
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw or []
    if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
        raise ApiError(400, "input must be a string or a list of strings")
    inputs = [s for s in inputs if s]
    truncate = api.flag(body, "truncate", True)
    vectors, tokens, load_s = await unit_vectors(
        server, entry, inputs, truncate, keep_alive, body.get("dimensions")
    )
    return JSONResponse(
        {
            "model": entry.name,
            "embeddings": vectors,
            "total_duration": api.nanoseconds(time.perf_counter() - started),
            "load_duration": api.nanoseconds(load_s),
            "prompt_eval_count": tokens,
        }
    )


async def embeddings(request: Request) -> Response:
    server = api.server_of(request)
    body = await api.read_body(request, server.config.max_body)
    entry = api.model_entry(server.registry, body)
    keep_alive = api.keep_alive(body, server.config.keep_alive)
    prompt = api.text(body, "prompt")
    vectors, _, _ = await _vectors(server, entry, [prompt] if prompt else [], True, keep_alive)
    return JSONResponse({"embedding": vectors[0] if vectors else []})


async def unit_vectors(
    server, entry: Entry, inputs: list[str], truncate: bool, keep_alive, dimensions: Any
) -> tuple[list[list[float]], int, float]:
    """(vectors, tokens read, load seconds) of ``inputs``: each cut to its first
    ``dimensions`` (None: all), then made unit length; shared by /api/embed and /v1."""
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise ApiError(400, "dimensions must be a whole number ≥ 1", "dimensions")
    vectors, tokens, load_s = await _vectors(server, entry, inputs, truncate, keep_alive)
    if dimensions is not None:
        if vectors and dimensions > len(vectors[0]):
            raise ApiError(400, f"dimensions must be at most {len(vectors[0])}", "dimensions")
        vectors = [v[:dimensions] for v in vectors]
    return [_unit(v) for v in vectors], tokens, load_s


async def _vectors(server, entry: Entry, inputs: list[str], truncate: bool, keep_alive):
    lease, load_s = await server.hold(entry)
    try:
        vectors, tokens = await run_thread(
            mean_hidden, entry.model, entry.codec, inputs, truncate, name="h2q-serve-embed"
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    finally:
        server.request_done(entry, lease, keep_alive)
    return vectors, tokens, load_s


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def mean_hidden(model, codec, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
    """The mean final hidden state of each text (its first ``context`` tokens), and the
    tokens read. ValueError when a text is longer than the context and ``truncate`` is off."""
    use_decoding_threads()
    context = model.config.context
    device = next(model.parameters()).device
    vectors, tokens = [], 0
    with torch.no_grad(), frozen_weights(model):
        for text in texts:
            ids = codec.encode(text)
            if len(ids) > context:
                if not truncate:
                    raise ValueError(
                        f"input length {len(ids)} exceeds the context length {context}"
                    )
                ids = ids[:context]
            state = DecodeState()
            model(torch.tensor([ids], device=device), state=state)
            vectors.append(state.hidden[0].float().mean(dim=0).cpu().tolist())
            tokens += len(ids)
    return vectors, tokens
