"""The bridge: a client for any Ollama-compatible server (Ollama itself, or ``h2q-tui serve``).

- The server is ``OLLAMA_HOST`` read the way the official client reads it
  (:func:`h2q_tui.ollama.protocol.parse_host`; default ``http://127.0.0.1:11434``).
- :meth:`OllamaClient.probe` asks ``GET /api/version`` with a short timeout: a refused
  connection, a timeout or a non-Ollama answer is :class:`ServerUnreachable` ("no Ollama
  server at URL"), never "model not found".
- :meth:`~OllamaClient.generate` and :meth:`~OllamaClient.chat` stream NDJSON: each line is
  checked for ``error`` first (a mid-stream error comes as ``{"error": ...}`` with HTTP 200
  and no ``done``), then ``done``. Counts and durations are read from the final object only
  and may be missing (a server that sends none gives None, not a crash). tokens/s is
  ``eval_count / eval_duration · 1e9``; ``load_duration`` is the server's hot start.
  First-token latency is measured here (request sent → first text). ``cancel()`` closes the
  stream, which an Ollama server (and ``serve``) takes as the end of that generation.
- :meth:`~OllamaClient.pull` streams the progress lines of ``POST /api/pull``.
- Answers are parsed into the types the server builds them from
  (:mod:`h2q_tui.ollama.replies`): :class:`~h2q_tui.ollama.replies.Reply`,
  :class:`~h2q_tui.ollama.replies.ModelInfo`, :class:`~h2q_tui.ollama.replies.PullProgress`.

httpx only (no ``ollama`` package at runtime); nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from h2q_tui.ollama import protocol
from h2q_tui.ollama.replies import ModelInfo, PullProgress, Reply
from h2q_tui.units import first_line

PROBE_TIMEOUT = 2.0  # seconds for /api/version
READ_TIMEOUT = 600.0  # a generation may wait in the server's queue or behind a load


class BridgeError(Exception):
    """One line saying what went wrong talking to the server."""


class ServerUnreachable(BridgeError):
    pass


class ModelNotFound(BridgeError):
    pass


class ServerError(BridgeError):
    """The server answered with an error (a status or an ``error`` line)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def default_host() -> str:
    return protocol.parse_host(os.environ.get("OLLAMA_HOST"))


@dataclass
class Result:
    """What one generation gave: the text, the server's final object, what was measured here."""

    model: str = ""
    text: str = ""
    final: Reply = field(default_factory=Reply)  # the final (done) object, as the server sent it
    first_token_s: float | None = None  # measured here: request sent → first text
    wall_s: float = 0.0  # measured here: request sent → stream closed
    pieces: int = 0  # NDJSON lines with text
    cancelled: bool = False

    @property
    def done(self) -> bool:
        return self.final.done

    @property
    def tokens(self) -> int:
        """The server's ``eval_count``, or the pieces received when it did not say."""
        return self.final.eval_count if self.final.eval_count is not None else self.pieces

    @property
    def tokens_per_s(self) -> float | None:
        """eval_count / eval_duration · 1e9 (None when the server did not say)."""
        return self.final.tokens_per_s

    @property
    def load_s(self) -> float | None:
        return self.final.load_s

    def stats_line(self) -> str:
        """``42 tokens · 512.3 tokens/s · first token 12 ms · hot start 0.1 ms · length``."""
        parts = [f"{self.tokens} tokens"]
        rate = self.tokens_per_s
        parts.append(f"{rate:,.1f} tokens/s" if rate is not None else "tokens/s n/a")
        if self.first_token_s is not None:
            parts.append(f"first token {1000 * self.first_token_s:,.0f} ms")
        load = self.load_s
        parts.append(f"hot start {1000 * load:,.1f} ms" if load is not None else "hot start n/a")
        reason = self.final.done_reason or "no done_reason"
        parts.append("cancelled" if self.cancelled else reason)
        return " · ".join(parts)


class Stream:
    """A streaming generate/chat: iterate for text pieces; ``result`` after; ``cancel()``
    (from any thread) closes the connection and ends the iteration quietly."""

    def __init__(self, client: OllamaClient, path: str, payload: dict[str, Any], chat: bool):
        self.client, self.path, self.payload, self.chat = client, path, payload, chat
        self.result = Result(model=str(payload.get("model", "")))
        self._response: httpx.Response | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:  # noqa: BLE001 - closing a stream another thread reads
                pass

    def __iter__(self) -> Iterator[str]:
        started = time.perf_counter()
        try:
            with self.client._stream("POST", self.path, self.payload) as response:
                self._response = response
                if self._cancelled.is_set():
                    response.close()
                yield from self._lines(response, started)
        except (httpx.HTTPError, RuntimeError) as exc:
            if not self._cancelled.is_set():
                raise self.client._failure(exc) from None
        finally:
            self.result.wall_s = time.perf_counter() - started
            self.result.cancelled = self._cancelled.is_set() and not self.result.done

    def _lines(self, response: httpx.Response, started: float) -> Iterator[str]:
        for line in response.iter_lines():
            if self._cancelled.is_set():
                return
            part = read_line(line)
            if part is None:
                continue
            reply = Reply.from_json(part, self.chat)
            piece = reply.text
            if piece:
                if self.result.first_token_s is None:
                    self.result.first_token_s = time.perf_counter() - started
                self.result.text += piece
                self.result.pieces += 1
                yield piece
            if reply.done:
                self.result.final = reply
                return
        if not self._cancelled.is_set():
            raise ServerError("the stream ended without a final (done) object")

    def run(self, on_piece: Callable[[str], None] | None = None) -> Result:
        """Iterate to the end (``on_piece`` gets each piece) and return the result."""
        for piece in self:
            if on_piece is not None:
                on_piece(piece)
        return self.result


