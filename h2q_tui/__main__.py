"""``python -m h2q_tui`` is the ``h2q-tui`` command."""

import sys

from h2q_tui.cli import main

sys.exit(main())
