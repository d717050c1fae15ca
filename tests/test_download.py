"""Tests for the corpus downloader against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from h2q_tui.data import download as dl
from h2q_tui.data.download import DownloadError, download, fetch_corpus
from h2q_tui.errors import UserError

PAYLOAD = random.Random(1234).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
DROP_AFTER = 100_000


@dataclass
class ServerState:
    """What the handler serves and what it has seen."""

    payload: bytes = PAYLOAD
    mode: str = "normal"  # normal | drop | ignore_range | 404
    paths: list[str] = field(default_factory=list)
    ranges: list[str | None] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.paths)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        first_request = state.count == 0
        state.paths.append(self.path)
        state.ranges.append(self.headers.get("Range"))
        if state.mode == "404":
            self._send(404, b"not found", {})
            return
        body, status, extra = state.payload, 200, {}
        rng = self.headers.get("Range")
        if rng and state.mode != "ignore_range":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            extra = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
            body, status = body[start:], 206
        if state.mode == "drop" and first_request:
            self._send(status, body, extra, cut=DROP_AFTER)
            return
        self._send(status, body, extra)

    def _send(self, status: int, body: bytes, extra: dict[str, str], cut: int | None = None):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True


@dataclass
class Server:
    state: ServerState
    base: str

    def url(self, name: str = "file.bin") -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield Server(httpd.state, f"http://{host}:{port}")  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_normal_download(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "file.bin"
    calls: list[tuple[int, int | None]] = []
    out = download(
        server.url(),
        dest,
        PAYLOAD_SHA,
        progress=lambda d, t: calls.append((d, t)),
        chunk_bytes=16 << 10,
    )
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    done = [d for d, _ in calls]
    assert len(done) > 3
    assert done == sorted(set(done))
    assert done[-1] == len(PAYLOAD)
    assert {t for _, t in calls} == {len(PAYLOAD)}
    assert server.state.ranges == [None]


def test_present_file_with_right_checksum_makes_no_request(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    assert download(server.url(), dest, PAYLOAD_SHA) == dest
    assert server.state.count == 0


def test_interrupted_transfer_resumes(server: Server, tmp_path: Path) -> None:
    server.state.mode = "drop"
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="resume") as err:
        download(server.url(), dest, PAYLOAD_SHA, chunk_bytes=16 << 10)
    assert "\n" not in str(err.value)
    kept = _part(dest).read_bytes()
    assert 0 < len(kept) < len(PAYLOAD)
    assert kept == PAYLOAD[: len(kept)]
    assert str(len(kept)) in str(err.value)
    assert not dest.exists()

    calls: list[tuple[int, int | None]] = []
    download(server.url(), dest, PAYLOAD_SHA, progress=lambda d, t: calls.append((d, t)))
    assert server.state.ranges == [None, f"bytes={len(kept)}-"]
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert calls[0] == (len(kept), len(PAYLOAD))


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.state.mode = "ignore_range"
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(b"\xff" * 5000)  # stale bytes that must not survive
    download(server.url(), dest, PAYLOAD_SHA)
    assert server.state.ranges == ["bytes=5000-"]
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()


def test_complete_part_file_answered_416_is_verified(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(PAYLOAD)
    download(server.url(), dest, PAYLOAD_SHA)
    assert server.state.ranges == [f"bytes={len(PAYLOAD)}-"]
    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_deletes_everything(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="checksum") as err:
        download(server.url(), dest, "0" * 64)
    assert PAYLOAD_SHA[:12] in str(err.value)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_http_404(server: Server, tmp_path: Path) -> None:
    server.state.mode = "404"
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="404"):
        download(server.url(), dest, PAYLOAD_SHA)
    assert not dest.exists()


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.bin"
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "file.bin", PAYLOAD_SHA, timeout_s=5)
    message = str(err.value)
    assert "\n" not in message
    assert url in message
    assert "--data PATH" in message


def test_unknown_corpus_lists_known_names() -> None:
    with pytest.raises(UserError, match="tinystories") as err:
        fetch_corpus("nope")
    assert "shakespeare" in str(err.value) and "wikitext2" in str(err.value)


def test_pinned_checksum_is_enforced(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("H2Q_TUI_CACHE", str(tmp_path))
    with pytest.raises(DownloadError, match="checksum"):
        fetch_corpus("shakespeare", base_url=server.base + "/mirror/")
    assert server.state.paths == ["/mirror/input.txt"]
    assert list((tmp_path / "corpora").iterdir()) == []


def test_fetch_corpus_from_env_mirror_into_cache(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = dl.CorpusFile("https://example.invalid/a/b/train.txt", PAYLOAD_SHA, 1, "t.txt")
    held = dl.CorpusFile("https://example.invalid/a/b/val.txt", PAYLOAD_SHA, 1, "v.txt")
    monkeypatch.setitem(dl.CORPORA, "toy", dl.NamedCorpus("toy", "test", entry, held))
    monkeypatch.setenv("H2Q_TUI_CACHE", str(tmp_path))
    monkeypatch.setenv("H2Q_TUI_CORPUS_MIRROR", server.base)
    train, heldout = fetch_corpus("toy")
    assert dl.cache_dir() == tmp_path / "corpora"
    assert (train, heldout) == (tmp_path / "corpora" / "t.txt", tmp_path / "corpora" / "v.txt")
    assert train.read_bytes() == PAYLOAD and heldout.read_bytes() == PAYLOAD
    assert server.state.paths == ["/train.txt", "/val.txt"]
