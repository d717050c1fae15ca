"""Token ids for the models: raw bytes by default, or a BPE ``tokenizer.json`` (tokenizers library).

Nothing is fetched from a hub: a tokenizer is always a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from h2q_tui.errors import UserError


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
