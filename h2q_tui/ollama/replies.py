"""What the server answers, one type each: a generate or chat :class:`Reply` (each streamed
piece and the final object), a :class:`ModelInfo` of ``/api/tags`` and ``/api/ps``, a
:class:`PullProgress` line. The server builds its JSON from these types (``to_json``) and the
client parses into them (``from_json``), so each field is named in one place. Pure Python.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

NDJSON = "application/x-ndjson"  # the media type of a streamed answer
STATS = (  # counts and integer nanoseconds, on the final object only
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def _count(value: Any) -> int | None:
    """A count, size or duration as sent: None unless it is a number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class Reply:
    """One object of a ``/api/generate`` or ``/api/chat`` answer: a streamed piece (``done``
    false) or the final object, which alone carries ``done_reason`` and the :data:`STATS`."""

    model: str = ""
    created_at: str = ""
    text: str = ""  # "response" of generate, "message": {"content"} of chat
    chat: bool = False  # which of the two endpoints (not a field on the wire)
    done: bool = False
    done_reason: str | None = None
    context: list[int] | None = None  # generate's final object: prompt and reply token ids
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    # the tokens' log-probabilities, each as answer.logprob_json writes it: on a streamed
    # piece those of the tokens that made its text, on an unstreamed answer all of them
    logprobs: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        """The object as the server sends it (absent fields left out)."""
        obj: dict[str, Any] = {"model": self.model, "created_at": self.created_at}
        if self.chat:
            obj["message"] = {"role": "assistant", "content": self.text}
        else:
            obj["response"] = self.text
        obj["done"] = self.done
        optional = {"done_reason": self.done_reason, "context": self.context}
        optional |= {key: getattr(self, key) for key in STATS}
        optional["logprobs"] = self.logprobs
        return obj | {key: value for key, value in optional.items() if value is not None}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], chat: bool) -> Reply:
        """The object as a client reads it: a field missing or of the wrong type is absent
        (None), since any Ollama-compatible server may have sent it."""
        if chat:
            message = obj.get("message")
            text = message.get("content") if isinstance(message, Mapping) else None
        else:
            text = obj.get("response")
        context = obj.get("context")
        if not isinstance(context, list) or not all(isinstance(t, int) for t in context):
            context = None
        logprobs = obj.get("logprobs")
        if not isinstance(logprobs, list) or not all(isinstance(t, Mapping) for t in logprobs):
            logprobs = None
        return cls(
            model=_string(obj.get("model")) or "",
            created_at=_string(obj.get("created_at")) or "",
            text=_string(text) or "",
            chat=chat,
            done=bool(obj.get("done")),
            done_reason=_string(obj.get("done_reason")),
            context=context,
            **{key: _count(obj.get(key)) for key in STATS},
            logprobs=[dict(t) for t in logprobs] if logprobs is not None else None,
        )

    @property
    def tokens_per_s(self) -> float | None:
        """``eval_count / eval_duration · 1e9`` when both are there and positive, else None."""
        if self.eval_count is None or not self.eval_duration:
            return None
        return self.eval_count / self.eval_duration * 1e9

    @property
    def load_s(self) -> float | None:
        return None if self.load_duration is None else self.load_duration / 1e9


def piece_line(model: str, chat: bool) -> Callable[[str, bytes], bytes]:
    """``line(text, stamp)``: the NDJSON line of a streamed :class:`Reply` holding ``text``,
    created at ``stamp`` (RFC 3339 bytes), built faster than ``ndjson(reply.to_json())``: it
    runs once a token. The bytes around the two values are cut from that very line."""
    template = ndjson(Reply(model=model, created_at="\x00", text="\x01", chat=chat).to_json())
    head, rest = template.split(b"\\u0000")  # json writes the markers as \u0000, \u0001
    middle, tail = rest.split(b'"\\u0001"')
    dumps = json.JSONEncoder(ensure_ascii=False).encode

    def line(text: str, stamp: bytes) -> bytes:
        return b"".join((head, stamp, middle, dumps(text).encode(), tail))

    return line


def logprob_line(
    model: str, chat: bool, shape: Callable[[Any], dict[str, Any]]
) -> Callable[[Any, bytes], bytes]:
    """``line(piece, stamp)``: the NDJSON line of a streamed :class:`Reply` holding a piece
    that carries log-probabilities (``piece.text``, ``piece.logprobs``, each record made
    JSON by ``shape``). The pieces without them keep :func:`piece_line`'s faster line."""

    def line(piece: Any, stamp: bytes) -> bytes:
        records = [shape(record) for record in piece.logprobs]
        reply = Reply(model, stamp.decode(), piece.text, chat=chat, logprobs=records)
        return ndjson(reply.to_json())

    return line


@dataclass
class ModelInfo:
    """One model of ``/api/tags``; ``/api/ps`` adds the last three fields."""

    name: str = ""
    modified_at: str = ""
    size: int | None = None  # bytes
    digest: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # family, parameter_size, …
    expires_at: str | None = None  # when a loaded model unloads
    size_vram: int | None = None
    context_length: int | None = None

    def to_json(self) -> dict[str, Any]:
        obj = {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details,
        }
        if self.expires_at is None:
            return obj
        running = {"expires_at": self.expires_at, "size_vram": self.size_vram}
        return obj | running | {"context_length": self.context_length}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelInfo:
        details = obj.get("details")
        return cls(
            name=str(obj.get("name") or obj.get("model")),
            modified_at=_string(obj.get("modified_at")) or "",
            size=_count(obj.get("size")),
            digest=_string(obj.get("digest")) or "",
            details=dict(details) if isinstance(details, Mapping) else {},
            expires_at=_string(obj.get("expires_at")),
            size_vram=_count(obj.get("size_vram")),
            context_length=_count(obj.get("context_length")),
        )


@dataclass
class PullProgress:
    """One line of ``/api/pull``'s progress."""

    status: str
    completed: int | None = None  # bytes
    total: int | None = None
    digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        obj = {"status": self.status, "digest": self.digest}
        obj |= {"total": self.total, "completed": self.completed}
        return {key: value for key, value in obj.items() if value is not None}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PullProgress:
        return cls(
            status=str(obj.get("status", "")),
            completed=_count(obj.get("completed")),
            total=_count(obj.get("total")),
            digest=_string(obj.get("digest")),
        )

    def line(self) -> str:
        if self.total and self.completed is not None:
            return (
                f"{self.status} {100 * self.completed / self.total:5.1f}% of {self.total:,} bytes"
            )
        return self.status


def ndjson(obj: Mapping[str, Any]) -> bytes:
    """One NDJSON line: compact JSON (no NaN), then ``\\n``."""
    return (
        json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    )
