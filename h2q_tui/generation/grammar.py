"""Structured output: a JSON schema (or "any JSON object") as a :class:`Constraint` on the
token ids, through llguidance (the grammar engine; benchmarks/grammar_engines.py measures it
beside outlines-core and xgrammar on our vocabularies).

The engine sees the model's vocabulary as the bytes of each id (a byte model: 256 one-byte
tokens) plus one end token of our own, which the generator never samples as a token: the
constraint ``can_end`` once the text is complete (the generator then weighs ending against
the ids still allowed) and is ``finished`` once ending is the only way on, so the output
always parses and validates against the schema — unless the token budget runs out first
(then the reason is ``length``, as with OpenAI and Ollama).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import llguidance
import numpy as np
import torch

ANY_OBJECT: dict[str, Any] = {"type": "object"}  # Ollama's format "json", OpenAI's json_object


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads: each id's bytes, and the end token."""

    def __init__(self, vocabulary: list[bytes]) -> None:
        self.tokens = list(vocabulary) + [b"<end>"]
        self.eos_token_id = len(vocabulary)
        self.bos_token_id = None
        self.special_token_ids = [self.eos_token_id]
        self._ids = {token: i for i, token in enumerate(vocabulary) if token}
        self._longest = max((len(t) for t in self._ids), default=1)

    def __call__(self, text: bytes) -> list[int]:
        # llguidance tokenizes only to check the grammar's fixed strings: greedy longest match
        ids, at = [], 0
        while at < len(text):
            for size in range(min(self._longest, len(text) - at), 0, -1):
                token = self._ids.get(text[at : at + size])
                if token is not None:
                    ids.append(token)
                    at += size
                    break
            else:
                raise ValueError(f"byte {text[at]} has no token")
        return ids


_tokenizers: dict[tuple[bytes, ...], llguidance.LLTokenizer] = {}


def _tokenizer(vocabulary: list[bytes]) -> llguidance.LLTokenizer:
    key = tuple(vocabulary)
    if key not in _tokenizers:
        wrapper = llguidance.TokenizerWrapper(_Vocabulary(vocabulary))
        _tokenizers[key] = llguidance.LLTokenizer(wrapper, n_vocab=len(vocabulary) + 1)
    return _tokenizers[key]


def check_schema(schema: Any) -> dict[str, Any]:
    """The schema when it is one (a JSON object valid under its meta-schema) and the engine
    can constrain to it (checked without a vocabulary: before any model loads); ValueError."""
    if not isinstance(schema, dict):
        raise ValueError('format must be "json" or a JSON schema (an object)')
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"invalid JSON schema: {exc.message}") from None
    problem = llguidance.LLMatcher.validate_grammar(_grammar(schema))
    if problem:
        raise ValueError(f"unsupported JSON schema: {_first(problem)}")
    return schema


def _grammar(schema: dict[str, Any]) -> str:
    """The engine's grammar of a schema (compact JSON: no whitespace between tokens)."""
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
    except ValueError as exc:
        raise ValueError(f"invalid JSON schema: {_first(str(exc))}") from None


class JsonConstraint:
    """The ids that keep the text a prefix of JSON valid under one schema."""

    def __init__(self, schema: dict[str, Any], vocabulary: list[bytes]) -> None:
        self.size = len(vocabulary)
        tokenizer = _tokenizer(vocabulary)
        self.matcher = llguidance.LLMatcher(tokenizer, _grammar(schema), log_level=0)
        if self.matcher.is_error():
            raise ValueError(f"unsupported JSON schema: {_first(self.matcher.get_error())}")
        self._words = np.zeros((self.size + 1 + 31) // 32, dtype=np.uint32)  # bit mask
        self._address = self._words.ctypes.data
        self._allowed = torch.zeros(self.size, dtype=torch.bool)
        self._can_end = self._finished = False
        self._fresh = False
        try:
            self._next()  # the engine tokenizes the schema's words lazily: on this first mask
        except RuntimeError:
            error = self.matcher.get_error()
            no_token = "has no token" in error
            why = "it needs a byte that no token of the model spells" if no_token else _first(error)
            raise ValueError(f"unsupported JSON schema: {why}") from None

    def _next(self) -> None:
        """The mask of the text so far, once per token (llguidance's bits, unpacked)."""
        if self._fresh:
            return
        self.matcher.unsafe_compute_mask_ptr(self._address, self._words.nbytes)
        if self.matcher.is_error():
            raise RuntimeError(f"grammar engine: {_first(self.matcher.get_error())[:200]}")
        bits = np.unpackbits(self._words.astype("<u4").view(np.uint8), bitorder="little")
        mask = bits[: self.size + 1].view(np.bool_)
        self._allowed = torch.from_numpy(mask[: self.size])
        self._can_end = bool(mask[self.size])
        self._finished = not mask[: self.size].any()
        self._fresh = True

    def allowed(self) -> torch.Tensor:
        self._next()
        return self._allowed

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"grammar refused token {token}: {self.matcher.get_error()}")
        self._fresh = False

    @property
    def can_end(self) -> bool:
        self._next()
        return self._can_end

    @property
    def finished(self) -> bool:
        self._next()
        return self._finished


def json_constraint(format: Any, vocabulary: list[bytes]) -> JsonConstraint:
    """The constraint of a request's ``format``: ``"json"`` (any JSON object) or a JSON
    schema; ValueError (one line) for anything else or a schema that is not one."""
    if format == "json":
        return JsonConstraint(ANY_OBJECT, vocabulary)
    return JsonConstraint(check_schema(format), vocabulary)


def _first(text: str) -> str:
    """The engine's message on one line: its first, and its last when the first announces
    more (``regex parse error:`` then the pattern and a caret line, then the reason)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "the grammar engine refused it"
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1].removeprefix('error: ')}"
    return lines[0]
