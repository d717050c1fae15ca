"""Helpers for the Pilot tests: wait for the app to reach a state, read what a widget shows."""

from __future__ import annotations

import io
from collections.abc import Callable

from rich.console import Console
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import Static


async def wait_until(
    pilot: Pilot, predicate: Callable[[], bool], what: str = "condition", tries: int = 400
) -> None:
    """Let the app run in 50 ms slices until ``predicate()`` holds (at most ``tries`` slices)."""
    for _ in range(tries):
        if predicate():
            return
        await pilot.pause(0.05)
    assert predicate(), f"timed out waiting for {what}"


def text_of(widget: Static) -> str:
    """The plain text a Static shows (str, rich Text, or any rich renderable)."""
    content = widget.content
    if isinstance(content, (str, Text)):
        return str(content)
    console = Console(file=io.StringIO(), width=150, color_system=None, legacy_windows=False)
    console.print(content)
    return console.file.getvalue()


def screen_lines(app) -> list[str]:
    """The plain text of every row of the screen as drawn now (what a person sees)."""
    strips = app.screen._compositor.render_strips()
    return ["".join(segment.text for segment in strip) for strip in strips]
