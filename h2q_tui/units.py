"""How sizes and errors are written for people: one copy of each rule, for every floor."""

from __future__ import annotations

from typing import Any

MAX_REASON_CHARS = 160  # a reason fits one terminal line with its prefix


def format_size(n: Any, binary: bool = True) -> str:
    """``1.2 GiB`` (binary) or ``1.3 GB`` (decimal, as a budget in GB is written); n/a otherwise."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "n/a"
    base, units = (
        (1024, ("KiB", "MiB", "GiB", "TiB", "PiB"))
        if binary
        else (1000, ("KB", "MB", "GB", "TB", "PB"))
    )
    if abs(n) < base:
        return f"{int(n)} B"
    value = n / base
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{value:.1f} {unit}"
        value /= base
    return f"{value:.1f} {units[-1]}"


def short_size(n: Any) -> str:
    """``312M``, ``2.0G``: binary sizes in at most five characters, for compact cards."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "n/a"
    if n < 1024**3:
        return f"{n / 1024**2:.0f}M"
    gib = n / 1024**3
    return f"{gib:.1f}G" if gib < 100 else f"{gib:.0f}G"


def first_line(exc: BaseException) -> str:
    """An exception's first line, at most 160 characters (its type's name when it says nothing)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:MAX_REASON_CHARS] if lines else type(exc).__name__


def first_sentence(exc: BaseException) -> str:
    """The first sentence of :func:`first_line`: the reason without the advice that follows it."""
    return first_line(exc).split(". ")[0]


def format_number(value: Any) -> str:
    """A number for a message: a float as %g, an integer too long to read (a pasted value)
    by its first digits and its length."""
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}… ({len(text.lstrip('-'))} digits)"