class OllamaClient:
    """An Ollama API client on httpx (``host``: as ``OLLAMA_HOST``, default that variable)."""

    def __init__(
        self,
        host: str | None = None,
        transport: httpx.BaseTransport | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        raw = os.environ.get("OLLAMA_HOST") if host is None else host
        self.base_url = protocol.parse_host(raw)
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(read_timeout, connect=PROBE_TIMEOUT),
            transport=transport,
            headers={"Accept": "application/json"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OllamaClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ errors
    def _failure(self, exc: Exception) -> BridgeError:
        if isinstance(exc, BridgeError):
            return exc
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            reason = "connection refused" if "refused" in str(exc).lower() else first_line(exc)
            return ServerUnreachable(f"no Ollama server at {self.base_url} ({reason})")
        if isinstance(exc, httpx.TimeoutException):
            return ServerError(f"{self.base_url} stopped answering ({type(exc).__name__})")
        return ServerError(f"lost the connection to {self.base_url}: {first_line(exc)}")

    def _raise_for(self, response: httpx.Response, model: str = "") -> None:
        if response.status_code == 200:
            return
        try:
            message = str(json.loads(response.read()).get("error") or "")
        except (ValueError, AttributeError):
            message = response.text[:200].strip()
        message = message or f"HTTP {response.status_code}"
        if response.status_code == 404 and model:
            raise ModelNotFound(f"{message} (on {self.base_url})")
        raise ServerError(f"{message} (HTTP {response.status_code})", response.status_code)

    def _request(self, method: str, path: str, payload: dict | None = None, timeout=None) -> Any:
        try:
            response = self.http.request(
                method, path, json=payload, timeout=timeout or httpx.USE_CLIENT_DEFAULT
            )
        except httpx.HTTPError as exc:
            raise self._failure(exc) from None
        self._raise_for(response, str((payload or {}).get("model", "")))
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"{path} answered with something that is not JSON") from None

    def _stream(self, method: str, path: str, payload: dict[str, Any]):
        client = self

        class _Opened:
            def __enter__(self_inner) -> httpx.Response:
                try:
                    self_inner.cm = client.http.stream(method, path, json=payload)
                    response = self_inner.cm.__enter__()
                except httpx.HTTPError as exc:
                    raise client._failure(exc) from None
                try:
                    client._raise_for(response, str(payload.get("model", "")))
                except BaseException:
                    self_inner.cm.__exit__(None, None, None)
                    raise
                return response

            def __exit__(self_inner, *exc) -> None:
                self_inner.cm.__exit__(*exc)

        return _Opened()

    # ------------------------------------------------------------------ the API
    def probe(self, timeout: float = PROBE_TIMEOUT) -> str:
        """The server's version; ServerUnreachable when nothing Ollama-like answers."""
        try:
            response = self.http.get("/api/version", timeout=timeout)
        except httpx.HTTPError as exc:
            failure = self._failure(exc)
            if isinstance(failure, ServerUnreachable):
                raise failure from None
            raise ServerUnreachable(f"no Ollama server at {self.base_url} ({failure})") from None
        try:
            version = response.json().get("version") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            version = None
        if not isinstance(version, str):
            raise ServerUnreachable(
                f"no Ollama server at {self.base_url} (GET /api/version answered "
                f"HTTP {response.status_code} without a version)"
            )
        return version

    def list(self) -> list[ModelInfo]:
        return self._models("/api/tags")

    def ps(self) -> list[ModelInfo]:
        """The models loaded now."""
        return self._models("/api/ps")

    def _models(self, path: str) -> list[ModelInfo]:
        models = self._request("GET", path).get("models")
        if not isinstance(models, list):
            return []
        return [ModelInfo.from_json(m) for m in models if isinstance(m, dict)]

    def show(self, model: str) -> dict[str, Any]:
        return self._request("POST", "/api/show", {"model": model})

    def pull(self, model: str) -> Iterator[PullProgress]:
        """Progress lines of pulling ``model``; ends after ``success``."""
        with self._stream("POST", "/api/pull", {"model": model, "stream": True}) as response:
            try:
                for line in response.iter_lines():
                    part = read_line(line)
                    if part is None:
                        continue
                    progress = PullProgress.from_json(part)
                    yield progress
                    if progress.status == "success":
                        return
            except httpx.HTTPError as exc:
                raise self._failure(exc) from None
        raise ServerError("the pull ended without success")

    def generate(
        self,
        model: str,
        prompt: str,
        options: Mapping[str, Any] | None = None,
        keep_alive: Any = None,
        **extra: Any,
    ) -> Stream:
        payload: dict[str, Any] = {"model": model, "prompt": prompt, "stream": True, **extra}
        if options:
            payload["options"] = dict(options)
        if keep_alive is not None:
            payload["keep_alive"] = keep_alive
        return Stream(self, "/api/generate", payload, chat=False)

    def chat(
        self,
        model: str,
        messages: list[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        keep_alive: Any = None,
    ) -> Stream:
        payload: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
        if options:
            payload["options"] = dict(options)
        if keep_alive is not None:
            payload["keep_alive"] = keep_alive
        return Stream(self, "/api/chat", payload, chat=True)


def read_line(line: str) -> dict[str, Any] | None:
    """One NDJSON line as an object, None for a blank line; ServerError for a line that is
    not a JSON object, or one that carries ``error`` (checked before ``done``: a mid-stream
    error has no done)."""
    if not line.strip():
        return None
    try:
        part = json.loads(line)
    except ValueError:
        raise ServerError(f"the server sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(part, dict):
        raise ServerError(f"the server sent {line[:80]!r}, not an object")
    if part.get("error"):
        raise ServerError(str(part["error"]))
    return part
