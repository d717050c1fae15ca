"""Plain-text columns for command output (``serve``'s model list, ``ollama list``)."""

from __future__ import annotations


def aligned(rows: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    """Rows of cells as lines whose columns line up however long a name is: each column as
    wide as its widest cell, two spaces apart; ``right``: the columns aligned right."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
