import sys

from h2q_tui.cli import main

sys.exit(main())
