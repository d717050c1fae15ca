"""Every way a dashboard or ``attach`` process is told to end ends it promptly, the run saved.

A stop signal (SIGTERM, SIGHUP, SIGINT), a terminal or web-tab pipe that closes, a UI that
fails: the trainer is asked to stop after its step (a plain attribute), it saves, and the
process exits with 128 + the signal number (1 after a UI failure). The event loop cannot be
relied on at such times: once a terminal is gone, Textual's output thread dies on EIO and
its bounded queue then blocks the loop for good. So nothing here waits on the loop:

- stop signals are read by a thread of their own from the interpreter's wakeup fd, so
  neither the loop nor the main thread (which a signal landing on another thread would not
  even wake) must be free; it asks the trainer to stop and wakes the app through
  ``call_soon_threadsafe``;
- a thread polls stdin for a hang-up only (POLLHUP/POLLERR) and raises SIGHUP on this
  process, for terminals and pipes that close without sending one;
- a daemon watchdog, once armed, waits for training to end and gives the app a few seconds
  to exit on its own; then it restores the terminal and ends the process with its code.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import termios
import threading
import time
from typing import Any

from h2q_tui.system.stop_signals import BY_SIGNUM

EXIT_UI_FAILED = 1
GRACE_S = 3.0  # after training has ended: the app's own shutdown gets this long
# leave the alternate screen, show the cursor, stop mouse and paste reports, kitty keys off
RESET_TERMINAL = (
    b"\x1b[<u\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1003l\x1b[?1015l\x1b[?1006l\x1b[?2004l"
)
PR_SET_PDEATHSIG = 1
WEB_PARENT_ENV = "H2Q_TUI_WEB_PARENT"  # set by ``h2q-tui web`` for its tabs: its own pid


class Lifeline:
    """The ways out of one app process that work whatever state its event loop is in."""

    def __init__(self, app: Any, engine: Any | None = None, grace_s: float = GRACE_S) -> None:
        self.app, self.engine, self.grace_s = app, engine, grace_s
        self.code: int | None = None  # set by the first stop signal
        self._armed = threading.Event()
        self._loop: Any = None

    def install(self, loop: Any) -> None:
        """Take over the stop signals and start the threads that watch for them (main thread)."""
        self._loop = loop
        for signum in BY_SIGNUM:  # a driver's own (Textual's web driver) needs the loop
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        try:
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            for signum in BY_SIGNUM:
                signal.signal(signum, _noted)
        except ValueError:  # not the main thread: Python delivers no signals here
            return
        self._wakeup = (reader, writer)  # kept open for the life of the process
        for target, name in (
            (self._read_signals, "h2q-signals"),
            (watch_hangup, "h2q-hangup-watch"),
            (self._watchdog, "h2q-watchdog"),
        ):
            threading.Thread(target=target, name=name, daemon=True).start()

    def _read_signals(self) -> None:
        """Each byte on the wakeup fd is a signal this process received, on whatever thread."""
        reader = self._wakeup[0]
        while data := reader.recv(64):
            for signum in data:
                if signum in BY_SIGNUM:
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        """Attributes, a thread-safe call and an event: nothing that waits on the app."""
        if self.code is not None:
            return  # saving already; the watchdog ends the process once it is saved
        stop = BY_SIGNUM[signal.Signals(signum)]
        self.code = stop.exit_code
        if self.engine is not None:
            self.engine.request_stop(stop.reason)
        if signum == signal.SIGHUP:  # the terminal is gone: stop the input thread's spinning
            exit_event = getattr(getattr(self.app, "_driver", None), "exit_event", None)
            if exit_event is not None:
                exit_event.set()
        with contextlib.suppress(RuntimeError):  # the loop has closed: the watchdog ends it
            self._loop.call_soon_threadsafe(self.app.call_later, self.app.stop_on_signal, signum)
        self._armed.set()

    def arm(self, code: int) -> None:
        """The app is on its way out (a quit or a UI failure): make sure the process follows."""
        if self.code is None:
            self.code = code
        self._armed.set()

    def _watchdog(self) -> None:
        self._armed.wait()
        while getattr(self.engine, "busy", False):  # the trainer's stop path saves, bounded
            time.sleep(0.1)
        time.sleep(self.grace_s)
        restore_terminal(self.app)
        os._exit(self.code if self.code is not None else EXIT_UI_FAILED)


def _noted(signum: int, frame: object) -> None:
    """The Python-level handler: nothing to do, the wakeup fd has the signal already."""


def watch_hangup(fd: int | None = None) -> None:
    """Block until ``fd`` (stdin) hangs up, then send this process SIGHUP.

    Registered with no events, poll wakes only for POLLHUP, POLLERR or POLLNVAL: a closed
    terminal, or the writing end of a pipe gone (textual-serve's side of a web tab).
    """
    fd = sys.__stdin__.fileno() if fd is None else fd
    poller = select.poll()
    poller.register(fd, 0)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        if not events or events[0][1] & select.POLLNVAL:
            return  # stdin was closed on purpose: nothing to watch
        os.kill(os.getpid(), signal.SIGHUP)
        return


def restore_terminal(app: Any) -> None:
    """Put the terminal back as Textual found it, without waiting on anything."""
    driver = getattr(app, "_driver", None)
    attrs = getattr(driver, "attrs_before", None)
    with contextlib.suppress(OSError, ValueError, termios.error):
        if attrs is not None and os.isatty(0):
            termios.tcsetattr(0, termios.TCSANOW, attrs)
    if os.isatty(2):  # on a thread of its own: a terminal that no longer reads must not hold us
        writing = threading.Thread(target=_write_quietly, args=(2, RESET_TERMINAL), daemon=True)
        writing.start()
        writing.join(1.0)


def _write_quietly(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, data)


def end_with_web_parent() -> None:
    """A web tab's process (WEB_PARENT_ENV names its server) gets SIGTERM when the server ends
    any way, SIGKILL included (Linux ``PR_SET_PDEATHSIG``); one whose server is gone already
    ends now."""
    parent = os.environ.get(WEB_PARENT_ENV, "")
    if not parent.isdigit():
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(parent):  # it died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


class QuietOutput:
    """A text stream whose writes to a terminal that has gone (EIO, EPIPE) are dropped.

    Textual's output thread dies on the first such error and its bounded queue then blocks
    the event loop; dropped writes keep the loop free to shut down.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_driver(driver_class: type) -> type:
    """Textual's Linux terminal driver writing through QuietOutput; any other driver as it is."""
    try:
        from textual.drivers.linux_driver import LinuxDriver
    except ImportError:  # not a POSIX terminal
        return driver_class
    if driver_class is not LinuxDriver:
        return driver_class

    class QuietLinuxDriver(LinuxDriver):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._file = QuietOutput(self._file)

    return QuietLinuxDriver
