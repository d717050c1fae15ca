"""Display rules the panes share: model output made visible, one-line readouts, short paths."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

# Untrained byte models emit control bytes: each shows as a visible symbol (␀…␟, ␡, and � for
# the C1 controls), so a continuation never moves the cursor or vanishes; \t and \n stay.
_VISIBLE = {c: 0x2400 + c for c in range(32) if c not in (9, 10)}
_VISIBLE.update({127: 0x2421, **{c: 0xFFFD for c in range(0x80, 0xA0)}})


def printable(text: str) -> str:
    """``text`` with every control character shown as a visible symbol (tabs and newlines kept)."""
    return text.translate(_VISIBLE)


def one_line(text: str, style: str = "") -> Text:
    """A fixed one-line Static: cut with … at the width, never wrapped."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis", end="")


def short_path(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
