"""Fetch the named text corpora into a local cache, resuming transfers and checking SHA-256."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from http.client import IncompleteRead
from pathlib import Path

import platformdirs
import requests
from urllib3.exceptions import ProtocolError

from h2q_tui.errors import UserError

Progress = Callable[[int, int | None], None]

_BROKEN_BODY = (requests.RequestException, ProtocolError, IncompleteRead)


class DownloadError(UserError):
    """A corpus could not be downloaded or failed its checksum."""


@dataclass(frozen=True)
class CorpusFile:
    """One pinned file: where to get it, its digest and size, and its name in the cache."""

    url: str
    sha256: str
    size_bytes: int
    filename: str


@dataclass(frozen=True)
class NamedCorpus:
    """A corpus the CLI knows by name: a training file and an optional held-out file."""

    name: str
    description: str
    train: CorpusFile
    heldout: CorpusFile | None


_GH = "https://raw.githubusercontent.com"

CORPORA: dict[str, NamedCorpus] = {
    "shakespeare": NamedCorpus(
        name="shakespeare",
        description="Tiny Shakespeare (char-rnn), about 1.1 MB of plays",
        train=CorpusFile(
            url=f"{_GH}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"
            "/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            size_bytes=1115394,
            filename="tinyshakespeare.txt",
        ),
        heldout=None,
    ),
    "tinystories": NamedCorpus(
        name="tinystories",
        description="TinyStories: first 2 MiB of the training set plus a validation sample",
        train=CorpusFile(
            url=f"{_GH}/gusjengis/toy-RNN/e4c7ff8bba4ff7989e69a3a816ebe4b14813b41e"
            "/data/tinystories_sample.txt",
            sha256="5352b299dcb1a32898b2d779b145b5a05f3e1265953fd21c264c9f9f9c9ae33d",
            size_bytes=2097152,
            filename="tinystories_train_first2MiB.txt",
        ),
        heldout=CorpusFile(
            url=f"{_GH}/yuninxia/moe-routing-bench/6877be50c1c389c73047d7f27104bee6a995efd6"
            "/data/tinystories_val.txt",
            sha256="5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6",
            size_bytes=794375,
            filename="tinystories_valid_head.txt",
        ),
    ),
    "wikitext2": NamedCorpus(
        name="wikitext2",
        description="WikiText-2 (raw), the 1.3 MB test split",
        train=CorpusFile(
            url=f"{_GH}/Tylogi/TyloQuant/aa7023b3a96905a70f7a7ce9836834f02694c670"
            "/data/wikitext-2-raw/wiki.test.raw",
            sha256="4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c",
            size_bytes=1290547,
            filename="wikitext2_raw_test.txt",
        ),
        heldout=None,
    ),
}


def cache_dir() -> Path:
    """Return the folder where downloaded corpora are kept.

    Returns:
        ``$H2Q_TUI_CACHE/corpora`` when that variable is set, else the platform's
        user cache folder for h2q-tui plus ``corpora``.
    """
    root = os.environ.get("H2Q_TUI_CACHE") or platformdirs.user_cache_dir("h2q-tui")
    return Path(root) / "corpora"


def download(
    url: str,
    dest: Path,
    sha256: str,
    *,
    progress: Progress | None = None,
    timeout_s: float = 30.0,
    chunk_bytes: int = 1 << 16,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial download and verifying its SHA-256.

    The body goes to ``dest`` + ``.part`` first and is moved into place only once its
    digest matches, so ``dest`` is either absent or complete and correct.

    Args:
        url: HTTP(S) address of the file.
        dest: Final path of the file; parent folders are created.
        sha256: Expected hex digest of the whole file.
        progress: Called as ``progress(bytes_done, total_bytes_or_None)`` while bytes arrive.
        timeout_s: Seconds to wait to connect and between received bytes.
        chunk_bytes: Size of the pieces read from the network.

    Returns:
        ``dest``.

    Raises:
        DownloadError: The server could not be reached, answered an HTTP error, the
            transfer broke (the partial file is kept for the next attempt), or the
            digest did not match (the partial file is deleted).
    """
    dest = Path(dest)
    if dest.is_file() and _sha256_of(dest) == sha256.lower():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_into(url, part, progress, timeout_s, chunk_bytes)
    _verify(part, sha256, url)
    os.replace(part, dest)
    return dest


