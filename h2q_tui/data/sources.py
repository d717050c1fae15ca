"""Resolve ``--data`` / ``--heldout`` into byte tensors: file, directory, named corpus, or default.

Bytes, not text-mode characters: vocabulary 256, and the data never passes through a decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

import torch

from h2q_tui.errors import UserError

BINARY_SNIFF_BYTES = 1 << 16
DEFAULT_CORPUS = "default"


@dataclass(frozen=True)
class Corpus:
    """Training bytes and held-out bytes, with where each came from."""

    train: torch.Tensor  # (N,) uint8
    heldout: torch.Tensor  # (M,) uint8, never trained on
    train_source: str
    heldout_source: str
    train_bytes_per_token: float = 1.0  # 1 for byte models; > 1 with a BPE tokenizer
    heldout_bytes_per_token: float = 1.0


def looks_binary(sample: bytes) -> bool:
    """NUL bytes, or mostly undecodable as UTF-8, mean this is not text."""
    if b"\x00" in sample:
        return True
    decoded = sample.decode("utf-8", errors="replace")
    return decoded.count("\ufffd") > 0.1 * max(1, len(decoded))


def read_text_file(path: Path, role: str = "data") -> bytes:
    """Read a text file as bytes; missing, empty, unreadable or binary files are UserErrors."""
    if not path.exists():
        raise UserError(f"{role} file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {role} file {path}: {exc.strerror}") from None
    if not data:
        raise UserError(f"{role} file is empty: {path}")
    if looks_binary(data[:BINARY_SNIFF_BYTES]):
        raise UserError(
            f"{role} file {path} looks binary (NUL or non-UTF-8 bytes); give a text file"
        )
    return data


def read_text_directory(path: Path) -> bytes:
    """Concatenate every text file under ``path`` (sorted, recursive); binaries are skipped."""
    parts = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            data = file.read_bytes()
        except OSError:
            continue
        if data and not looks_binary(data[:BINARY_SNIFF_BYTES]):
            parts.append(data if data.endswith(b"\n") else data + b"\n")
    if not parts:
        raise UserError(f"directory {path} has no text files")
    return b"".join(parts)


def default_corpus_bytes() -> bytes:
    """The embedded default: Python's own documentation topics (``pydoc_data.topics``)."""
    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def _to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def load_corpus(
    data: str | None,
    heldout: str | None = None,
    heldout_fraction: float = 0.05,
    progress: Callable[[int, int | None], None] | None = None,
    tokenizer=None,
) -> Corpus:
    """Resolve the training and held-out bytes.

    Args:
        data: a file, a directory of text files, a named corpus, or None for the default.
        heldout: a held-out text file; None holds out the corpus's own held-out file
            (named corpora that have one) or its last ``heldout_fraction`` of bytes.
        heldout_fraction: share of the corpus tail held out when no held-out file exists.
        progress: download progress callback for named corpora.
        tokenizer: a BpeTokenizer; None trains on raw bytes.

    Returns:
        The Corpus.
    """
    train_bytes, source, named_heldout = _resolve_train(data, progress)
    if heldout is not None:
        heldout_bytes, heldout_source = read_text_file(Path(heldout), "held-out"), str(heldout)
    elif named_heldout is not None:
        heldout_bytes, heldout_source = (
            read_text_file(named_heldout, "held-out"),
            str(named_heldout),
        )
    else:
        cut = len(train_bytes) - max(1, int(len(train_bytes) * heldout_fraction))
        heldout_bytes, heldout_source = (
            train_bytes[cut:],
            f"tail {len(train_bytes) - cut} bytes of {source}",
        )
        train_bytes = train_bytes[:cut]
    if tokenizer is None:
        return Corpus(_to_tensor(train_bytes), _to_tensor(heldout_bytes), source, heldout_source)
    train_ids, heldout_ids = tokenizer.encode(train_bytes), tokenizer.encode(heldout_bytes)
    return Corpus(
        train_ids,
        heldout_ids,
        source,
        heldout_source,
        len(train_bytes) / max(1, train_ids.numel()),
        len(heldout_bytes) / max(1, heldout_ids.numel()),
    )


def _resolve_train(data: str | None, progress) -> tuple[bytes, str, Path | None]:
    if data is None or data == DEFAULT_CORPUS:
        return default_corpus_bytes(), DEFAULT_CORPUS, None
    path = Path(data)
    if path.is_dir():
        return read_text_directory(path), str(path), None
    if path.exists():
        return read_text_file(path), str(path), None
    # lazy: requests (~0.1 s) loads only when a named corpus is fetched, not for every run
    from h2q_tui.data.download import CORPORA, fetch_corpus

    if data in CORPORA:
        train_path, heldout_path = fetch_corpus(data, progress=progress)
        return read_text_file(train_path), data, heldout_path
    raise UserError(
        f"data file not found: {data} (give a file, a directory, or one of: "
        f"{', '.join(sorted(CORPORA))})"
    )
