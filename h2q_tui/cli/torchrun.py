"""``h2q-tui torchrun ARGS``: PyTorch's launcher (``torchrun ARGS``) with a quiet, clean stop.

torchrun turns Ctrl-C, SIGTERM or SIGHUP into a ``SignalException``: it forwards the signal
to every rank, waits for them, then raises it again, which prints a ~30-line traceback and
exits 1 however cleanly the ranks saved. Here the same launcher runs in-process; a stop
signal ends it with one line and 128 + the signal number, as a one-process run does. Its
warnings about the shutdown are silenced; errors are left as torch reports them.
"""

from __future__ import annotations

import logging
import sys

ELASTIC_LOGGER = "torch.distributed.elastic"


def main(argv: list[str]) -> int:
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    logging.getLogger(ELASTIC_LOGGER).setLevel(logging.ERROR)  # "Received 2 death signal" ...
    try:
        run.main(argv)
    except SignalException as stop:
        code = 128 + int(stop.sigval)
        print(
            f"h2q-tui torchrun: stopped by {stop.sigval.name}: every rank has ended (rank 0 "
            f"saved the run; its run_finished says why); exit {code}",
            file=sys.stderr,
            flush=True,
        )
        return code
    return 0
