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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from h2q_tui import __version__
from h2q_tui.errors import UserError
from h2q_tui.ollama import direct, protocol
from h2q_tui.ollama.models import Entry, Lease, Registry, iso

MAX_BODY = 1 << 20  # bytes; far more than any prompt these models can read
DEFAULT_PREDICT = 200  # num_predict when a request gives none (h2q-tui generate's default)
# the sampler's settings by the names of Ollama's options
OPTION_NAMES = {"repetition_penalty": "repeat_penalty", "max_new_tokens": "num_predict"}
FOREVER = "2318-01-01T00:00:00Z"  # expires_at of a model kept loaded forever (as Ollama shows it)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ServeConfig:
    keep_alive: float | None = 300.0  # seconds; None: forever
    queue: int = 32  # requests that may wait for one model
    max_predict: int = protocol.MAX_PREDICT
    max_body: int = MAX_BODY
    device: Any = None  # torch device for the models (None: CPU)


def run_thread(fn: Callable[..., Any], *args: Any, name: str = "h2q-serve-load") -> asyncio.Future:
    """``fn(*args)`` on a new thread that ends with it; the future resolves on this loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
                loop.call_soon_threadsafe(settle, False, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class Job:
    """One generation on a thread of its own; its pieces reach the client one of two ways.

    Through the loop: the thread appends each piece to a deque and wakes the loop only when
    it is not already woken, so the loop drains whatever has arrived in one go (one write of
    several NDJSON lines, each still one object per piece, none held back). Direct (after
    ``go_direct``): the thread writes each piece's line to the socket itself
    (h2q_tui/ollama/direct.py) and wakes the loop only for the end or an error.
    """

    counter = 0

    def __init__(
        self, server: Server, entry: Entry, lease: Lease, generation, keep_alive,
        wake_per_piece: bool = True,
    ) -> None:  # fmt: skip
        Job.counter += 1
        self.server, self.entry, self.lease = server, entry, lease
        self.generation, self.keep_alive = generation, keep_alive
        self.loop = asyncio.get_running_loop()
        self._items: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._woken = False
        self._ready = asyncio.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"h2q-serve-generate-{Job.counter}", daemon=True
        )
        self.finished = False
        # "stream": false reads the pieces only at the end: waking the event loop for each
        # would take the GIL from the decoder once a token for nothing
        self.wake_per_piece = wake_per_piece
        self._ended_event = asyncio.Event()  # set once request_done ran (keep-alive applied)
        self._writer: direct.ChunkWriter | None = None  # set by go_direct, then thread-owned
        self._line: Callable[..., bytes] | None = None
        self._pending = b""  # lines queued before go_direct, written first
        self._over = False  # the thread has ended: no going direct any more

    def start(self) -> None:
        self.server.jobs.add(self)
        self.thread.start()

    def cancel(self) -> None:
        self.generation.cancel()  # before its next token; the thread then ends

    def go_direct(self, writer: direct.ChunkWriter, line: Callable[..., bytes]) -> bool:
        """Hand the socket to the generation thread (False: keep streaming through the loop,
        and the writer is closed). Pieces already queued go out first, in order."""
        with self._lock:
            if self._over or any(kind != "piece" for kind, _ in self._items):
                writer.close()
                return False
            stamp = iso(time.time()).encode()  # they leave in one write: one time
            self._pending = b"".join(line(value, stamp) for _, value in self._items)
            self._items.clear()
            self._writer, self._line = writer, line
            return True

    def _put(self, item: tuple[str, Any]) -> None:
        with self._lock:
            writer = self._writer if item[0] == "piece" else None
            if writer is None:
                self._items.append(item)
                if self._woken or (item[0] == "piece" and not self.wake_per_piece):
                    return
                self._woken = True
        if writer is not None:  # this thread alone writes once direct
            payload, self._pending = self._pending + self._line(item[1]), b""
            if not writer.write(payload):
                self.generation.cancel()  # the client went away
            return
        try:
            self.loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: nobody is listening
            self.generation.cancel()

    def _run(self) -> None:
        from h2q_tui.generation.generate import use_decoding_threads

        use_decoding_threads()
        try:
            for piece in self.generation:
                self._put(("piece", piece))
            self._put(("done", None))
        except Exception as exc:  # noqa: BLE001 - one error line for the client
            self._put(("error", f"generation failed: {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._over = True
                writer, self._writer = self._writer, None
            if writer is not None:
                if self._pending:  # queued before going direct, and nothing came after
                    writer.write(self._pending)
                writer.close()
            try:
                self.loop.call_soon_threadsafe(self._ended)
            except RuntimeError:
                pass

    def _ended(self) -> None:
        self.finished = True
        self.server.jobs.discard(self)
        self.server.ended.append((self.thread.name, self.generation.stats.stop_reason))
        self.server.request_done(self.entry, self.lease, self.keep_alive)
        self._ended_event.set()

    async def ended(self) -> None:
        """Wait until the thread is done and the model's keep-alive is applied, so that a
        client reading the final object sees /api/ps as it now is (keep_alive 0: unloaded)."""
        await self._ended_event.wait()

    async def next_batch(self) -> list[tuple[str, Any]]:
        """What arrived since the last call (waits for at least one item)."""
        await self._ready.wait()
        self._ready.clear()
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._woken = False
        return items

    async def batches(self) -> AsyncIterator[list[tuple[str, Any]]]:
        while True:
            items = await self.next_batch()
            yield items
            if any(kind != "piece" for kind, _ in items):
                return


class NdjsonResponse(StreamingResponse):
    """NDJSON lines as they are made; the job is cancelled however the response ends."""

    media_type = protocol.NDJSON

    def __init__(self, content, job: Job | None = None) -> None:
        super().__init__(content, media_type=protocol.NDJSON)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.job is not None:
                self.job.cancel()


async def _one_line(obj: dict[str, Any]) -> AsyncIterator[bytes]:
    yield protocol.ndjson(obj)


def _ns(seconds: float) -> int:
    return max(0, int(round(seconds * 1e9)))


class Server:
    """The app's state: the registry, its settings, the jobs running now."""

    def __init__(self, registry: Registry, config: ServeConfig | None = None) -> None:
        self.registry, self.config = registry, config or ServeConfig()
        for entry in registry.entries.values():
            entry.gate.limit = self.config.queue
        self.jobs: set[Job] = set()
        self.direct_streams = 0  # streams whose pieces the generation thread wrote itself
        self.ended: deque[tuple[str, str]] = deque(maxlen=200)  # (thread, stop reason)
        self._reaper: asyncio.Task | None = None
        self.app = Starlette(
            routes=[
                Route("/", self.index, methods=["GET", "HEAD"]),
                Route("/api/version", self.version, methods=["GET", "HEAD"]),
                Route("/api/tags", self.tags, methods=["GET", "HEAD"]),
                Route("/api/ps", self.ps, methods=["GET", "HEAD"]),
                Route("/api/show", self.show, methods=["POST"]),
                Route("/api/generate", self.generate, methods=["POST"]),
                Route("/api/chat", self.chat, methods=["POST"]),
                Route("/api/embed", self.embed, methods=["POST"]),
                Route("/api/embeddings", self.embeddings, methods=["POST"]),
                Route("/api/pull", self.pull, methods=["POST"]),
            ],
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

    def request_done(self, entry: Entry, lease: Lease, keep_alive: float | None) -> None:
        lease.release()
        if not entry.loaded:
            return
        entry.expires_at = None if keep_alive is None else time.time() + keep_alive
        if keep_alive == 0 and not entry.gate.busy:
            entry.unload()

    # ------------------------------------------------------------------ errors
    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = {404: "404 page not found", 405: "405 method not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        return JSONResponse({"error": text}, status_code=exc.status_code)

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        text = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
        return JSONResponse({"error": f"internal error: {message}"}, status_code=500)

    # ------------------------------------------------------------------ request parts
    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body
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
            raise ApiError(400, f"invalid JSON: {str(exc).splitlines()[0][:200]}") from None
        except RecursionError:
            raise ApiError(400, "invalid JSON: nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def _entry(self, body: dict[str, Any]) -> Entry:
        raw = body.get("model") or body.get("name")
        try:
            name = protocol.normalize_name(raw)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        entry = self.registry.get(name)
        if entry is None:
            raise ApiError(404, f"model '{raw}' not found")
        return entry

    def _keep_alive(self, body: dict[str, Any]) -> float | None:
        if body.get("keep_alive") is None:
            return self.config.keep_alive
        try:
            return protocol.parse_duration(body["keep_alive"])
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    @staticmethod
    def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
        value = body.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ApiError(400, f"{key} must be true or false")
        return value

    @staticmethod
    def _text(body: dict[str, Any], key: str) -> str:
        value = body.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ApiError(400, f"{key} must be a string")
        return value

    async def _hold(self, entry: Entry) -> tuple[Lease, float]:
        """Wait for the model (503 when its queue is full), load it; (lease, load seconds)."""
        lease = entry.gate.reserve()
        if lease is None:
            raise ApiError(503, protocol.BUSY)
        try:
            await lease.acquire()
            try:
                load_s, _ = await run_thread(entry.ensure_loaded, self.config.device)
            except UserError as exc:
                raise ApiError(500, f"cannot load {entry.name}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a load failure is one line for the client
                raise ApiError(
                    500, f"cannot load {entry.name}: {type(exc).__name__}: {str(exc)[:200]}"
                ) from None
        except BaseException:
            lease.release()
            raise
        return lease, load_s

    # ------------------------------------------------------------------ small endpoints
    async def index(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": __version__})

    def _listing(self, entry: Entry) -> dict[str, Any]:
        return {
            "name": entry.name,
            "model": entry.name,
            "modified_at": iso(entry.modified_at or time.time()),
            "size": entry.size,
            "digest": entry.digest,
            "details": entry.details(),
        }

    async def tags(self, request: Request) -> Response:
        listed = [self._listing(e) for e in self.registry.entries.values() if e.info is not None]
        return JSONResponse({"models": listed})

    async def ps(self, request: Request) -> Response:
        models = []
        for entry in self.registry.entries.values():
            if not entry.loaded:
                continue
            expires = FOREVER if entry.expires_at is None else iso(entry.expires_at)
            models.append(
                {
                    **self._listing(entry),
                    "expires_at": expires,
                    "size_vram": 0,
                    "context_length": entry.info.config.model.context,
                }
            )
        return JSONResponse({"models": models})

    async def show(self, request: Request) -> Response:
        entry = self._entry(await self._body(request))
        if entry.info is None:
            raise ApiError(500, f"{entry.name}: {entry.error}")
        from h2q_tui.generation.sampling import SamplingConfig

        s = SamplingConfig()
        parameters = (
            f"temperature {s.temperature}\ntop_k {s.top_k}\ntop_p {s.top_p}\n"
            f"repeat_penalty {s.repetition_penalty}\nnum_predict {DEFAULT_PREDICT}\n"
            f"num_ctx {entry.info.config.model.context}"
        )
        return JSONResponse(
            {
                "modelfile": f"# {entry.describe} (h2q-tui serve)\nFROM {entry.info.weights}\n",
                "parameters": parameters,
                "template": protocol.CHAT_TEMPLATE,
                "details": entry.details(),
                "model_info": entry.model_info(),
                "capabilities": ["completion", "embedding"],
                "modified_at": iso(entry.modified_at or time.time()),
            }
        )

    async def pull(self, request: Request) -> Response:
        body = await self._body(request)
        stream = self._flag(body, "stream", True)
        try:
            entry = self._entry(body)
        except ApiError as exc:
            if exc.status != 404:
                raise
            raise ApiError(
                404, f"{exc.message}: h2q-tui serve serves local checkpoints, nothing to pull"
            ) from None
        steps = [
            {"status": "pulling manifest"},
            {
                "status": "using local checkpoint",
                "digest": f"sha256:{entry.digest}",
                "total": entry.size,
                "completed": entry.size,
            },
            {"status": "success"},
        ]
        if not stream:
            return JSONResponse(steps[-1])

        async def lines() -> AsyncIterator[bytes]:
            for step in steps:
                yield protocol.ndjson(step)

        return NdjsonResponse(lines())

    # ------------------------------------------------------------------ generation
    async def generate(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def _complete(self, request: Request, chat: bool) -> Response:
        started = time.perf_counter()
        body = await self._body(request)
        entry = self._entry(body)
        stream = self._flag(body, "stream", True)
        keep_alive = self._keep_alive(body)
        try:
            options = protocol.parse_options(body.get("options"), self.config.max_predict)
            settings = self._settings(options, chat)  # before a model loads for nothing
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        context: list[int] = []
        if chat:
            messages = body.get("messages")
            if messages is not None and not isinstance(messages, list):
                raise ApiError(400, "messages must be a list")
            try:
                prompt = protocol.render_chat(messages) if messages else ""
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
        else:
            prompt, system = self._text(body, "prompt"), self._text(body, "system")
            if system and prompt:
                prompt = f"{system}\n\n{prompt}"
            context = body.get("context") or []
            if not isinstance(context, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in context
            ):
                raise ApiError(400, "context must be a list of token ids")
        lease, load_s = await self._hold(entry)
        if not prompt and not context:  # an empty prompt loads (keep_alive 0: unloads)
            reason = "unload" if keep_alive == 0 else "load"
            self.request_done(entry, lease, keep_alive)
            final = self._head(entry, "", chat) | {"done": True, "done_reason": reason}
            if stream:
                return NdjsonResponse(_one_line(final))
            return JSONResponse(final)
        try:
            generation = self._generation(entry, prompt, context, *settings)
        except ValueError as exc:
            self.request_done(entry, lease, keep_alive)
            raise ApiError(400, f"invalid option: {exc}") from None
        except BaseException:
            self.request_done(entry, lease, keep_alive)
            raise
        job = Job(self, entry, lease, generation, keep_alive, wake_per_piece=stream)
        job.start()
        timing = (started, load_s)
        if stream:
            return NdjsonResponse(self._stream(request.scope, job, chat, timing), job)
        return await self._collect(request, job, chat, timing)

    @staticmethod
    def _settings(options: protocol.Options, chat: bool):
        """(SamplingConfig, SteerConfig) of a request's options; ValueError (one line, naming
        the option as Ollama does) for a value outside the generator's limits."""
        from h2q_tui.generation.sampling import SamplingConfig
        from h2q_tui.generation.steering import SteerConfig

        default = SamplingConfig()
        pick = lambda value, fallback: fallback if value is None else value  # noqa: E731
        sampling = SamplingConfig(
            temperature=pick(options.temperature, default.temperature),
            top_k=pick(options.top_k, default.top_k),
            top_p=pick(options.top_p, default.top_p),
            repetition_penalty=pick(options.repeat_penalty, default.repetition_penalty),
            max_new_tokens=pick(options.num_predict, DEFAULT_PREDICT),
            seed=pick(options.seed, secrets.randbelow(2**31)),
            stop=options.stop + (protocol.CHAT_STOPS if chat else ()),
        )
        steer = SteerConfig(word=options.steer, strength=options.strength, layer=options.layer)
        try:
            sampling.check(OPTION_NAMES)
            steer.check()
        except ValueError as exc:
            raise ValueError(f"invalid option: {exc}") from None
        return sampling, steer

    def _generation(self, entry: Entry, prompt: str, context: list[int], sampling, steer):
        from h2q_tui.generation.generate import Generation

        vocab = entry.info.config.model.vocab_size
        if any(not 0 <= t < vocab for t in context):
            raise ValueError(f"context holds token ids outside 0..{vocab - 1}")
        if context:
            prompt = entry.codec.decode(context) + prompt
        return Generation(entry.model, entry.codec, prompt, sampling=sampling, steer=steer)

    @staticmethod
    def _head(entry: Entry, text: str, chat: bool) -> dict[str, Any]:
        head: dict[str, Any] = {"model": entry.name, "created_at": iso(time.time())}
        if chat:
            head["message"] = {"role": "assistant", "content": text}
        else:
            head["response"] = text
        return head

    def _final(
        self, job: Job, chat: bool, timing: tuple[float, float], text: str
    ) -> dict[str, Any]:
        started, load_s = timing
        stats = job.generation.stats
        first = stats.first_token_s if stats.new_tokens else stats.seconds
        final = self._head(job.entry, text, chat) | {
            "done": True,
            "done_reason": "stop" if stats.stop_reason in ("stop", "cancelled") else "length",
        }
        if not chat:
            final["context"] = job.generation.prompt_ids + job.generation.tokens
        return final | {
            "total_duration": _ns(time.perf_counter() - started),
            "load_duration": _ns(load_s),
            "prompt_eval_count": stats.prompt_tokens,
            "prompt_eval_duration": _ns(first),
            "eval_count": stats.new_tokens,
            "eval_duration": _ns(stats.seconds - first) if stats.new_tokens else 0,
        }

    @staticmethod
    def _piece_line(entry: Entry, chat: bool) -> Callable[..., bytes]:
        """The NDJSON line _head() would give for one piece, built faster (it runs once a
        token, on the decoder's thread when streaming direct). Lines that leave in one write
        may share one ``stamp`` (created_at, formatted once)."""
        head = b'{"model":' + json.dumps(entry.name).encode() + b',"created_at":"'
        if chat:
            middle, tail = b'","message":{"role":"assistant","content":', b'},"done":false}\n'
        else:
            middle, tail = b'","response":', b',"done":false}\n'
        dumps = json.JSONEncoder(ensure_ascii=False).encode

        def line(text: str, stamp: bytes | None = None) -> bytes:
            stamp = stamp or iso(time.time()).encode()
            return b"".join((head, stamp, middle, dumps(text).encode(), tail))

        return line

    async def _stream(self, scope, job: Job, chat: bool, timing) -> AsyncIterator[bytes]:
        line = self._piece_line(job.entry, chat)
        try:
            fd = direct.socket_of(scope)  # on serve's default stack (direct.Protocol)
            if fd is not None:  # the head is out: the generation thread writes the pieces
                writer = direct.ChunkWriter(fd, lambda: job.generation.cancelled)
                self.direct_streams += job.go_direct(writer, line)
            async for items in job.batches():
                lines = []
                stamp = iso(time.time()).encode()  # one batch goes out in one write: one time
                for kind, value in items:
                    if kind == "piece":
                        lines.append(line(value, stamp))
                    elif kind == "error":
                        lines.append(protocol.ndjson({"error": value}))
                    else:
                        await job.ended()
                        lines.append(protocol.ndjson(self._final(job, chat, timing, "")))
                yield b"".join(lines)
        finally:
            job.cancel()  # a client gone mid-stream: stop before the next token

    async def _collect(self, request: Request, job: Job, chat: bool, timing) -> Response:
        parts: list[str] = []
        try:
            while True:
                try:
                    items = await asyncio.wait_for(job.next_batch(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancel()
                        return Response(status_code=499)  # nobody reads it
                    continue
                for kind, value in items:
                    if kind == "piece":
                        parts.append(value)
                    elif kind == "error":
                        raise ApiError(500, value)
                    else:
                        await job.ended()
                        return JSONResponse(self._final(job, chat, timing, "".join(parts)))
        finally:
            job.cancel()

    # ------------------------------------------------------------------ embeddings
    async def embed(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await self._body(request)
        entry = self._entry(body)
        keep_alive = self._keep_alive(body)
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw or []
        if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
            raise ApiError(400, "input must be a string or a list of strings")
        inputs = [s for s in inputs if s]
        truncate = self._flag(body, "truncate", True)
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise ApiError(400, "dimensions must be a whole number ≥ 1")
        vectors, tokens, load_s = await self._vectors(entry, inputs, truncate, keep_alive)
        if dimensions is not None:
            if vectors and dimensions > len(vectors[0]):
                raise ApiError(400, f"dimensions must be at most {len(vectors[0])}")
            vectors = [v[:dimensions] for v in vectors]
        vectors = [_unit(v) for v in vectors]
        return JSONResponse(
            {
                "model": entry.name,
                "embeddings": vectors,
                "total_duration": _ns(time.perf_counter() - started),
                "load_duration": _ns(load_s),
                "prompt_eval_count": tokens,
            }
        )

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        entry = self._entry(body)
        keep_alive = self._keep_alive(body)
        prompt = self._text(body, "prompt")
        vectors, _, _ = await self._vectors(entry, [prompt] if prompt else [], True, keep_alive)
        return JSONResponse({"embedding": vectors[0] if vectors else []})

    async def _vectors(self, entry: Entry, inputs: list[str], truncate: bool, keep_alive):
        lease, load_s = await self._hold(entry)
        try:
            vectors, tokens = await run_thread(
                mean_hidden, entry.model, entry.codec, inputs, truncate, name="h2q-serve-embed"
            )
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        finally:
            self.request_done(entry, lease, keep_alive)
        return vectors, tokens, load_s


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def mean_hidden(model, codec, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
    """The mean final hidden state of each text (its first ``context`` tokens), and the
    tokens read. ValueError when a text is longer than the context and ``truncate`` is off."""
    import torch
    from h2q_kernels.hamiltonian import frozen_weights

    from h2q_tui.generation.generate import use_decoding_threads
    from h2q_tui.models.common import DecodeState

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


def make_app(registry: Registry, config: ServeConfig | None = None) -> Starlette:
    """The Starlette app of ``h2q-tui serve`` (``app.state.server`` is its :class:`Server`)."""
    return Server(registry, config).app
