"""Sending an alert, without the trainer: the ``--on-alarm`` / ``--alarm-webhook`` checks, a
rate limit, a command run with a timeout (killed with its children) and a JSON POST.

Only the standard library: the parser checks the flags with it before torch loads.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from h2q_tui.errors import UserError

COMMAND_TIMEOUT_S = 8.0  # a command still running then is killed, with its children
WEBHOOK_TIMEOUT_S = 5.0  # per connect and per read of a webhook POST
PER_KIND_S = 60.0  # at most one alert per alarm kind in this many seconds
HOURLY_CAP = 20  # and at most this many alerts an hour in all
NOTE_CHARS = 200  # the most of a command's stderr quoted in a failure notice


def parse_command(text: str) -> tuple[str, ...]:
    """``--on-alarm CMD`` as an argument list (shlex rules, no shell), its program on PATH."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise UserError(f"--on-alarm {text!r}: {exc}") from None
    if not argv:
        raise UserError("--on-alarm needs a command, got an empty one")
    if shutil.which(argv[0]) is None:
        raise UserError(f"--on-alarm: {argv[0]} is not an executable found on PATH")
    return argv


def parse_webhook(text: str) -> str:
    """``--alarm-webhook URL``: an http:// or https:// URL with a host."""
    url = text.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed [IPv6] bracket
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise UserError(
            f"--alarm-webhook needs an http:// or https:// URL with a host, got {text!r}"
        )
    return url


def command_argument(text: str) -> str:
    """An argparse ``type``: the command as written, once it parses."""
    parse_command(text)
    return text


def webhook_argument(text: str) -> str:
    """An argparse ``type``: the URL, once it is an http(s) URL."""
    return parse_webhook(text)


@dataclass(frozen=True)
class AlertTargets:
    """Where alarms go: a command (argument list) and/or a webhook URL."""

    command: tuple[str, ...] = ()
    webhook: str = ""

    @classmethod
    def parse(cls, command: str | None, webhook: str | None) -> AlertTargets | None:
        """The targets of ``--on-alarm`` / ``--alarm-webhook``; None when neither is given."""
        if command is None and webhook is None:
            return None
        return cls(
            parse_command(command) if command is not None else (),
            parse_webhook(webhook) if webhook is not None else "",
        )


class RateLimit:
    """At most one alert per kind every ``per_kind_s`` and ``hourly_cap`` an hour in all;
    the alarms held back are counted by kind until the next alert says so."""

    def __init__(self, clock: Callable[[], float], per_kind_s: float, hourly_cap: int) -> None:
        self.clock, self.per_kind_s, self.hourly_cap = clock, per_kind_s, hourly_cap
        self._last: dict[str, float] = {}
        self._sent: deque[float] = deque()  # times of the alerts of the last hour
        self.suppressed: Counter[str] = Counter()

    def allow(self, kind: str) -> bool:
        now = self.clock()
        while self._sent and now - self._sent[0] >= 3600.0:
            self._sent.popleft()
        last = self._last.get(kind)
        too_soon = last is not None and now - last < self.per_kind_s
        if too_soon or len(self._sent) >= self.hourly_cap:
            self.suppressed[kind] += 1
            return False
        self._last[kind] = now
        self._sent.append(now)
        return True


def start_command(
    argv: tuple[str, ...], body: bytes, env: dict[str, str]
) -> subprocess.Popen | str:
    """Start ``argv`` with ``body`` on stdin (a temporary file: writing never blocks), in a
    session of its own so that it can be killed with every child it starts; or what failed."""
    try:
        with tempfile.TemporaryFile() as stdin:
            stdin.write(body)
            stdin.seek(0)
            return subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, **env},
                start_new_session=True,
            )
    except OSError as exc:
        return f"alert command {argv[0]} could not start: {exc.strerror or exc}"


def finish_command(
    proc: subprocess.Popen, name: str, timeout_s: float, left_s: float
) -> str | None:
    """Wait ``left_s`` more for a started command; None when it exited 0, else what went
    wrong. Past its ``timeout_s`` it is killed with its children."""
    try:
        _, err = proc.communicate(timeout=max(0.0, left_s))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return f"alert command {name} killed after {timeout_s:g} s"
    if proc.returncode == 0:
        return None
    last = err.decode(errors="replace").strip().splitlines()[-1:]
    return f"alert command {name} exited {proc.returncode}" + (
        f": {last[0][:NOTE_CHARS]}" if last else ""
    )


def signal_group(proc: subprocess.Popen) -> None:
    """SIGKILL to a process started in a session of its own and to everything in its group
    (unless it was reaped already: its number may then belong to another process)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the group (:func:`signal_group`), reap the process and close its pipes."""
    signal_group(proc)
    proc.wait()
    for pipe in (proc.stdin, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def post_json(url: str, body: bytes, timeout_s: float) -> str | None:
    """POST ``body`` as JSON; None on a 2xx answer, else what went wrong (naming the host
    only: a webhook's path is often its secret)."""
    # lazy: urllib.request (with http.client and ssl) loads only when an alert is sent,
    # not for --help, which imports this module for the flags' checks
    import http.client
    import urllib.error
    import urllib.request

    class Refuse(urllib.request.HTTPRedirectHandler):
        """A redirect would turn the POST into a GET without its body: say so instead."""

        def redirect_request(self, *args, **kwargs) -> None:
            return None

    host = urlsplit(url).hostname
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "h2q-tui alerts"},
    )
    try:
        with urllib.request.build_opener(Refuse).open(request, timeout=timeout_s) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        moved = " (a redirect: give the URL it points to)" if 300 <= exc.code < 400 else ""
        return f"alert webhook {host} answered HTTP {exc.code}{moved}"
    except urllib.error.URLError as exc:
        return f"alert webhook {host} failed: {exc.reason}"
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, bad answers
        return f"alert webhook {host} failed: {exc or type(exc).__name__}"
    return None
