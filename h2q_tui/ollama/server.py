"""``h2q-tui serve``: our models behind Ollama's HTTP API (Starlette on uvicorn).

Endpoints: ``GET``/``HEAD /`` ("Ollama is running"), ``/api/version``, ``/api/tags``,
``/api/ps``, ``POST /api/show``, ``/api/generate``, ``/api/chat``, ``/api/embed``, the legacy
``/api/embeddings`` and ``/api/pull`` (our models are local: a served name "pulls" at once).

- Streaming is the default: NDJSON (``application/x-ndjson``), one object and ``\\n`` per
  piece of text the generator releases (a token, or a few when a UTF-8 character or a
  possible stop string was held back), each sent as it is made; ``"stream": false`` gives
  one object. The final object has ``done_reason`` (stop/length/load/unload) and the measured
  ``total_duration``, ``load_duration``, ``prompt_eval_count``, ``prompt_eval_duration``,
  ``eval_count``, ``eval_duration``, integer nanoseconds. ``prompt_eval_duration`` is the
  time to the first token (prompt forward + steering set-up), ``eval_duration`` the rest;
  ``load_duration`` what this request spent loading (or, with ``--follow``, swapping in) the
  model: microseconds when it was already loaded.
- The OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``, ``/v1/models``, ``/v1/models/{id}``) translate into the same
  generation (:mod:`~h2q_tui.ollama.v1`); they stream server-sent events and answer errors
  with OpenAI's error object.
- Errors as Ollama gives them: ``{"error": "..."}`` with 400 (bad JSON, missing model, bad
  options), 404 (``model 'x' not found``), 413 (a body over the limit), 503 (the model's
  queue is full), 500 (a load that failed); once streaming has begun a failure is one
  ``{"error": ...}`` line, status 200.
- Each generation runs on a thread of its own that ends with the request
  (h2q_tui/system/threads.py: no OpenMP team outlives its work), decoding on one torch thread
  (``use_decoding_threads``). A client that disconnects cancels its generation before the
  next token. Requests to one model queue (one generates, ``--queue`` wait, the next gets
  503); requests to different models run side by side.
- Models load on first use and unload ``keep_alive`` after their last request (the server's
  ``--keep-alive`` unless a request gives its own; negative: never; 0: right away).

Here: the app (its routes and error handlers) and its state, the models' queue and keep-alive.
The endpoints are in :mod:`~h2q_tui.ollama.catalog`, :mod:`~h2q_tui.ollama.completion` and
:mod:`~h2q_tui.ollama.embed`; the generation threads in :mod:`~h2q_tui.ollama.jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from h2q_tui.errors import UserError
from h2q_tui.ollama import api, catalog, completion, embed, manage, protocol, v1
from h2q_tui.ollama.api import ApiError
from h2q_tui.ollama.jobs import Job, run_thread
from h2q_tui.ollama.models import Entry, Lease, Registry
from h2q_tui.units import first_line

GET, POST = ["GET", "HEAD"], ["POST"]
ROUTES = [  # path, endpoint, methods
    ("/", catalog.index, GET),
    ("/api/version", catalog.version, GET),
    ("/api/tags", catalog.tags, GET),
    ("/api/ps", catalog.ps, GET),
    ("/api/show", catalog.show, POST),
    ("/api/generate", completion.generate, POST),
    ("/api/chat", completion.chat, POST),
    ("/api/embed", embed.embed, POST),
    ("/api/embeddings", embed.embeddings, POST),
    ("/api/pull", catalog.pull, POST),
    ("/api/create", manage.create, POST),
    ("/api/copy", manage.copy, POST),
    ("/api/delete", manage.delete, ["DELETE"]),
    ("/api/swap", manage.swap, POST),
    ("/v1/chat/completions", v1.chat_completions, POST),
    ("/v1/completions", v1.completions, POST),
    ("/v1/embeddings", v1.embeddings, POST),
    ("/v1/models", v1.models, GET),
    ("/v1/models/{id:path}", v1.model, GET),
]


@dataclass
class ServeConfig:
    keep_alive: float | None = 300.0  # seconds; None: forever
    queue: int = 32  # requests that may wait for one model
    max_predict: int = protocol.MAX_PREDICT
    max_body: int = api.MAX_BODY
    device: Any = None  # torch device for the models (None: CPU)
    dequantize: bool = False  # crystallized models on float weights, not their integers


class Server:
    """The app's state: the registry, its settings, the jobs running now; the endpoints reach
    it as ``request.app.state.server``."""

    def __init__(self, registry: Registry, config: ServeConfig | None = None) -> None:
        self.registry, self.config = registry, config or ServeConfig()
        for entry in registry.entries.values():
            entry.gate.limit = self.config.queue
        self.jobs: set[Job] = set()
        self.direct_streams = 0  # streams whose pieces the generation thread wrote itself
        self.ended: deque[tuple[str, str]] = deque(maxlen=200)  # (thread, stop reason)
        self._reaper: asyncio.Task | None = None
        self.app = Starlette(
            routes=[Route(path, endpoint, methods=methods) for path, endpoint, methods in ROUTES],
            exception_handlers={
                ApiError: self._api_error,
                HTTPException: self._http_error,
                Exception: self._server_error,
            },
            lifespan=self._lifespan,
        )
        self.app.state.server = self

    # ------------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self._reaper = asyncio.create_task(self._reap())
        try:
            yield
        finally:
            self._reaper.cancel()
            for job in list(self.jobs):
                job.cancel()

    async def _reap(self) -> None:
        """Unload models whose keep-alive has passed (never one a request holds or awaits)."""
        while True:
            self.unload_expired()
            await asyncio.sleep(0.2)

    def unload_expired(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        gone = []
        for entry in self.registry.entries.values():
            if entry.loaded and not entry.gate.busy and entry.expires_at is not None:
                if entry.expires_at <= now:
                    entry.unload()
                    gone.append(entry.name)
        return gone

    # ------------------------------------------------------------------ one request's model
    async def hold(self, entry: Entry) -> tuple[Lease, float]:
        """Wait for the model (503 when its queue is full), load it; (lease, load seconds)."""
        lease = entry.gate.reserve()
        if lease is None:
            raise ApiError(503, protocol.BUSY)
        try:
            await lease.acquire()
            try:
                load_s, _ = await run_thread(
                    entry.ensure_loaded, self.config.device, self.config.dequantize
                )
            except UserError as exc:
                raise ApiError(500, f"cannot load {entry.name}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a load failure is one line for the client
                raise ApiError(500, f"cannot load {entry.name}: {_described(exc)}") from None
        except BaseException:
            lease.release()
            raise
        return lease, load_s

    def request_done(self, entry: Entry, lease: Lease, keep_alive: float | None) -> None:
        lease.release()
        if not entry.loaded:
            return
        entry.expires_at = None if keep_alive is None else time.time() + keep_alive
        if keep_alive == 0 and not entry.gate.busy:
            entry.unload()

    def start(self, job: Job) -> None:
        self.jobs.add(job)
        job.start()

    def job_ended(self, job: Job) -> None:
        """A generation's thread is done: free its model, keep its stop reason."""
        self.jobs.discard(job)
        self.ended.append((job.thread.name, job.generation.stats.stop_reason))
        self.request_done(job.entry, job.lease, job.keep_alive)

    # ------------------------------------------------------------------ errors
    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(request, exc.status, exc.message, exc.param)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        text = {404: "404 page not found", 405: "405 method not allowed"}.get(
            status, str(exc.detail)
        )
        if status == 404 and v1.is_v1(request):
            text = f"invalid URL ({request.method} {request.url.path})"
        return _error(request, status, text)

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        return _error(request, 500, f"internal error: {_described(exc)}")


def _error(request: Request, status: int, message: str, param: str | None = None) -> Response:
    """Ollama's ``{"error": "..."}``, or OpenAI's error object on a /v1 path."""
    if v1.is_v1(request):
        return v1.error_response(status, message, param)
    return JSONResponse({"error": message}, status_code=status)


def _described(exc: BaseException) -> str:
    """``Type: first line`` of an exception (its type alone when it says nothing)."""
    name, reason = type(exc).__name__, first_line(exc)
    return name if reason == name else f"{name}: {reason}"


def make_app(registry: Registry, config: ServeConfig | None = None) -> Starlette:
    """The Starlette app of ``h2q-tui serve`` (``app.state.server`` is its :class:`Server`)."""
    return Server(registry, config).app