def fetch_corpus(
    name: str, *, progress: Progress | None = None, base_url: str | None = None
) -> tuple[Path, Path | None]:
    """Download a named corpus into :func:`cache_dir` unless it is already there.

    Args:
        name: A key of :data:`CORPORA`.
        progress: Passed to :func:`download` for each file.
        base_url: Mirror to use instead of the pinned hosts: everything of each URL up to
            its last ``/`` is replaced by it. Defaults to ``$H2Q_TUI_CORPUS_MIRROR``.

    Returns:
        The paths of the training file and of the held-out file (``None`` if the corpus
        has none).

    Raises:
        UserError: ``name`` is not a known corpus.
        DownloadError: A file could not be downloaded or failed its checksum.
    """
    corpus = CORPORA.get(name)
    if corpus is None:
        known = ", ".join(sorted(CORPORA))
        raise UserError(f"unknown corpus {name!r}; known corpora: {known}")
    mirror = base_url or os.environ.get("H2Q_TUI_CORPUS_MIRROR") or None
    folder = cache_dir()

    def fetch(file: CorpusFile) -> Path:
        url = file.url if mirror is None else f"{mirror.rstrip('/')}/{file.url.rsplit('/', 1)[1]}"
        return download(url, folder / file.filename, file.sha256, progress=progress)

    train = fetch(corpus.train)
    heldout = fetch(corpus.heldout) if corpus.heldout is not None else None
    return train, heldout


def _fetch_into(
    url: str, part: Path, progress: Progress | None, timeout_s: float, chunk_bytes: int
) -> None:
    """Bring ``part`` up to the full body of ``url``, appending to it when the server allows."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Accept-Encoding": "identity"}  # byte ranges and sizes refer to raw bytes
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = requests.get(url, headers=headers, stream=True, timeout=timeout_s)
    except requests.RequestException as exc:
        raise DownloadError(
            f"could not download corpus from {url} ({_reason(exc, timeout_s)}); "
            "check the network, or pass --data PATH to use a local text file"
        ) from exc
    with resp:
        if resp.status_code == 416 and have:
            return  # nothing left to send: the part file is complete, let the digest decide
        if resp.status_code >= 400:
            raise DownloadError(f"download of {url} failed: HTTP {resp.status_code} {resp.reason}")
        resume = resp.status_code == 206 and have > 0
        if resume and _range_start(resp) != have:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url} resumed at the wrong offset; run again to start over")
        _write_body(url, resp, part, have if resume else 0, progress, chunk_bytes)


def _write_body(
    url: str,
    resp: requests.Response,
    part: Path,
    start: int,
    progress: Progress | None,
    chunk_bytes: int,
) -> None:
    """Write the body of ``resp`` to ``part`` from byte ``start`` (0 truncates the file)."""
    total = _total_size(resp, start)
    done = start
    with part.open("ab" if start else "wb") as out:
        if progress is not None:
            progress(done, total)
        try:
            for chunk in resp.iter_content(chunk_size=chunk_bytes):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        except _BROKEN_BODY as exc:
            raise _interrupted(url, done, total) from exc
    if total is not None and done < total:
        raise _interrupted(url, done, total)


def _interrupted(url: str, done: int, total: int | None) -> DownloadError:
    """Build the error for a transfer that stopped before the end of the body."""
    of = f" of {total}" if total is not None else ""
    return DownloadError(
        f"download of {url} was interrupted; kept {done}{of} bytes, run again to resume"
    )


def _verify(part: Path, sha256: str, url: str) -> None:
    """Delete ``part`` and raise unless its digest is ``sha256``."""
    actual = _sha256_of(part)
    if actual != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {url}: expected sha256 {sha256[:12]}..., got "
            f"{actual[:12]}...; the partial file was deleted, run again to retry"
        )


def _total_size(resp: requests.Response, start: int) -> int | None:
    """Full file size announced by the server: Content-Range total, else start + Content-Length."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", resp.headers.get("Content-Range", "").strip())
    if match:
        return int(match.group(1))
    length = resp.headers.get("Content-Length", "")
    return start + int(length) if length.isdigit() else None


def _range_start(resp: requests.Response) -> int | None:
    """First byte position of a 206 response, from its Content-Range header."""
    match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", "").strip())
    return int(match.group(1)) if match else None


def _sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(exc: requests.RequestException, timeout_s: float) -> str:
    """Short single-line cause of a failed request, such as ``[Errno 111] Connection refused``."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout_s:g} s"
    match = re.search(r"\[Errno -?\d+\][^'\")]*", " ".join(str(exc).split()))
    return match.group(0).strip() if match else type(exc).__name__
