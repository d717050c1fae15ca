"""The ``h2q-tui`` command: :mod:`h2q_tui.cli.main` dispatches, one module per subcommand."""
