"""The dashboard in a browser: ``h2q-tui web`` on textual-serve."""
