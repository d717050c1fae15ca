"""Modal screens: help, quit confirmation, config diff, errors. What they show from
elsewhere (paths, config values, error messages) is literal text, never markup."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class _Modal(ModalScreen[bool]):
    BINDINGS = [
        Binding("escape", "dismiss_false", "Close"),
        Binding("q", "dismiss_false", "Close", show=False),
    ]

    def action_dismiss_false(self) -> None:
        self.dismiss(False)


HELP_TWO_COLUMNS = 150  # from this terminal width help shows its rows in two tables


class HelpScreen(_Modal):
    """Every key binding of the app, generated from its BINDINGS, in a box that scrolls
    (arrows, PageUp/PageDown, Home/End, the wheel) where the terminal is too short."""

    BINDINGS = [*_Modal.BINDINGS, Binding("question_mark", "dismiss_false", "Close", show=False)]

    def __init__(self, bindings: list[tuple[str, str]]) -> None:
        super().__init__()
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        # a wide terminal gets the rows in two tables side by side: all of them at 160x48
        halves = [self.bindings]
        if self.app.size.width >= HELP_TWO_COLUMNS:
            middle = (len(self.bindings) + 1) // 2
            halves = [self.bindings[:middle], self.bindings[middle:]]
        with Vertical(id="dialog", classes="help" + (" -two" if len(halves) > 1 else "")):
            with VerticalScroll(id="help-keys"), Horizontal(id="help-columns"):
                for index, half in enumerate(halves):
                    table = Table(
                        title="h2q-tui keys" if index == 0 else " ", expand=True, show_edge=False
                    )
                    table.add_column("key", style="bold cyan", no_wrap=True)
                    table.add_column("action")
                    for key, description in half:
                        table.add_row(Text(key), Text(description))
                    yield Static(table, classes="help-table")
            yield Static(
                "↑/↓ PgUp/PgDn scroll · Ctrl+P: the same actions (and themes) · Esc closes",
                classes="hint",
            )

    def on_mount(self) -> None:
        self.query_one("#help-keys").focus()  # the arrows, PageDown, End scroll at once


class ConfirmScreen(_Modal):
    """A yes/no question; dismisses with True on y/Enter."""

    BINDINGS = [
        *_Modal.BINDINGS,
        Binding("y", "yes", "Yes"),
        Binding("enter", "yes", "Yes", show=False),
        Binding("n", "dismiss_false", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(self.question))
            yield Static("[b]y[/b] yes   [b]n[/b]/Esc no", classes="hint")

    def action_yes(self) -> None:
        self.dismiss(True)


class ConfigDiffScreen(_Modal):
    """The config keys that differ between the runs on screen."""

    BINDINGS = [*_Modal.BINDINGS, Binding("d", "dismiss_false", "Close", show=False)]

    def __init__(self, names: list[str], rows: list[tuple[str, list[Any]]]) -> None:
        super().__init__()
        self.names, self.rows = names, rows

    def compose(self) -> ComposeResult:
        table = Table(title="config differences", expand=True, show_edge=False)
        table.add_column("key", style="bold")
        for name in self.names:
            table.add_column(Text(name))
        for key, values in self.rows:
            table.add_row(Text(key), *[Text(str(v)) for v in values])
        with Vertical(id="dialog"):
            yield Static(
                table
                if self.rows
                else "The runs' configs are identical."
                if len(self.names) > 1
                else "Only one run is shown: attach several run dirs to compare configs."
            )
            yield Static("Esc closes.", classes="hint")


class ErrorScreen(_Modal):
    """A worker error shown as a modal: the app stays alive."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="error"):
            yield Static(Text.assemble(("Error", "bold red"), "\n\n", self.message))
            yield Static("Esc closes.", classes="hint")
