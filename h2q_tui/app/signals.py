"""SIGTERM and SIGHUP under the dashboard save like ``--no-ui`` does: checkpoint, then exit.

A scheduler, ``timeout``, ``docker stop`` (SIGTERM) or a closed terminal / dropped SSH session
(SIGHUP) would otherwise kill the process mid-run. The handlers run on the app's event loop
(``loop.add_signal_handler``), ask the trainer to stop after its current step (a plain
attribute, no locks), and exit with 128 + the signal number once the checkpoint is written.
The stop request goes straight to the trainer, so it saves even when the terminal is gone
and the UI can no longer draw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from typing import Any

STOP_SIGNALS = {signal.SIGTERM: "terminated", signal.SIGHUP: "hangup"}


def install_stop_signals(app: Any) -> None:
    """Route SIGTERM/SIGHUP to ``app.stop_on_signal(signum, reason)`` on its event loop."""
    loop = asyncio.get_running_loop()
    for signum, reason in STOP_SIGNALS.items():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(
                signum, lambda s=signum, r=reason: app.call_later(app.stop_on_signal, s, r)
            )


def exit_code(signum: int) -> int:
    return 128 + int(signum)


def exit_soon(code: int, after_s: float = 3.0) -> None:
    """End the process with ``code`` if a normal exit has not happened within ``after_s``.

    Called once the checkpoint is written and metrics.jsonl closed: after SIGHUP the terminal
    is gone, and Textual's shutdown can wait forever on it (seen: a closed tmux session left
    the process spinning after it had saved).
    """
    timer = threading.Timer(after_s, os._exit, args=(code,))
    timer.daemon = True
    timer.start()
