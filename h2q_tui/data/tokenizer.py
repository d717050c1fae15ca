"""Token ids for the models: raw bytes by default, or a BPE ``tokenizer.json`` (tokenizers library).

Nothing is fetched from a hub: a tokenizer is always a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from h2q_tui.errors import UserError


def byte_level_table() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): each printable byte stands for itself, the
    other bytes for the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [byte for byte in range(256) if byte not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


class BpeTokenizer:
    """A ``tokenizers`` tokenizer read from a local tokenizer.json."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer  # lazy: only BPE runs pay for it (byte runs never)

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"tokenizer file not found: {self.path}")
        try:
            self._tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception
            raise UserError(
                f"{self.path} is not a tokenizers tokenizer.json ({str(exc)[:120]})"
            ) from None
        self.vocab_size = self._tokenizer.get_vocab_size()

    def encode(self, data: bytes) -> torch.Tensor:
        """Token ids (int32) of UTF-8 text (undecodable bytes become U+FFFD)."""
        ids = self._tokenizer.encode(data.decode("utf-8", errors="replace")).ids
        return torch.tensor(ids, dtype=torch.int32)

    def decode(self, ids: list[int]) -> bytes:
        return self._tokenizer.decode(ids).encode("utf-8")

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes one id stands for (what a grammar engine matches it by): a
        byte-level token's characters mapped back to bytes, a byte-fallback ``<0xNN>`` its
        byte, any other token its decoded text."""
        piece = self._tokenizer.id_to_token(token) or ""
        if type(self._tokenizer.decoder).__name__ == "ByteLevel":
            table = _BYTE_LEVEL
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return self.decode([token])


_BYTE_LEVEL = byte_level_table()
