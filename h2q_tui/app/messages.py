"""Messages panes send each other through the shell, so no pane queries another."""

from __future__ import annotations

from textual.message import Message


class OpenInGenerate(Message):
    """Load this checkpoint or crystallized folder in the Generate pane and show that pane."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path


class GenerationSourceChanged(Message):
    """The Generate pane's model changed: ``source`` names it ("" when it has none)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source
