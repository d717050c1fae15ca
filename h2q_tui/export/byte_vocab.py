"""The 256-byte vocabulary as a GGUF tokenizer llama.cpp's byte-level BPE accepts: token i is
byte i, with no merges that ever apply, so every byte stays its own token."""

from __future__ import annotations

from gguf import GGUFWriter, TokenType

VOCAB_SIZE = 256
# A byte-level BPE tokenizer needs a merges list; this one can never fire: its right side is two
# characters that no other merge could build, so the tokens stay single bytes.
INERT_MERGE = "\u0100 \u0100\u0100"
# llama.cpp takes token 11 as begin/end-of-text when a BPE file names none; byte 0 (NUL) is
# named instead, a byte ordinary text never holds, and no begin token is added to prompts.
BOUNDARY_TOKEN = 0


def byte_symbols() -> list[str]:
    """The printable character that byte-level BPE writes for each byte, indexed by byte.

    Bytes that print as themselves (the visible Latin-1 ranges) keep their character; the
    others (controls, space, 0x7F-0xA0, 0xAD) take code points from 256 up, in byte order.
    """
    visible = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    kept = set(visible)
    symbols, spare = [], 256
    for byte in range(VOCAB_SIZE):
        if byte in kept:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(spare))
            spare += 1
    return symbols


def add_byte_tokenizer(writer: GGUFWriter) -> None:
    """Write the byte vocabulary's tokenizer keys: model, pre-tokenizer, tokens, merges, ids."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(byte_symbols())
    writer.add_token_types([TokenType.NORMAL] * VOCAB_SIZE)
    writer.add_token_merges([INERT_MERGE])
    writer.add_bos_token_id(BOUNDARY_TOKEN)
    writer.add_eos_token_id(BOUNDARY_TOKEN)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
