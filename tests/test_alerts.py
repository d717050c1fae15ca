"""Alarms reach a person: ``--on-alarm`` and ``--alarm-webhook`` against a local receiver.

Every test here trains the tiny preset in-process or drives :class:`Alerts` with events;
no assertion is about time, only about what arrived, what was noted and the steps done.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from run_cli import h2q
from test_bad_input import assert_user_error
from test_trainer import make_trainer

from h2q_tui.errors import UserError
from h2q_tui.system.alerting import AlertTargets
from h2q_tui.training import events
from h2q_tui.training.alerts import Alerts
from h2q_tui.training.session import RunRequest, prepare_run

# a command that writes its stdin and its H2Q_* variables to files in its working folder
RECORDER = (
    "import json, os, sys; open('stdin.json', 'wb').write(sys.stdin.buffer.read()); "
    "json.dump({k: v for k, v in os.environ.items() if k.startswith('H2Q_')}, open('env.json', 'w'))"
)


class Receiver(ThreadingHTTPServer):
    """A webhook on a free local port that keeps each JSON body it is sent; ``mode`` "ok"
    answers 200, "500" and "302" (a redirect) answer so, "hang" only once ``release`` is set."""

    daemon_threads = True

    def __init__(self, mode: str) -> None:
        self.mode, self.bodies, self.release = mode, [], threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/secret-path"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))
        if self.server.mode == "hang":
            self.server.release.wait(30)
        self.send_response({"500": 500, "302": 302}.get(self.server.mode, 200))
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet test output
        pass


@pytest.fixture
def receiver() -> Iterator:
    """``receiver(mode)`` starts a Receiver serving on a thread; all are stopped after."""
    started: list[Receiver] = []

    def start(mode: str = "ok") -> Receiver:
        server = Receiver(mode)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.release.set()
        server.shutdown()
        server.server_close()


def notices(log: list[events.Event]) -> list[str]:
    return [e.message for e in log if isinstance(e, events.NoticeGiven)]


def alarm(kind: str, step: int = 3) -> events.AlarmRaised:
    return events.AlarmRaised(step, kind, f"{kind} at step {step}")


def finish(alerts: Alerts, step: int = 3) -> None:
    alerts(events.RunFinished(step, 0, 0.0, "max_steps"))  # waits out the grace


def test_a_nan_alarm_reaches_the_command_and_the_webhook(
    tmp_path, text_file, receiver, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    hook = receiver()
    request = RunRequest(
        preset="tiny",
        data=str(text_file),
        run_dir=str(tmp_path / "run"),
        max_steps=30,
        overrides=["train.lr=1e6", "train.threads=1"],  # a poisoned learning rate: NaN at once
        on_alarm=shlex.join([sys.executable, "-c", RECORDER]),
        alarm_webhook=hook.url,
    )
    prepared = prepare_run(request)
    log: list[events.Event] = []
    assert prepared.trainer(log.append).run() == "nan"
    assert isinstance(log[-1], events.RunFinished)  # the deliveries ended before it
    assert notices(log) == []  # both deliveries succeeded
    [posted] = hook.bodies
    assert posted["kind"] == "nan" and posted["event"] == "alarm"
    assert posted["text"].startswith("h2q-tui alarm (nan) in run run at step ")
    assert posted["run_dir"] == str((tmp_path / "run").resolve())
    assert json.loads((tmp_path / "stdin.json").read_text()) == posted
    env = json.loads((tmp_path / "env.json").read_text())
    assert env == {
        "H2Q_ALARM_KIND": "nan",
        "H2Q_ALARM_MESSAGE": posted["message"],
        "H2Q_RUN_DIR": posted["run_dir"],
        "H2Q_STEP": str(posted["step"]),
    }
    # the other ranks of a torchrun job prepare the same request without writing: no alerts
    assert prepare_run(request, writes=False).alerts is None


def test_the_rate_limit_holds_under_a_burst_and_says_what_it_held_back(tmp_path, receiver):
    hook, now = receiver(), [0.0]
    log: list[events.Event] = []
    alerts = Alerts(AlertTargets(webhook=hook.url), tmp_path, log.append, clock=lambda: now[0])
    for _ in range(50):
        alerts(alarm("nan"))
    for _ in range(10):
        alerts(alarm("divergence"))
    now[0] += 61.0  # a minute later, the next one of a kind goes out
    alerts(alarm("nan"))
    finish(alerts)
    assert [(b["kind"], b["suppressed"]) for b in hook.bodies] == [
        ("nan", {}),
        ("divergence", {"nan": 49}),
        ("nan", {"divergence": 9}),
    ]
    assert "9 more alarm(s) held back by the rate limit" in hook.bodies[-1]["text"]
    assert len([e for e in log if isinstance(e, events.AlarmRaised)]) == 61  # all logged


def test_the_hourly_cap_holds_across_kinds(tmp_path, receiver):
    hook = receiver()
    alerts = Alerts(AlertTargets(webhook=hook.url), tmp_path, lambda e: None, hourly_cap=3)
    for n in range(10):
        alerts(alarm(f"kind{n}"))
    finish(alerts)
    assert [b["kind"] for b in hook.bodies] == ["kind0", "kind1", "kind2"]


@pytest.mark.parametrize("mode", ["hang", "500"])
def test_a_failing_receiver_neither_slows_nor_stops_training(tmp_path, text_file, receiver, mode):
    hook = receiver(mode)
    trainer, log = make_trainer(tmp_path, text_file, ["train.max_steps=12", "train.threads=1"])
    grace_s = 0.2 if mode == "hang" else 10.0  # a 500 is answered at once: all are noted
    alerts = Alerts(
        AlertTargets(webhook=hook.url), trainer.run_dir, log.append, per_kind_s=0, grace_s=grace_s
    )

    def emit(event: events.Event) -> None:  # an alarm after every step
        alerts(event)
        if isinstance(event, events.StepCompleted):
            alerts(alarm("divergence", event.step))

    trainer.emit = emit
    assert trainer.run() == "max_steps"
    assert [e.step for e in log if isinstance(e, events.StepCompleted)] == list(range(1, 13))
    assert hook.bodies, "no alert reached the receiver"
    said = " | ".join(notices(log))
    if mode == "500":
        assert "alert webhook 127.0.0.1 answered HTTP 500" in said
    else:  # the first delivery hangs: the queue fills, drops are counted, the rest abandoned
        assert "alert dropped" in said and "abandoned at the end of the run" in said
    assert "secret-path" not in said  # a webhook's path is its secret: only the host is named


def test_a_redirect_is_reported_not_followed_as_a_get(tmp_path, receiver):
    hook = receiver("302")
    log: list[events.Event] = []
    alerts = Alerts(AlertTargets(webhook=hook.url), tmp_path, log.append)
    alerts(alarm("divergence"))
    finish(alerts)
    assert len(hook.bodies) == 1
    assert notices(log) == [
        "alert webhook 127.0.0.1 answered HTTP 302 (a redirect: give the URL it points to)"
    ]


def test_a_log_that_cannot_take_a_note_is_heard_by_the_trainer(tmp_path):
    def emit(event: events.Event) -> None:  # the disk fills as the note is written
        if isinstance(event, events.NoticeGiven):
            raise UserError("disk full while writing metrics.jsonl")

    alerts = Alerts(AlertTargets(command=("false",)), tmp_path, emit)
    alerts(alarm("nan"))
    with pytest.raises(UserError, match="disk full"):
        finish(alerts)  # the note of the failed command could not be written


def test_a_hanging_command_is_killed_with_its_children(tmp_path, receiver):
    hook = receiver()
    folder = shlex.quote(str(tmp_path))
    script = f"sleep 60 & echo $! > {folder}/child.pid; cat > {folder}/stdin.json; sleep 60"
    log: list[events.Event] = []
    alerts = Alerts(
        AlertTargets(command=("sh", "-c", script), webhook=hook.url),
        tmp_path,
        log.append,
        command_timeout_s=0.5,
    )
    alerts(events.MemoryAlarmRaised(3, "memory", "RSS at 91 %", "RAM", 91, 100))
    finish(alerts)
    assert notices(log) == ["alert command sh killed after 0.5 s"]
    sent = json.loads((tmp_path / "stdin.json").read_text())
    assert (sent["kind"], sent["resource"], sent["used_bytes"], sent["budget_bytes"]) == (
        "memory",
        "RAM",
        91,
        100,
    )
    assert [b["kind"] for b in hook.bodies] == ["memory"]  # the webhook did not wait for it
    child = int((tmp_path / "child.pid").read_text())
    assert wait_gone(child), f"the command's child {child} outlived it"


def wait_gone(pid: int) -> bool:
    """True once ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    status = Path(f"/proc/{pid}/status")
    for _ in range(500):
        try:
            if "\nState:\tZ" in status.read_text():
                return True
        except FileNotFoundError:
            return True
        threading.Event().wait(0.01)
    return False


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--alarm-webhook", "ftp://example.com/x", ["--alarm-webhook", "http://", "https://"]),
        ("--alarm-webhook", "example.com/hook", ["--alarm-webhook", "http://"]),
        ("--alarm-webhook", "http://[::1/hook", ["--alarm-webhook", "http://"]),
        ("--on-alarm", "", ["--on-alarm", "empty"]),
        ("--on-alarm", "no-such-program-h2q --now", ["no-such-program-h2q", "PATH"]),
        ("--on-alarm", "notify 'unclosed", ["--on-alarm", "quotation"]),
    ],
)
def test_bad_alert_flags_exit_2_with_one_line(tmp_path, flag, value, words):
    assert_user_error(h2q("--no-ui", f"{flag}={value}", cwd=tmp_path), *words)
    assert not list(tmp_path.iterdir())  # refused before any run dir was made


def test_the_dashboard_and_no_ui_take_the_flags_into_the_run_request():
    from h2q_tui.cli.parser import main_parser

    for mode in ([], ["--no-ui"]):
        args = main_parser("").parse_args(
            [*mode, "--on-alarm", "sh -c 'cat'", "--alarm-webhook", "https://example.com/h"]
        )
        request = RunRequest(**{k: getattr(args, k) for k in RunRequest.__dataclass_fields__})
        assert AlertTargets.parse(request.on_alarm, request.alarm_webhook) == AlertTargets(
            ("sh", "-c", "cat"), "https://example.com/h"
        )
