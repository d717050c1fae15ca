"""Streamed tokens written to the client's socket by the generation thread itself.

Why: through the event loop, every token wakes the loop thread, which then holds the GIL
while the decoder thread wants it back (``benchmarks/serve.py --stacks direct,uvloop``
measures the two side by side: +15.3 % against +20.1 % API overhead on a 2-core Intel
VM, where one send per token that wakes the reader alone costs 11.1 %). Here the loop sends
the response head and, at the end, the final object; in between the generation thread
frames each NDJSON line as one HTTP chunk and writes it to a duplicate of the connection's
socket, so a token goes out the moment it exists and the loop stays asleep. The bytes on the
wire are the same.

``Protocol`` is uvicorn's httptools protocol with one addition: the request's ASGI scope
carries the connection's transport (``scope["extensions"][TRANSPORT]``). Where it is absent
(another server, ``httpx.ASGITransport``, ``--stack uvloop``/``asyncio``) or the response
head has not fully left, the server streams through the loop as before.
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TRANSPORT = "h2q.transport"
WAIT_S = 0.5  # a full socket buffer (slow reader): wait this long at a time, then look again


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, exposing the transport to the app."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {TRANSPORT: self.transport}


def socket_of(scope: dict[str, Any]) -> int | None:
    """A duplicate of the request's socket, when the response head is out and nothing is
    buffered (so bytes written to it come after everything the loop sent); else None."""
    if scope.get("http_version") != "1.1":
        return None
    transport = scope.get("extensions", {}).get(TRANSPORT)
    if transport is None or transport.is_closing() or transport.get_write_buffer_size():
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        return os.dup(sock.fileno())
    except OSError:
        return None


class ChunkWriter:
    """HTTP/1.1 chunks written to a socket from one thread; owns (and closes) the fd.

    A duplicate fd keeps the connection's socket alive even if the loop closes its own, so a
    write can never reach another connection that reused the number. A peer that went away
    makes ``write`` return False (and every later one too): the caller cancels. A full socket
    buffer (a slow reader) blocks the writer, which is the back-pressure the decoder needs,
    until ``cancelled()`` says to give up.
    """

    def __init__(self, fd: int, cancelled: Callable[[], bool] = lambda: False) -> None:
        self.fd = fd
        self.broken = False
        self.cancelled = cancelled
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)

    def write(self, payload: bytes) -> bool:
        if self.broken:
            return False
        data = memoryview(b"%x\r\n%b\r\n" % (len(payload), payload))
        while data:
            try:
                data = data[os.write(self.fd, data) :]
            except (BlockingIOError, InterruptedError):
                if self.cancelled():
                    self.broken = True
                    return False
                self._poll.poll(1000 * WAIT_S)
            except OSError as exc:
                if exc.errno not in GONE:
                    raise
                self.broken = True  # the client went away
                return False
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


GONE = (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN, errno.ESHUTDOWN)
