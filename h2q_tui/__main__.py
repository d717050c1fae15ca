"""``python -m h2q_tui`` is the ``h2q-tui`` command."""

import sys

from h2q_tui.system.openmp import prefer_passive_waiting

prefer_passive_waiting()  # before anything imports torch: libgomp reads it when it loads

from h2q_tui.cli.main import main  # noqa: E402

sys.exit(main())
