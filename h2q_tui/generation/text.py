"""Tokens ↔ text for generation: bytes or a BPE tokenizer, streamed UTF-8, stop strings."""

from __future__ import annotations

import codecs

DEFAULT_PROMPT = "Once upon a time"  # what every command and pane continues unless told


class Codec:
    """Encodes prompts to token ids and decodes ids back to bytes (raw bytes by default)."""

    def __init__(self, tokenizer=None) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return list(text.encode("utf-8"))
        return self.tokenizer.encode(text.encode("utf-8")).tolist()

    def decode(self, ids: list[int]) -> str:
        raw = self.tokenizer.decode(ids) if self.tokenizer is not None else bytes(ids)
        return raw.decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token id stands for (a byte model: that byte)."""
        return bytes([token]) if self.tokenizer is None else self.tokenizer.token_bytes(token)

    def vocabulary(self, size: int) -> list[bytes]:
        """The bytes of every id below ``size`` (what a grammar engine matches tokens by)."""
        return [self.token_bytes(token) for token in range(size)]


class TextStream:
    """Turns generated ids into text pieces as they arrive.

    Bytes go through an incremental UTF-8 decoder, so a character split over several
    tokens appears once complete and invalid bytes become U+FFFD instead of raising. Text
    that could be the start of a stop string is held back until it is decided; once a stop
    string appears the text is cut before it and ``stopped`` is set.
    """

    def __init__(self, codec: Codec, stop: tuple[str, ...] = ()) -> None:
        self.codec, self.stop = codec, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # decoded so far (may run past a stop string)
        self.emitted = 0  # characters of ``text`` handed out
        self.stopped = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """Add a token; returns the newly safe text (maybe empty)."""
        self.ids.append(token)
        if self.codec.tokenizer is None:
            self.text += self._utf8.decode(bytes([token]))
        else:
            decoded = self.codec.decode(self.ids)
            if not decoded.endswith("\ufffd"):  # a BPE piece of a character still to come
                self.text = decoded
        return self._release(final=False)

    def finish(self) -> str:
        """Flush what was held back (end of generation)."""
        if self.codec.tokenizer is None:
            self.text += self._utf8.decode(b"", final=True)
        else:
            self.text = self.codec.decode(self.ids)
        return self._release(final=True)

    @property
    def output(self) -> str:
        """The generated text, cut at a stop string."""
        return self.text[: self._cut()] if self.stopped else self.text

    def _cut(self) -> int:
        hits = [self.text.find(s) for s in self.stop]
        found = [h for h in hits if h >= 0]
        return min(found) if found else len(self.text)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = self._cut()
        if end < len(self.text):
            self.stopped = True
        elif not final:
            end -= self._partial_stop()
        piece = self.text[self.emitted : max(end, self.emitted)]
        self.emitted += len(piece)
        return piece

    def _partial_stop(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        best = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:size]):
                    best = size
                    break
        return best
