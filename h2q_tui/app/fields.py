"""Form widgets that own the keys typed into them, so a letter meant for a field never
reaches a dashboard key (``t`` trains, ``x`` stops, ``q`` quits); a footer of whole keys."""

from __future__ import annotations

from textual import events
from textual.widgets import Footer, Select
from textual.widgets._footer import FooterKey


def _is_typed(character: str | None) -> bool:
    """A printable character other than space (space opens the list)."""
    return character is not None and character.isprintable() and not character.isspace()


class FieldSelect(Select):
    """A Select whose typed characters pick the next option starting with them (``s``
    cycles sample → steer) instead of falling through to the app's single-letter keys."""

    def check_consume_key(self, key: str, character: str | None) -> bool:
        return _is_typed(character) or super().check_consume_key(key, character)

    async def _on_key(self, event: events.Key) -> None:
        if self.expanded or not _is_typed(event.character):
            return  # the open list searches as one types; arrows, Enter, space: the Select's
        event.stop()
        event.prevent_default()
        self.pick_starting_with(str(event.character))

    def pick_starting_with(self, character: str) -> None:
        """The next option (after the current one, wrapping) whose label starts with it."""
        options = [(str(prompt), value) for prompt, value in self._options if value != self.NULL]
        values = [value for _, value in options]
        start = values.index(self.value) + 1 if self.value in values else 0
        for offset in range(len(options)):
            label, value = options[(start + offset) % len(options)]
            if label.lower().startswith(character.lower()):
                self.value = value
                return


class FittingFooter(Footer):
    """The key footer, less the keys that do not fit whole before ``^p palette``: a key cut
    at the edge showed as stray characters beside it. ``?`` lists every key."""

    def on_resize(self) -> None:
        for key in self.query(FooterKey):
            key.display = True  # wider now: try every key again
        self.call_after_refresh(self.fit_keys)

    async def recompose(self) -> None:
        await super().recompose()
        self.call_after_refresh(self.fit_keys)

    def fit_keys(self) -> None:
        keys = list(self.query(FooterKey))
        palette = [key for key in keys if key.has_class("-command-palette")]
        right = palette[0].region.x if palette else self.region.right
        for key in keys:
            if not key.has_class("-command-palette") and key.region.right > right:
                key.display = False
