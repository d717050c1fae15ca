"""What a request says, read the same way by the server and the bridge: ``OLLAMA_HOST``,
``keep_alive`` durations, model names, options and the chat template. What the server answers
is in :mod:`h2q_tui.ollama.replies`. Pure Python (no torch, no HTTP), so the client stays light.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from h2q_tui.units import format_number

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
BUSY = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's 503


# ----------------------------------------------------------------------------- OLLAMA_HOST
def parse_host(value: str | None) -> str:
    """The base URL an Ollama client talks to, from ``OLLAMA_HOST`` (or ``--host``).

    The official client's rules: empty → ``http://127.0.0.1:11434``; no scheme → ``http``
    and port 11434; ``http://`` without a port → 80, ``https://`` → 443; ``:PORT`` alone →
    127.0.0.1; IPv6 addresses keep (or get) their brackets; a path is kept without its
    trailing slash.
    """
    text = (value or "").strip()
    scheme, sep, rest = text.partition("://")
    port = DEFAULT_PORT
    if not sep:
        scheme, rest = "http", text
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443
    split = urllib.parse.urlsplit(f"{scheme}://{rest}")
    host = split.hostname or DEFAULT_HOST
    try:
        port = split.port or port
    except ValueError:
        raise ValueError(f"bad port in {value!r}") from None
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    path = split.path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


# ----------------------------------------------------------------------------- durations
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
MAX_KEEP_ALIVE_S = 2**63 / 1e9  # Go's longest duration (~292 years): Ollama's own limit


def parse_duration(value: Any) -> float | None:
    """Seconds of a ``keep_alive``: a number of seconds or a Go duration (``5m``, ``1h30m``,
    ``300ms``); negative means forever (None). ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a duration such as '5m' or seconds, got {value}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf  # an integer too large for a float
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)  # "300": seconds
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(body):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(body) or not body:
                raise ValueError(
                    f"keep_alive {value!r} is not a duration (e.g. '5m', '30s', '1h', 0, -1)"
                ) from None
            seconds *= sign
    else:
        raise ValueError(f"keep_alive must be a duration such as '5m' or seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds > MAX_KEEP_ALIVE_S:
        raise ValueError(
            f"keep_alive {shorten(value)} is out of range: at most {MAX_KEEP_ALIVE_S:.0f} "
            "seconds (~292 years), or negative for forever"
        )
    return None if seconds < 0 else seconds


def shorten(value: Any) -> str:
    """``value`` as JSON, cut to about 24 characters (an integer as ``format_number`` writes it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return format_number(value)
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:23] + "…"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "forever"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


# ----------------------------------------------------------------------------- names
_PART_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"
NAME = re.compile(rf"{_PART_NAME}(?::{_PART_NAME})?")
MAX_NAME = 200


def normalize_name(name: Any) -> str:
    """``name:tag`` (tag ``latest`` when absent); ValueError for a malformed name (``../x``)."""
    if not isinstance(name, str) or not name:
        raise ValueError("model is required")
    if len(name) > MAX_NAME or not NAME.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 60 else name[:57] + "…"
        raise ValueError(f"invalid model name {shown!r}: expected name or name:tag")
    return name if ":" in name else f"{name}:latest"


def safe_name(text: str) -> str:
    """A folder or run name made into a model-name part: other characters become ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.+_")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return cleaned or "model"


# ----------------------------------------------------------------------------- options
MAX_PREDICT = 4096  # the server's default cap: byte models have no end-of-text token
DEFAULT_PREDICT = 200  # num_predict when a request gives none (h2q-tui generate's default)


@dataclass(frozen=True)
class Options:
    """The options a request may give (``None``: the server's default)."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    num_predict: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    steer: str = ""  # ours: steering towards a word (other servers ignore these three)
    strength: float = 0.0
    layer: int = 0


_FLOATS = (
    "temperature",
    "top_p",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "strength",
)
_INTS = ("top_k", "num_predict", "seed", "layer")


def _number(name: str, value: Any, integer: bool) -> float | int:
    """A JSON number as the option's type; ValueError for another type, NaN/Inf, a fraction
    where an integer is due, or an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"option {name!r} must be {kind}, got {json.dumps(value)[:40]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"option {name!r} must be finite")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"option {name!r} must be an integer, got {value}")
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"option {name!r} is out of range, got {shorten(value)}") from None


def parse_options(raw: Any, max_predict: int = MAX_PREDICT) -> Options:
    """Options from a request's ``options`` object; ValueError (one line) for a wrong type.

    Options this server does not use (``num_ctx``, ``mirostat``…) are ignored, as Ollama
    ignores those a model does not take. Ollama's conventions are applied here:
    ``num_predict`` -1 or -2 ("no limit", "fill the context") mean the server's cap,
    ``max_predict``; ``seed`` -1 means a random one. The ranges of the sampling settings are
    the generator's (``h2q_tui.generation.sampling.LIMITS``), checked by the server.
    """
    if raw is None:
        return Options()
    if not isinstance(raw, Mapping):
        raise ValueError("options must be an object")
    values: dict[str, Any] = {}
    for name in _FLOATS + _INTS:
        if raw.get(name) is not None:
            values[name] = _number(name, raw[name], name in _INTS)
    if raw.get("stop") is not None:
        stop = raw["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
            raise ValueError("option 'stop' must be a string or a list of strings")
        values["stop"] = tuple(s for s in stop if s)
    if raw.get("steer") is not None:
        if not isinstance(raw["steer"], str):
            raise ValueError("option 'steer' must be a word (a string)")
        values["steer"] = raw["steer"]
    if values.get("seed") == -1:
        del values["seed"]  # random
    options = Options(**values)
    if options.strength != 0 and not options.steer:
        raise ValueError("invalid option: strength needs a steer word")
    if options.num_predict is not None:
        if options.num_predict in (-1, -2):
            options = Options(**{**options.__dict__, "num_predict": max_predict})
        elif not 0 <= options.num_predict <= max_predict:
            raise ValueError(
                f"invalid option: num_predict must be in 0..{max_predict} (or -1), "
                f"got {shorten(options.num_predict)}"
            )
    return options


# ----------------------------------------------------------------------------- chat
CHAT_TEMPLATE = """\
{system}                      (the system messages, joined by blank lines, then a blank line)
User: {content}               (one line per message: User, Assistant or Tool, then its text)
Assistant: {content}
Assistant:                    (the model continues from here; it stops at a new 'User:' line)
"""
CHAT_STOPS = ("\nUser:",)
ROLES = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


def render_chat(messages: Any) -> str:
    """The plain prompt of a chat (see :data:`CHAT_TEMPLATE`); ValueError for bad messages."""
    if not isinstance(messages, list):
        raise ValueError("messages must be a list")
    system, lines = [], []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError("each message must be an object with role and content")
        role, content = message.get("role"), message.get("content") or ""
        if not isinstance(content, str):
            raise ValueError("a message's content must be a string")
        if role == "system":
            system.append(content)
        elif role in ROLES:
            lines.append(f"{ROLES[role]}: {content}\n")
        else:
            raise ValueError(
                f"unknown message role {str(role)[:20]!r} (system, user, assistant, tool)"
            )
    head = "\n\n".join(system) + "\n\n" if system else ""
    return head + "".join(lines) + "Assistant:"
