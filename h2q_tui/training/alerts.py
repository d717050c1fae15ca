"""Alarms that reach a person: each ``alarm`` event can run a command and post to a webhook.

Deliveries happen on a thread of their own behind a bounded queue, so training never waits
for a command or the network. They are rate-limited, each has a timeout, and a failure
becomes one ``notice`` in metrics.jsonl instead of an error that stops the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from h2q_tui.errors import UserError
from h2q_tui.training import events

COMMAND_TIMEOUT_S = 8.0  # a command still running then is killed, with its children
WEBHOOK_TIMEOUT_S = 5.0  # per connect and per read of a webhook POST
GRACE_S = 10.0  # at the end of a run, pending deliveries get this long, then are abandoned
PER_KIND_S = 60.0  # at most one alert per alarm kind in this many seconds
HOURLY_CAP = 20  # and at most this many alerts an hour in all
QUEUE_SIZE = 8  # alerts waiting for the delivery thread; a further one is dropped and counted
NOTE_CHARS = 200  # the most of a command's stderr quoted in a failure notice
HOST = socket.gethostname()  # named in each alert: which machine's run raised it


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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
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


def payload(
    event: events.AlarmRaised, run_dir: Path, suppressed: dict[str, int], dropped: int
) -> dict[str, Any]:
    """The JSON an alert carries: a ``text`` line (Slack; ``content`` for Discord), then the
    alarm record's fields, the run (``run_dir`` as given: absolute), the host and what the
    rate limit or queue held back."""
    record = event.to_record()
    text = (
        f"h2q-tui alarm ({event.kind}) in run {run_dir.name} at step {event.step}: {event.message}"
    )
    held = sum(suppressed.values())
    if held:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(suppressed.items()))
        text += f" [{held} more alarm(s) held back by the rate limit since the last alert: {kinds}]"
    if dropped:
        text += f" [{dropped} alert(s) dropped: the delivery queue was full]"
    return {
        "text": text,
        "content": text,
        **record,
        "run_dir": str(run_dir),
        "host": HOST,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suppressed": dict(suppressed),
        "dropped": dropped,
    }


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
    """SIGKILL to a process started in a session of its own and to everything in its group."""
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


class Alerts:
    """An ``emit`` in front of another: passes every event on, and sends each alarm that
    the rate limit lets through to the targets, on a delivery thread of its own.

    Training never waits on a delivery: alarms go into a bounded queue (full: dropped and
    counted) and failures come back as notices. At ``run_finished`` (or ``run_failed``)
    pending deliveries get ``grace_s``; what is left then is abandoned, a command killed.
    """

    def __init__(
        self,
        targets: AlertTargets,
        run_dir: Path,
        emit: Callable[[events.Event], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        webhook_timeout_s: float = WEBHOOK_TIMEOUT_S,
        grace_s: float = GRACE_S,
        per_kind_s: float = PER_KIND_S,
        hourly_cap: int = HOURLY_CAP,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.targets, self.run_dir, self._emit = targets, Path(run_dir).resolve(), emit
        self.command_timeout_s, self.webhook_timeout_s = command_timeout_s, webhook_timeout_s
        self.grace_s = grace_s
        self.limit = RateLimit(clock, per_kind_s, hourly_cap)
        self.dropped = 0  # alerts the full queue refused since the last one queued
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._pending = 0  # alerts queued or being delivered
        self._idle = threading.Condition()
        self._lock = threading.Lock()  # one emit at a time: the trainer's and the notes'
        self._step = 0
        self._closed = False
        self._proc: subprocess.Popen | None = None
        threading.Thread(target=self._deliver_all, name="h2q-alerts", daemon=True).start()

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, (events.RunFinished, events.RunFailed)):
            self.close()  # before the last record, so that its notes come first
        with self._lock:
            self._emit(event)
        self._step = getattr(event, "step", self._step)
        if isinstance(event, events.AlarmRaised) and not self._closed:
            self._offer(event)

    def _offer(self, event: events.AlarmRaised) -> None:
        if not self.limit.allow(event.kind):
            return
        sent = payload(event, self.run_dir, dict(self.limit.suppressed), self.dropped)
        with self._idle:
            try:
                self._queue.put_nowait(sent)
            except queue.Full:
                self.dropped += 1
                dropped = self.dropped
            else:
                self._pending += 1
                self.limit.suppressed.clear()
                self.dropped = dropped = 0
        if dropped:
            self._note(f"alert dropped: {dropped} waiting alert(s) filled the delivery queue")

    def _note(self, message: str) -> None:
        """A failure becomes a notice in the log (and on screen); never raises."""
        if self._closed:
            return
        with self._lock, contextlib.suppress(Exception):  # a full disk must not end delivery
            self._emit(events.NoticeGiven(self._step, message))

    def _deliver_all(self) -> None:
        while True:
            sent = self._queue.get()
            if self._closed:
                return
            try:
                failures = self._deliver(sent)
            except Exception as exc:  # the thread must outlive any one delivery
                failures = [f"alert failed: {type(exc).__name__}: {exc}"]
            for failure in failures:
                self._note(failure)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _deliver(self, sent: dict[str, Any]) -> list[str]:
        """The command runs while the webhook is posted: neither waits for the other."""
        body = json.dumps(sent).encode()
        started, proc = time.monotonic(), None
        failures: list[str | None] = []
        if self.targets.command:
            env = {
                "H2Q_ALARM_KIND": sent["kind"],
                "H2Q_ALARM_MESSAGE": sent["message"],
                "H2Q_RUN_DIR": sent["run_dir"],
                "H2Q_STEP": str(sent["step"]),
            }
            proc = start_command(self.targets.command, body, env)
            if isinstance(proc, str):
                failures.append(proc)
                proc = None
            self._proc = proc
        if self.targets.webhook:
            failures.append(post_json(self.targets.webhook, body, self.webhook_timeout_s))
        if proc is not None:
            left = self.command_timeout_s - (time.monotonic() - started)
            failures.append(
                finish_command(proc, self.targets.command[0], self.command_timeout_s, left)
            )
            self._proc = None
        return [f for f in failures if f]

    def close(self) -> None:
        """Wait up to ``grace_s`` for pending deliveries, then abandon the rest (once)."""
        if self._closed:
            return
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout=self.grace_s)
            left = self._pending
        if left:
            self._note(f"alerts: {left} delivery(s) abandoned at the end of the run")
        self._closed = True
        proc = self._proc
        if proc is not None:  # its thread, in communicate(), reaps it
            signal_group(proc)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait({})  # wakes the thread to end
