"""The dashboard's one key table: the app's bindings, the help screen and the command palette
are all built from it."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

LR_STEP = 1.25  # raise/lower keys multiply the LR by this (or its inverse)


@dataclass(frozen=True)
class KeyRow:
    """One key: what help shows, the action it runs, and where it is bound.

    ``pane`` names the pane whose own binding runs ``action`` ("" for an app action);
    ``bind`` the Textual key names the app binds ("" where the pane binds the key);
    ``footer`` the row's place among the app's bindings (the footer shows them in that
    order as far as the width allows), with ``label`` and ``show`` for the footer;
    ``engine`` marks what acts on a run this process trains (off when attached).
    """

    keys: str
    action: str
    description: str
    pane: str = ""
    bind: str = ""
    footer: int = 0
    label: str = ""
    show: bool = True
    engine: bool = False

    def binding(self) -> Binding:
        return Binding(self.bind, self.action, self.label, show=self.show)


def _app(keys: str, action: str, description: str, bind: str, footer: int, label: str, **kw):
    return KeyRow(keys, action, description, bind=bind, footer=footer, label=label, **kw)


def _pane(pane: str, keys: str, action: str, description: str, engine: bool = False) -> KeyRow:
    return KeyRow(keys, action, f"{pane.capitalize()}: {description}", pane=pane, engine=engine)


def _show_pane(key: str, pane: str, title: str, more: str = "") -> KeyRow:
    description = f"Show the {title} pane{more}"
    return _app(key, f"pane('{pane}')", description, key, 9 + int(key), title, show=False)


# help and the command palette list the keys in this order; an app row reads
# _app(keys in help, action, description, keys bound, place in the footer, footer label)
KEYS: tuple[KeyRow, ...] = (
    _app("t", "start", "Start training (or --autostart)", "t", 1, "Train", engine=True),
    _app("p / space", "toggle_pause", "Pause / resume", "p,space", 2, "Pause", engine=True),
    _app("x", "stop", "Stop training (saves a checkpoint first)", "x", 3, "Stop+save", engine=True),
    _app("c", "save", "Save a checkpoint now", "c", 6, "Save", engine=True),
    _app("n", "sample", "Sample the Thought Stream now", "n", 7, "Sample", engine=True),
    _app(
        "+",
        "lr_up",
        f"Raise the learning rate ×{LR_STEP}",
        "plus,equals_sign",
        8,
        f"LR ×{LR_STEP}",
        engine=True,
    ),
    _app(
        "-",
        "lr_down",
        f"Lower the learning rate ÷{LR_STEP}",
        "minus",
        9,
        f"LR ÷{LR_STEP}",
        engine=True,
    ),
    _show_pane("1", "icu", "ICU"),
    _show_pane("2", "system", "System"),
    _show_pane("3", "generate", "Generate"),
    _show_pane("4", "crystal", "Crystal", " (crystallize + measure)"),
    _show_pane("5", "ollama", "Ollama", " (an Ollama model vs a local one)"),
    _show_pane("6", "metrics", "Metrics", " (every scalar charted)"),
    _app("u", "toggle_units", "Chart units: nats ↔ bits/byte", "u", 15, "nats/bpb"),
    _app("a", "cycle_axis", "Chart x axis: step → tokens → wall time", "a", 16, "x axis"),
    _app(
        "[",
        "smoothing(-0.05)",
        "Less EMA smoothing",
        "left_square_bracket",
        17,
        "Smooth −",
        show=False,
    ),
    _app(
        "]",
        "smoothing(0.05)",
        "More EMA smoothing",
        "right_square_bracket",
        18,
        "Smooth +",
        show=False,
    ),
    _app(
        "f", "focus_next_run", "Cards: focus the next attached run", "f", 19, "Next run", show=False
    ),
    _app(
        "d", "config_diff", "Config diff between attached runs", "d", 20, "Config diff", show=False
    ),
    _app("e", "export", "Export charts (CSV) and screen (SVG) into the run dir", "e", 21, "Export"),
    _pane("generate", "g / Enter", "generate", "stream a continuation of the prompt"),
    _pane("generate", "Esc", "cancel", "cancel (or leave a text field)"),
    _pane("generate", "←", "strength(-1)", "steering strength −0.1 (down to −2)"),
    _pane("generate", "→", "strength(1)", "steering strength +0.1 (up to +2)"),
    _pane("generate", "0", "strength_reset", "steering strength back to 0"),
    _pane("generate", "s", "snapshot", "snapshot the live model (run goes on)", engine=True),
    _pane("generate", "o", "open_checkpoint", "load a checkpoint (path, Enter)"),
    _pane("generate", "r", "readout", "steering readout vs strength 0"),
    _pane("generate", "f", "follow", "follow the run (swap in each new checkpoint)"),
    _pane("crystal", "s", "snapshot", "snapshot the live model as the source", engine=True),
    _pane("crystal", "o", "open_checkpoint", "a checkpoint as source (path, Enter)"),
    _pane("crystal", "r", "run", "crystallize + measure the ticked methods"),
    _pane("crystal", "Esc", "cancel", "cancel the sweep (rows so far stay)"),
    _pane("crystal", "g / Enter", "open_in_generate", "open the row in Generate"),
    _pane("crystal", "h", "hotstart", "hot start of the row (load → first token)"),
    _pane("ollama", "r", "run", "the prompt on the Ollama and the local model"),
    _pane("ollama", "l", "refresh", "probe the server again, list its models"),
    _pane("ollama", "s", "snapshot", "snapshot the live model as the local one", engine=True),
    _pane("ollama", "Esc", "cancel", "cancel both sides"),
    _pane("metrics", "/", "filter", "filter charts: substring or glob (Esc clears)"),
    _pane("metrics", "y", "log_y", "log-Y on/off (values ≤ 0 clipped to the least > 0)"),
    _pane("metrics", "← → ↑ ↓", "move(1, 0)", "move between the charts"),
    _pane("metrics", "Enter", "open", "the focused chart full size (Esc: back)"),
    _pane("metrics", "e", "export", "export the series shown (CSV) into the run dir"),
    _app("?", "help", "Help: every key", "question_mark", 4, "Help"),
    _app("q", "quit", "Quit (asks while training; saves first)", "q", 5, "Quit"),
)
PALETTE_ONLY = ("ctrl+p", "Command palette: these actions, themes")  # the help screen's last row


def _browser(keys: str, action: str, description: str, bind: str = "", label: str = "") -> KeyRow:
    return KeyRow(keys, action, f"Runs: {description}", pane="browser", bind=bind, label=label)


# the run browser (h2q-tui attach on a folder of runs): its own screen, so its own rows; a
# typed character goes to the filter, so only these keys act there
BROWSER_KEYS: tuple[KeyRow, ...] = (
    _browser("letters, digits", "", "filter: runs whose name or preset holds the typed text"),
    _browser("Backspace", "", "filter: delete its last character"),
    _browser("↑ / ↓", "", "move the highlight (PgUp/PgDn, Home/End)"),
    _browser("space", "toggle_select", "select / unselect the highlighted run", "space", "Select"),
    _browser(
        "Enter", "open", "open the selected runs overlaid (or the highlighted one)", "enter", "Open"
    ),
    _browser("Esc", "back", "clear the filter; with none, quit", "escape", "Quit"),
    _browser("q", "", "quit (with an empty filter; else q is typed)"),
    _browser("?", "help", "help: these keys", "question_mark", "Help"),
)

BINDINGS = [row.binding() for row in sorted(KEYS, key=lambda row: row.footer) if row.bind]
# app actions that act on a run this process trains, and the keys that run them
ENGINE_ACTIONS = frozenset(row.action for row in KEYS if row.engine and not row.pane)
ENGINE_KEYS = frozenset(key for row in KEYS if row.engine for key in row.bind.split(",") if key)
COMPARE_KEYS = ("f", "d")  # shown in the footer when several runs are attached


def available(attached: bool) -> tuple[KeyRow, ...]:
    """The rows that can act here: attached runs are read-only."""
    return tuple(row for row in KEYS if not (attached and row.engine))
