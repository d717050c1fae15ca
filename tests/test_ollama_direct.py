"""Streamed chunks written by the generation thread (h2q_tui/ollama/direct.py): framing,
a client that went away, a full socket buffer, and when the loop keeps the socket."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from h2q_tui.ollama import direct


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)  # as uvloop leaves a connection's socket
    yield a, b
    a.close()
    b.close()


def writer_for(sock: socket.socket, cancelled=lambda: False) -> direct.ChunkWriter:
    return direct.ChunkWriter(direct.os.dup(sock.fileno()), cancelled)


def test_each_write_is_one_http_chunk(pair) -> None:
    a, b = pair
    writer = writer_for(a)
    assert writer.write(b'{"response":"a"}\n') and writer.write(b"x" * 300)
    writer.close()
    expected = b'11\r\n{"response":"a"}\n\r\n' + b"12c\r\n" + b"x" * 300 + b"\r\n"
    got = b""
    while len(got) < len(expected):
        got += b.recv(4096)
    assert got == expected
    assert writer.fd == -1  # closed: its duplicate fd is given back


def test_a_client_that_went_away_makes_write_return_false(pair) -> None:
    a, b = pair
    writer = writer_for(a)
    b.close()
    assert not writer.write(b"line\n")
    assert writer.broken and not writer.write(b"again\n")
    writer.close()


def test_a_slow_reader_gets_every_byte_in_order(pair) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = writer_for(a)
    lines = [b"%06d\n" % i * 50 for i in range(400)]  # ~140 KB, far over the buffer
    received = bytearray()

    def read_slowly() -> None:
        while chunk := b.recv(2048):
            received.extend(chunk)
            time.sleep(0.0005)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    assert all(writer.write(line) for line in lines)
    writer.close()
    a.shutdown(socket.SHUT_WR)
    reader.join(30)
    assert bytes(received) == b"".join(b"%x\r\n%b\r\n" % (len(x), x) for x in lines)


def test_a_full_buffer_gives_up_once_cancelled(pair, monkeypatch) -> None:
    monkeypatch.setattr(direct, "WAIT_S", 0.02)
    a, _ = pair  # nobody reads
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stop = threading.Event()
    writer = writer_for(a, stop.is_set)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    results = [writer.write(b"y" * 1000) for _ in range(2000)]  # blocks once the buffer is full
    assert results[0] and not results[-1] and writer.broken
    assert 0.25 < time.monotonic() - started < 5
    writer.close()


class FakeTransport:
    def __init__(self, sock, buffered: int = 0, closing: bool = False) -> None:
        self.sock, self.buffered, self.closing = sock, buffered, closing

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


def test_the_loop_keeps_the_socket_unless_the_head_is_out_on_http_1_1(pair) -> None:
    a, _ = pair

    def scope(transport, version="1.1"):
        return {"http_version": version, "extensions": {direct.TRANSPORT: transport}}

    assert direct.socket_of({"http_version": "1.1"}) is None  # another server: no transport
    assert direct.socket_of(scope(FakeTransport(a), "1.0")) is None
    assert direct.socket_of(scope(FakeTransport(a, buffered=10))) is None  # head not all out
    assert direct.socket_of(scope(FakeTransport(a, closing=True))) is None
    assert direct.socket_of(scope(FakeTransport(None))) is None
    fd = direct.socket_of(scope(FakeTransport(a)))
    assert fd is not None and fd != a.fileno()  # a duplicate, which the writer owns
    direct.os.close(fd)


def test_stacks_name_uvicorn_settings_and_fall_back_without_uvloop(monkeypatch, capsys) -> None:
    import builtins

    from h2q_tui.cli.serve import stack

    assert stack("direct")[:2] == ("uvloop", direct.Protocol)
    assert stack("uvloop")[:2] == ("uvloop", "httptools")
    assert stack("asyncio")[:2] == ("asyncio", "h11")
    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'", name="uvloop")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert stack("direct")[:2] == ("asyncio", "h11")
    assert "uvloop is not installed: using asyncio + h11" in capsys.readouterr().err
