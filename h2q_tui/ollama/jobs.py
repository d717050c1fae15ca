"""The threads of ``h2q-tui serve``: :func:`run_thread` (a load or an embedding) and
:class:`Job`, one generation whose pieces reach the client through the event loop or, once
the response head is out, written to the socket by the generation thread itself
(:mod:`h2q_tui.ollama.direct`).

Each thread ends with its request (h2q_tui/system/threads.py: no OpenMP team outlives its
work); a generation decodes on one torch thread (``use_decoding_threads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from h2q_tui.generation.constraint import TokenLogprob
from h2q_tui.generation.generate import Generation, use_decoding_threads
from h2q_tui.ollama import direct
from h2q_tui.ollama.models import Entry, Lease, iso


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


@dataclass
class Piece:
    """A piece of text with the log-probabilities of the tokens that made it (a generation
    asked for logprobs; otherwise pieces are plain strings)."""

    text: str
    logprobs: list[TokenLogprob]


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
        self,
        entry: Entry,
        lease: Lease,
        generation: Generation,
        keep_alive: float | None,
        on_end: Callable[[Job], None],
        wake_per_piece: bool = True,
    ) -> None:
        Job.counter += 1
        self.entry, self.lease = entry, lease
        self.generation, self.keep_alive = generation, keep_alive
        self.on_end = on_end  # on the loop, once the thread is done
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
        self._line: Callable[[Any, bytes], bytes] | None = None  # (piece, stamp) -> bytes
        self._pending = b""  # lines queued before go_direct, written first
        self._over = False  # the thread has ended: no going direct any more

    def start(self) -> None:
        self.thread.start()

    def cancel(self) -> None:
        self.generation.cancel()  # before its next token; the thread then ends

    def go_direct(self, writer: direct.ChunkWriter, line: Callable[[Any, bytes], bytes]) -> bool:
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
            line = self._line(item[1], iso(time.time()).encode())
            payload, self._pending = self._pending + line, b""
            if not writer.write(payload):
                self.generation.cancel()  # the client went away
            return
        try:
            self.loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: nobody is listening
            self.generation.cancel()

    def _run(self) -> None:
        use_decoding_threads()
        generation, taken = self.generation, 0
        try:
            for piece in generation:
                if generation.logprobs is None:
                    self._put(("piece", piece))
                    continue
                records = generation.token_logprobs[taken:]
                taken += len(records)
                self._put(("piece", Piece(piece, records)))
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
        self.on_end(self)
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
