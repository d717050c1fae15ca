"""Pilot tests of the dashboard: keys, cards, commands, quit, help, panes, export, attach."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_engine import (
    FINAL_STEP,
    FakeEngine,
    scripted_loss,
    scripted_records,
    step_record,
)
from pilot_helpers import text_of, wait_until
from textual.pilot import Pilot
from textual.widgets import RichLog, Static, TabbedContent
from textual.widgets._footer import FooterKey

from h2q_tui.app.keys import KEYS
from h2q_tui.app.messages import GenerationSourceChanged, OpenInGenerate
from h2q_tui.app.panes.generate import GeneratePane
from h2q_tui.app.panes.icu import IcuPane
from h2q_tui.app.panes.system import SystemPanel
from h2q_tui.app.screens import ConfigDiffScreen, ConfirmScreen, HelpScreen
from h2q_tui.app.shell import H2QApp, SnapshotTaken, make_app
from h2q_tui.config import resolve
from h2q_tui.system.monitor import SystemSnapshot
from h2q_tui.training import commands, events
from h2q_tui.training.history import LOG_LINES
from h2q_tui.training.writers import METRICS_FILE

SIZE = (160, 48)
# the widest reading the process card shows: RSS, CPU share and CUDA memory
FAKE_SNAPSHOT_WITH_GPU = SystemSnapshot(
    time=0.0,
    host_cpu_percent=100.0,
    process_cpu_percent=1600.0,
    process_rss_bytes=999 * 1024**3,
    host_ram_used_bytes=None,
    host_ram_total_bytes=None,
    gpus=(),
    cuda_allocated_bytes=79 * 1024**3,
    cuda_reserved_bytes=79 * 1024**3,
    gpu_status="1 GPU",
)


# ---------------------------------------------------------------------- helpers
def card(app: H2QApp, key: str) -> str:
    return text_of(app.query_one(f"#card-{key}", Static))


def step_card_shows(app: H2QApp, step: int) -> Callable[[], bool]:
    return lambda: card(app, "step").startswith(f"{step:,} / ")


def notifications(app: H2QApp) -> list[str]:
    return [n.message for n in app._notifications]


def live_app(engine: FakeEngine) -> H2QApp:
    return make_app(engine, monitor=False, refresh_s=0.05)


async def start_and_play(pilot: Pilot, engine: FakeEngine) -> None:
    """Press t and wait until the whole script is on the cards."""
    await pilot.press("t")
    await wait_until(pilot, engine.script_done.is_set, "the script")
    await wait_until(pilot, step_card_shows(pilot.app, FINAL_STEP), "the final step card")


async def sent(pilot: Pilot, engine: FakeEngine, count: int) -> list[commands.Command]:
    await wait_until(pilot, lambda: len(engine.received) >= count, f"{count} commands")
    return engine.received


# ---------------------------------------------------------------------- live run
async def test_t_starts_training_and_cards_show_the_script(engine):
    async with live_app(engine).run_test(size=SIZE) as pilot:
        app = pilot.app
        assert card(app, "state").startswith("idle")
        assert card(app, "step") == "0\n"  # no run_started yet: no max_steps
        await start_and_play(pilot, engine)
        assert app.run_active
        assert card(app, "step") == f"{FINAL_STEP} / 100\nepoch 0 · 14.2%"
        loss = scripted_loss(FINAL_STEP)
        assert card(app, "train") == f"{loss:.4f} nats\n{loss / math.log(2):.3f} bits/byte"
        assert card(app, "state") == "running"
        assert card(app, "lr") == "2.000e-03"
        assert card(app, "speed") == "50 ms/step\n2,560 tok/s"
        assert card(app, "heldout").endswith(f"@ step {FINAL_STEP}")
        assert card(app, "horizon").startswith("Val ")
        assert card(app, "penalty") == "0.0012 · rank 2\nraw 1.20"  # tiny: microstream, rank 2
        assert "The quick brown fox thinks" in text_of(app.query_one("#thought-stream", Static))
        history = app.runs.histories["fake-run"]
        assert len(history.train) == FINAL_STEP and len(history.horizon) == 4
        assert len(history.heldout) == 2


async def test_p_pauses_and_resumes(engine):
    async with live_app(engine).run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        await pilot.press("p")
        assert await sent(pilot, engine, 1) == [commands.Pause()]
        await wait_until(pilot, lambda: card(pilot.app, "state") == "paused", "paused card")
        await pilot.press("p")
        assert await sent(pilot, engine, 2) == [commands.Pause(), commands.Resume()]
        await wait_until(pilot, lambda: card(pilot.app, "state") == "running", "running card")
        await pilot.press("space")
        assert (await sent(pilot, engine, 3))[-1] == commands.Pause()


async def test_save_sample_and_learning_rate_keys_send_commands(engine):
    async with live_app(engine).run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        await pilot.press("c", "n", "plus", "minus")
        assert await sent(pilot, engine, 4) == [
            commands.SaveNow(),
            commands.SampleNow(),
            commands.ScaleLearningRate(1.25),
            commands.ScaleLearningRate(0.8),
        ]
        assert pilot.app.commands_sent == engine.received
        await wait_until(
            pilot,
            lambda: "a sample on request" in text_of(pilot.app.query_one("#thought-stream")),
            "the requested sample",
        )


async def test_x_stops_the_run(engine):
    async with live_app(engine).run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        await pilot.press("x")
        assert await sent(pilot, engine, 1) == [commands.Stop()]
        await wait_until(pilot, lambda: not pilot.app.run_active, "the worker to end")
        await wait_until(pilot, lambda: card(pilot.app, "state") == "finished (stopped)", "state")
        await pilot.press("p")  # the run is over: nothing more is sent
        await pilot.pause()
        assert engine.received == [commands.Stop()]
        assert "no training run is active" in " ".join(notifications(pilot.app))


async def test_q_while_running_asks_and_n_declines_then_y_stops_and_exits(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirm screen")
        await pilot.press("n")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "dismissal")
        assert app.is_running and app.return_code is None and app.run_active
        assert engine.received == []
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirm screen")
        await pilot.press("y")
        await wait_until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert app.return_code == 0
    assert engine.received == [commands.Stop()]
    assert engine.emitted[-1]["event"] == "run_finished"  # it saved and finished before exiting


async def test_q_when_idle_exits_at_once(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await wait_until(pilot, lambda: app.return_code is not None, "the app to exit")
    assert app.return_code == 0
    assert engine.received == [] and not engine.script_done.is_set()


async def test_keys_before_start_warn_and_send_nothing(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p", "x", "c", "n", "plus", "minus")
        await pilot.pause()
        assert app.commands_sent == [] and engine.received == []
        assert app.training_worker is None
        warned = [n for n in app._notifications if n.severity == "warning"]
        assert len(warned) == 6
        assert all("press t to start" in n.message for n in warned)


async def test_help_lists_every_action(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), "help screen")
        shown = " ".join(text_of(s) for s in app.screen.query(Static))
        shown = " ".join(shown.split())  # undo the table's line wrapping
        for row in KEYS:
            assert " ".join(row.description.split()) in shown, row.description
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen), "help to close")


async def test_view_keys_change_units_axis_and_smoothing(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        icu = app.query_one(IcuPane)
        assert (icu.units, icu.axis, icu.smoothing) == ("nats", "step", 0.6)
        await pilot.press("u")
        assert icu.units == "bpb"
        await pilot.press("u")
        assert icu.units == "nats"
        axes = []
        for _ in range(3):
            await pilot.press("a")
            axes.append(icu.axis)
        assert axes == ["tokens", "time", "step"]
        await pilot.press("right_square_bracket")
        assert icu.smoothing == 0.65
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert icu.smoothing == 0.55
        await pilot.press(*["right_square_bracket"] * 12)
        assert icu.smoothing == 0.99  # clamped
        await pilot.press("u", "a")
        await wait_until(pilot, lambda: not app._dirty, "a redraw")  # the chart redraws fine
        assert engine.received == []  # view keys never reach the engine


async def test_system_pane_shows_na_for_missing_readings(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        assert app.query_one(TabbedContent).active == "system"
        panel = app.query_one(SystemPanel)
        await wait_until(pilot, lambda: "collecting" in text_of(panel), "placeholder")
        empty = SystemSnapshot(
            time=0.0,
            host_cpu_percent=None,
            process_cpu_percent=None,
            process_rss_bytes=None,
            host_ram_used_bytes=None,
            host_ram_total_bytes=None,
            gpus=(),
            cuda_allocated_bytes=None,
            cuda_reserved_bytes=None,
            gpu_status="no NVIDIA driver",
        )
        app.post_message(SnapshotTaken(empty))
        await wait_until(pilot, lambda: "Host CPU" in text_of(panel), "the snapshot")
        lines = {line.split("  ")[0]: line for line in text_of(panel).splitlines() if line}
        for label in ("Host CPU", "Host RAM", "This process CPU", "This process RSS"):
            assert "n/a" in lines[label], lines[label]
        assert "n/a" in lines["CUDA allocated"] and "n/a" in lines["CUDA reserved"]
        assert "no NVIDIA driver" in lines["GPUs"]
        assert "GPU 0" not in text_of(panel)
        await pilot.press("1")
        assert app.query_one(TabbedContent).active == "icu"


async def test_e_exports_chart_csv_and_screen_svg(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        await pilot.press("e")
        await wait_until(pilot, lambda: list(engine.run_dir.glob("screen-*.svg")), "the SVG")
    csv_files = list(engine.run_dir.glob("charts-*.csv"))
    assert len(csv_files) == 1
    with open(csv_files[0], newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["run", "series", "step", "tokens", "time_s", "value_nats"]
    by_series: dict[str, list[list[str]]] = {}
    for row in rows[1:]:
        assert row[0] == "fake-run"
        by_series.setdefault(row[1], []).append(row[2:])
    assert {k: len(v) for k, v in by_series.items()} == {"train": 40, "heldout": 2, "horizon": 4}
    first = by_series["train"][0]
    assert [int(first[0]), int(first[1]), float(first[2]), float(first[3])] == [
        1,
        128,
        0.05,
        scripted_loss(1),
    ]
    assert [int(r[0]) for r in by_series["heldout"]] == [20, 40]
    svg = next(engine.run_dir.glob("screen-*.svg")).read_text(encoding="utf-8")
    assert svg.startswith("<svg") and "Train&#160;CE" in svg


async def test_nan_alarm_shows_an_alarm_state(tmp_path):
    # What the real trainer emits on a NaN loss with pause_on_nan: an alarm, then paused.
    script = scripted_records(steps=10) + [
        events.AlarmRaised(10, "nan", "loss or gradient is NaN/Inf at step 11").to_record(),
        events.RunPaused(10).to_record(),
    ]
    engine = FakeEngine(tmp_path, script=script)
    engine.paused = True  # as the trainer is after the alarm
    app = live_app(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await wait_until(pilot, engine.script_done.is_set, "the script")
            await wait_until(pilot, lambda: "ALARM" in card(app, "state"), "ALARM state")
            await pilot.pause(0.2)  # the paused record right after must not hide the alarm
            assert card(app, "state") == "ALARM nan — paused"
            assert any("NaN" in m for m in notifications(app))
            await pilot.press("p")  # resumes a run paused by the alarm
            assert await sent(pilot, engine, 1) == [commands.Resume()]
            await wait_until(pilot, lambda: card(app, "state") == "running", "running state")
    finally:
        engine.close()


async def test_divergence_alarm_does_not_block_pausing(tmp_path):
    # A divergence alarm does not pause the trainer, so p must still pause it.
    script = scripted_records(steps=10) + [
        events.AlarmRaised(10, "divergence", "held-out CE is diverging").to_record()
    ]
    engine = FakeEngine(tmp_path, script=script)
    app = live_app(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await wait_until(pilot, lambda: "ALARM" in card(app, "state"), "ALARM state")
            assert card(app, "state") == "ALARM divergence"
            await pilot.press("p")
            assert await sent(pilot, engine, 1) == [commands.Pause()]
            await wait_until(pilot, lambda: card(app, "state") == "paused", "paused state")
    finally:
        engine.close()


async def test_event_log_keeps_following_past_the_history_log_limit(tmp_path):
    # RunHistory keeps only its last LOG_LINES notes; the event log must still get new ones.
    lr_changes = [events.LearningRateChanged(1, 1e-3, 0.5).to_record() for _ in range(LOG_LINES)]
    engine = FakeEngine(tmp_path, script=[*scripted_records(steps=1), *lr_changes])
    app = live_app(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await wait_until(pilot, engine.script_done.is_set, "the script")
            log = app.query_one("#event-log", RichLog)
            await wait_until(pilot, lambda: len(log.lines) >= LOG_LINES, "a full log")
            assert app.runs.histories["fake-run"].notes == LOG_LINES + 2  # trimmed in history.log
            count = len(log.lines)
            await pilot.press("c")
            await wait_until(pilot, lambda: len(log.lines) > count, "the next log line")
            assert "checkpoint saved" in log.lines[-1].text
    finally:
        engine.close()


async def test_live_mode_focus_and_config_diff_keys_do_not_crash(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        await pilot.press("f")
        assert app.runs.focused == "fake-run"
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfigDiffScreen), "diff screen")
        shown = " ".join(text_of(s) for s in app.screen.query(Static))
        assert "Only one run is shown" in shown
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfigDiffScreen), "close")


# ---------------------------------------------------------------------- attach mode
def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    run_a, run_b = tmp_path / "run-a", tmp_path / "run-b"
    run_a.mkdir()
    run_b.mkdir()
    write_jsonl(run_a / METRICS_FILE, scripted_records("aaaa", ["train.lr=0.002"], steps=30))
    write_jsonl(
        run_b / METRICS_FILE, scripted_records("bbbb", ["train.lr=0.001"], floor=2.3, steps=20)
    )
    return run_a, run_b


async def test_attach_follows_two_runs_and_picks_up_appended_lines(two_runs):
    run_a, run_b = two_runs
    app = make_app(attach=[run_a, run_b], monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        assert list(app.runs.histories) == ["run-a", "run-b"]
        a, b = app.runs.histories["run-a"], app.runs.histories["run-b"]
        await wait_until(pilot, lambda: len(a.train) == 30 and len(b.train) == 20, "histories")
        assert a.config["train"]["lr"] == 0.002 and b.config["train"]["lr"] == 0.001
        await wait_until(pilot, step_card_shows(app, 30), "run-a's step card")
        assert card(app, "state") == "following"
        write_jsonl(
            run_b / METRICS_FILE,
            [step_record(n, scripted_loss(n, 2.3)) for n in range(21, 26)]
            + [events.RunFinished(25, 25 * 128, 1.25, "max_steps").to_record()],
        )
        await wait_until(pilot, lambda: len(b.train) == 25, "the appended lines", tries=100)
        assert b.finished is not None and b.last_step["step"] == 25
        assert len(a.train) == 30
        log = app.query_one("#event-log", RichLog)
        await wait_until(
            pilot, lambda: any("run-b: step 25" in s.text for s in log.lines), "the log line"
        )


async def test_attach_f_cycles_cards_and_d_diffs_configs(two_runs):
    app = make_app(attach=list(two_runs), monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, step_card_shows(app, 30), "run-a's step card")
        assert app.runs.focused == "run-a"
        await pilot.press("f")
        assert app.runs.focused == "run-b"
        await wait_until(pilot, step_card_shows(app, 20), "run-b's step card")
        await pilot.press("f")
        assert app.runs.focused == "run-a"
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfigDiffScreen), "diff screen")
        shown = " ".join(text_of(s) for s in app.screen.query(Static))
        assert "train.lr" in shown and "0.002" in shown and "0.001" in shown
        assert "model.d_model" not in shown  # only differing keys are listed
        assert app.screen.rows == [("train.lr", [0.002, 0.001])]


def footer_actions(app: H2QApp) -> set[str]:
    return {key.action for key in app.query(FooterKey)}


ENGINE_KEYS = {"start", "toggle_pause", "stop", "save", "sample", "lr_up", "lr_down"}


async def test_attach_t_and_command_keys_send_nothing(two_runs):
    app = make_app(attach=list(two_runs), monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t", "p", "x", "c", "n", "plus", "minus")
        await pilot.pause()
        assert app.training_worker is None and app.commands_sent == []
        assert app.is_running
        assert any("read-only" in m for m in notifications(app))
        assert "read-only" in text_of(app.query_one("#status-line", Static))


async def test_attach_offers_only_what_works_on_an_attached_run(two_runs):
    app = make_app(attach=list(two_runs), monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, step_card_shows(app, 30), "run-a's step card")
        await wait_until(pilot, lambda: "help" in footer_actions(app), "the footer")
        shown = footer_actions(app)
        assert not shown & ENGINE_KEYS, shown
        assert {"toggle_units", "cycle_axis", "export", "help", "quit"} <= shown
        assert {"focus_next_run", "config_diff"} <= shown  # two runs: comparing is the point
        # help and the command palette list the same: no training keys, no live snapshot
        available = {(row.pane, row.action) for row in app.available_actions()}
        assert not {action for _, action in available} & ENGINE_KEYS
        assert ("generate", "snapshot") not in available
        for kept in ("pane('icu')", "smoothing(0.05)", "focus_next_run", "config_diff"):
            assert ("", kept) in available
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), "help screen")
        help_text = " ".join(" ".join(text_of(s) for s in app.screen.query(Static)).split())
        assert "Stop training" not in help_text and "Start training" not in help_text
        assert "Chart units" in help_text and "Config diff" in help_text
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen), "help to close")
        palette = [c.help for c in app.get_system_commands(app.screen)]
        assert "key: x" not in palette and "key: s" not in palette and "key: u" in palette
        # the Generate pane has no live run to snapshot: its s key and button are gone
        await pilot.press("3")
        pane = app.query_one(GeneratePane)
        await wait_until(pilot, lambda: "generate" in footer_actions(app), "the pane's keys")
        assert "snapshot" not in footer_actions(app)
        assert not app.query_one("#gen-snapshot").display
        await pilot.press("s")
        await pilot.pause()
        assert pane.model is None and app.is_running


async def test_the_shell_routes_the_messages_panes_send_each_other(engine, monkeypatch):
    loaded: list[str] = []
    monkeypatch.setattr(GeneratePane, "load_path", lambda pane, path: loaded.append(path))
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        app.post_message(OpenInGenerate("runs/some-run/crystal/int8"))
        await wait_until(pilot, lambda: bool(loaded), "the Generate pane to load it")
        assert loaded == ["runs/some-run/crystal/int8"]
        assert app.query_one(TabbedContent).active == "generate"
        assert app.generation_source == ""
        app.post_message(GenerationSourceChanged("step-40"))
        await wait_until(pilot, lambda: app.generation_source == "step-40", "the source")


async def test_live_footer_offers_the_training_keys(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "help" in footer_actions(app), "the footer")
        assert ENGINE_KEYS | {"help", "quit"} <= footer_actions(app)
        assert not {"focus_next_run", "config_diff"} & footer_actions(app)  # one run
        assert app.available_actions() == KEYS


# ---------------------------------------------------------------------- the real engine
async def test_real_engine_trains_to_the_end(tmp_path, text_file):
    from h2q_tui.app.engine_link import LiveEngine
    from h2q_tui.training.session import RunRequest, prepare_run

    run_dir = tmp_path / "real-run"
    prepared = prepare_run(
        RunRequest(
            preset="tiny",
            data=str(text_file),
            run_dir=str(run_dir),
            max_steps=8,
            overrides=["train.threads=1"],
        )
    )
    app = make_app(LiveEngine(prepared), monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("t")
        await wait_until(
            pilot, lambda: card(app, "state").startswith("finished"), "the run", tries=2400
        )
        assert card(app, "state") == "finished (max_steps)"
        assert card(app, "step").startswith("8 / 8")
        await wait_until(pilot, lambda: not app.run_active, "the worker to end")
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "step"] == list(range(1, 9))
    assert records[-1]["event"] == "run_finished"
    checkpoints = [p for p in (run_dir / "checkpoints").iterdir() if p.is_dir()]
    assert checkpoints and any(any(p.iterdir()) for p in checkpoints)


def run_openmp_probe(text_file: Path, run_dir: Path, *flags: str) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    probe = Path(__file__).with_name("openmp_probe.py")
    out = subprocess.run(
        [sys.executable, str(probe), str(text_file), str(run_dir), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.slow  # 18 s; the passive wait policy set before torch loads: test_thread_choice
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_a_run_leaves_no_openmp_team_behind(tmp_path, text_file):
    """A parallel op on the UI thread or on Textual's pooled worker threads would leave an
    OpenMP team there for the life of the app, and libgomp then throttles the training
    thread's team (h2q_tui/system/threads.py)."""
    control = run_openmp_probe(text_file, tmp_path / "control", "--main-omp")
    assert control["after"] > control["start"], control  # the probe sees a UI-thread team
    real = run_openmp_probe(text_file, tmp_path / "real")
    assert real["during"] > real["start"], real  # training did run parallel regions
    assert real["after"] == real["start"], real  # and its team ended with the run


# ---------------------------------------------------------------------- bad records
BAD_LINES = [
    '{"event": "step"}',
    '{"event": "step", "step": 1, "tokens": 1, "time": 0.1, "train_loss_nats": 2.0, "lr": "fast"}',
    '{"event": "step", "step": NaN, "tokens": 1, "time": 0.1, "train_loss_nats": 2.0}',
    '{"event": "step", "step": null, "tokens": 1, "time": 0.1, "train_loss_nats": 2.0}',
    '{"event": "step", "step": "7", "tokens": 1, "time": 0.1, "train_loss_nats": 2.0}',
    '{"event": "eval", "step": 5, "tokens": 5, "time": 0.5, "val_loss_nats": 2.5}',
    '{"event": "run_started", "run_id": "x"}',
    '{"event": "run_started", "run_id": "x", "config": [1, 2, 3]}',
    '{"event": "checkpoint", "step": 3}',
    '{"event": "alarm", "step": 3}',
    '{"event": "run_finished", "step": 3}',
    '{"no_event": true}',
]
NOT_JSON = ["not json at all", "[1, 2]", '{"torn": ']


def status(app: H2QApp) -> str:
    return text_of(app.query_one("#status-line", Static))


def log_text(app: H2QApp) -> str:
    """The event log as one line of words (the log wraps its lines at its width)."""
    return " ".join(
        " ".join(line.text for line in app.query_one("#event-log", RichLog).lines).split()
    )


async def test_attach_skips_and_counts_bad_records_and_keeps_running(tmp_path):
    run = tmp_path / "bad-run"
    run.mkdir()
    good = [json.dumps(r) for r in scripted_records(steps=10)]
    lines = good[:3] + BAD_LINES + NOT_JSON + good[3:]
    (run / METRICS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        history = app.runs.histories["bad-run"]
        await wait_until(pilot, step_card_shows(app, 10), "the good records")
        assert history.bad_records == len(BAD_LINES) and len(history.train) == 10
        await wait_until(pilot, lambda: "12 bad records skipped" in status(app), "the count")
        assert "3 unparsable lines skipped" in status(app)
        await wait_until(pilot, lambda: "skipped 12 bad records" in log_text(app), "log line")
        assert "skipped 3 lines that are not JSON objects" in log_text(app)
        write_jsonl(run / METRICS_FILE, [{"event": "step", "step": "eleven"}])
        await wait_until(pilot, lambda: "13 bad records skipped" in status(app), "one more")
        await wait_until(pilot, lambda: "'step' is 'eleven'" in log_text(app), "its reason")
        assert "skipped 1 bad record (last: step: 'step' is 'eleven')" in log_text(app)
        for key in ("1", "2", "3", "1", "u", "a", "f", "d", "escape", "e"):
            await pilot.press(key)
        await pilot.pause()
        assert app.is_running and app.return_code is None


async def test_attach_on_a_log_of_nothing_but_bad_records(tmp_path):
    run = tmp_path / "junk"
    run.mkdir()
    (run / METRICS_FILE).write_text("\n".join(BAD_LINES * 3) + "\n", encoding="utf-8")
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: "36 bad records skipped" in status(app), "the count")
        assert card(app, "state") == "waiting for metrics.jsonl"
        await pilot.press("2", "1", "u", "a")
        await pilot.pause()
        assert app.is_running


async def test_live_engine_records_that_are_bad_are_skipped_too(tmp_path):
    engine = FakeEngine(tmp_path, script=[*scripted_records(steps=3), {"event": "alarm"}])
    app = live_app(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await wait_until(pilot, lambda: "1 bad record skipped" in status(app), "the count")
            assert card(app, "state") == "running"  # the bad alarm changed nothing
    finally:
        engine.close()


# ---------------------------------------------------------------------- crashes exit non-zero
class CrashingApp(H2QApp):
    def on_mount(self) -> None:
        raise RuntimeError("boom")


def test_run_app_returns_non_zero_when_the_app_crashes(tmp_path):
    from h2q_tui.app import run_app

    app = CrashingApp(attached=None, monitor=False)
    assert run_app(app, headless=True) == 1
    quits = make_app(FakeEngine(tmp_path), monitor=False)
    quits.call_later(quits.exit, 0)
    assert run_app(quits, headless=True) == 0


def test_attach_exits_non_zero_when_the_dashboard_crashes(tmp_path, two_runs):
    code = (
        "import sys\n"
        "from h2q_tui.app.shell import H2QApp\n"
        "def boom(self):\n"
        "    raise RuntimeError('boom in the dashboard')\n"
        "H2QApp.redraw_chart = boom\n"
        "from h2q_tui.cli.main import main\n"
        "sys.exit(main(['attach', sys.argv[1]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(two_runs[0])],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TEXTUAL": "headless", "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    assert "boom in the dashboard" in out.stdout + out.stderr


# ---------------------------------------------------------------------- notices, progress, precision
async def test_precision_shows_on_the_status_line_system_pane_and_event_log(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        expected = "precision fp32 — this CPU has no fast bf16 (no AMX, no AVX512-BF16)"
        await wait_until(pilot, lambda: expected in status(app), "the precision")
        assert expected in log_text(app)
        await pilot.press("2")
        panel = app.query_one(SystemPanel)
        await wait_until(pilot, lambda: "Precision" in text_of(panel), "the run rows")
        assert "fp32 — this CPU has no fast bf16" in text_of(panel)
        assert "Fake CPU 2.0GHz" in text_of(panel)


async def test_a_log_without_precision_shows_none(tmp_path):
    record = scripted_records(steps=2)
    for key in ("precision", "precision_reason", "machine"):
        del record[0][key]
    engine = FakeEngine(tmp_path, script=record)
    app = live_app(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await wait_until(pilot, step_card_shows(app, 2), "step 2")
            assert "precision" not in status(app)
    finally:
        engine.close()


async def test_notices_show_at_once_on_the_status_line_and_in_the_event_log(tmp_path):
    notice = events.NoticeGiven(10, "resuming from step_00000300 (latest was corrupt)")
    engine = FakeEngine(tmp_path, script=[*scripted_records(steps=10), notice.to_record()])
    app = make_app(engine, monitor=False, refresh_s=60)  # no redraw tick: only "at once"
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await wait_until(pilot, lambda: notice.message in status(app), "the notice", 100)
            await pilot.press("2")  # the status line is under every pane
            assert app.query_one("#status-line").region.height == 1
            await pilot.press("1")
            app.redraw(force=True)
            assert f"step 10: {notice.message}" in log_text(app)
    finally:
        engine.close()


async def test_progress_shows_before_step_one(tmp_path):
    progress = [
        events.ProgressReported(0, "horizon validation", done, 8).to_record() for done in (1, 3)
    ]
    engine = FakeEngine(tmp_path, script=[scripted_records()[0], *progress])
    app = live_app(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await wait_until(
                pilot, lambda: "horizon validation: 3/8 windows" in status(app), "progress"
            )
            assert card(app, "state") == "running"
    finally:
        engine.close()


async def test_pressing_t_says_what_happens_before_the_first_record(tmp_path):
    engine = FakeEngine(tmp_path, script=[])
    engine.answering.clear()
    app = live_app(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            assert "press t to train" in status(app)
            await pilot.press("t")
            await pilot.pause()
            # the fake sends nothing: as the real engine while it reads data and builds a model
            assert app.runs.state == "starting…"
            await wait_until(pilot, lambda: "starting: reading the data" in status(app), "hint")
    finally:
        engine.close()


async def test_pause_and_stop_say_so_at_once_until_the_engine_confirms(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        engine.answering.clear()  # the trainer is busy with a step
        await pilot.press("p")
        assert "pausing after this step" in status(app)  # no tick needed
        engine.answering.set()
        await wait_until(pilot, lambda: card(app, "state") == "paused", "paused")
        await wait_until(pilot, lambda: "pausing" not in status(app), "the pause to clear it")
        engine.answering.clear()
        await pilot.press("x")
        assert "stopping: saving checkpoint…" in status(app)
        await pilot.pause(0.2)
        assert "stopping: saving checkpoint…" in status(app)
        engine.answering.set()
        await wait_until(pilot, lambda: card(app, "state") == "finished (stopped)", "finished")
        await wait_until(pilot, lambda: "stopping" not in status(app), "finish to clear it")


async def test_an_engine_notice_equal_to_the_keys_text_shows_once(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        engine.answering.clear()
        await pilot.press("p")
        app.on_record(events.NoticeGiven(FINAL_STEP, "pausing after this step").to_record())
        await wait_until(pilot, lambda: app.runs.histories["fake-run"].notice is not None, "notice")
        assert status(app).count("pausing after this step") == 1
        engine.answering.set()


# ---------------------------------------------------------------------- resume shows the history
def resumed_script(resume_step: int, final: int) -> list[dict]:
    from fake_engine import run_started_record

    records = [run_started_record(start_step=resume_step)]
    records += [step_record(n, scripted_loss(n) - 0.1) for n in range(resume_step + 1, final + 1)]
    return records


async def test_resume_shows_the_runs_history_before_training(tmp_path):
    previous = scripted_records(steps=30) + [
        events.RunFinished(30, 30 * 128, 1.5, "interrupted").to_record()
    ]
    engine = FakeEngine(tmp_path, previous=previous, resume_step=20, script=resumed_script(20, 40))
    app = live_app(engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            history = app.runs.histories["fake-run"]
            await wait_until(pilot, lambda: len(history.train) == 30, "the old steps")
            assert card(app, "state") == "idle — t resumes at step 20"
            assert "history from metrics.jsonl: 30 steps (to step 30)" in log_text(app)
            await pilot.press("t")
            await wait_until(pilot, step_card_shows(app, 40), "the resumed run")
            assert history.train.step == list(range(1, 41))  # 21..30 once, from the resume
            assert history.train.value[25] == scripted_loss(26) - 0.1
            assert card(app, "state") == "running"
    finally:
        engine.close()


async def test_live_engine_replays_a_resumed_runs_metrics_jsonl(tmp_path):
    from types import SimpleNamespace

    from h2q_tui.app.engine_link import LiveEngine

    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    write_jsonl(run_dir / METRICS_FILE, scripted_records(steps=25))
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"event": "step", "step": "x"}\nnot json\n{"event": "step", "st')  # torn
    prepared = SimpleNamespace(
        run_dir=run_dir,
        resume_from=SimpleNamespace(step=20),
        tokenizer=None,
        config=resolve("tiny"),
    )
    engine = LiveEngine(prepared)  # type: ignore[arg-type]
    records, skipped = engine.previous_records()
    assert len(records) == len(scripted_records(steps=25)) + 1 and skipped == 1
    app = make_app(engine, monitor=False, refresh_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        history = app.runs.histories["resumed"]
        await wait_until(pilot, lambda: len(history.train) == 25, "the replayed steps")
        await wait_until(pilot, step_card_shows(app, 25), "the step card")
        assert card(app, "state") == "idle — t resumes at step 20"
        assert "1 bad record skipped" in status(app) and "1 unparsable line" in status(app)
    app = make_app(engine, monitor=False, refresh_s=60)  # the chart must not wait for a tick
    async with app.run_test(size=SIZE) as pilot:
        chart = app.query_one("LossChart")
        await wait_until(pilot, lambda: chart._last_draw is not None, "the chart", tries=40)
        assert len(chart._last_draw[0]["resumed"].train) == 25
    fresh = LiveEngine(SimpleNamespace(run_dir=run_dir, resume_from=None))  # type: ignore[arg-type]
    assert fresh.previous_records() == ([], 0)


# ---------------------------------------------------------------------- small terminals
STATES = [
    "idle — press t to train",
    "idle — t resumes at step 1,234,567",
    "starting…",
    "ALARM nan — paused",
    "ALARM divergence",
    "finished (max_seconds)",
    "finished (interrupted)",
    "waiting for metrics.jsonl",
]


def inside(region, outer) -> bool:
    return region.width > 0 and region.height > 0 and outer.contains_region(region)


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (160, 48)])
async def test_every_pane_fits_and_no_number_wraps(engine, size):
    from h2q_tui.app.panes.icu_cards import CARDS, card_texts, process_text

    app = live_app(engine)
    async with app.run_test(size=size) as pilot:
        await start_and_play(pilot, engine)
        await wait_until(pilot, lambda: app.settled, "the last redraw")
        screen = app.screen.region
        for selector in ("CardGrid", "LossChart", "#thought-stream", "#event-log"):
            assert inside(app.query_one(selector).region, screen), (selector, size)
        status_line = app.query_one("#status-line")
        assert inside(status_line.region, screen) and status_line.region.height == 1
        texts = card_texts(app.runs.histories["fake-run"], "running", app.compact)
        texts["process"] = process_text(FAKE_SNAPSHOT_WITH_GPU, compact=app.compact)
        for key, _title in CARDS:
            box = app.query_one(f"#card-{key}")
            assert inside(box.region, screen), (key, size)
            lines = str(texts[key]).split("\n")
            assert len(lines) <= box.content_region.height, (key, lines, size)
            if key != "state":  # words may wrap; numbers may not
                assert max(map(len, lines)) <= box.content_region.width, (key, lines, size)
            assert len(str(box.border_title)) <= box.region.width - 2, (key, size)
        state_box = app.query_one("#card-state").content_region
        for state in STATES:  # words may wrap, but the whole state stays in its card
            wrapped = textwrap.wrap(state, state_box.width)
            assert len(wrapped) <= state_box.height, (state, wrapped, size)
        chart = app.query_one("LossChart").region
        assert chart.height >= 8 and chart.width >= 40, (chart, size)
        for pane in ("2", "3"):
            await pilot.press(pane)
            await pilot.pause()
            assert app.query_one("#status-line").region.height == 1
        assert {"help", "quit"} <= footer_actions(app)


# ---------------------------------------------------------------------- the chart widget
async def test_the_chart_zooms_with_its_keys_and_keeps_the_zoom_as_records_arrive(engine):
    app = live_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await start_and_play(pilot, engine)
        chart = app.query_one("LossChart")
        await wait_until(pilot, lambda: chart._datasets, "the curves")
        labels = [label for label in chart._labels if label]
        assert labels == ["train raw", "train (EMA 0.60)", "held-out", "horizon"]
        full = (chart._x_min, chart._x_max)
        received = len(engine.received)
        chart.focus()
        await pilot.press("+")  # the chart's own key while it has focus, not LR ×1.25
        zoomed = (chart._x_min, chart._x_max)
        assert zoomed[1] - zoomed[0] < full[1] - full[0]
        assert len(engine.received) == received  # no LR command went to the engine
        app._view_changed()  # a redraw with every curve, as a new record brings
        await pilot.pause()
        assert (chart._x_min, chart._x_max) == zoomed
        await pilot.press("r")
        await pilot.pause()
        assert chart._x_max - chart._x_min == pytest.approx(full[1] - full[0], rel=0.05)


def test_plot_axes_survive_a_degenerate_range() -> None:
    """textual-plot raised "math domain error" (log10 of a zero tick spacing) on an axis
    too narrow for its float spacing, which killed the dashboard; our formatter gives one
    tick there and textual-plot's own ticks everywhere else."""
    from textual_plot.axis_formatter import NumericAxisFormatter

    from h2q_tui.app.widgets import SafeAxisFormatter

    safe = SafeAxisFormatter()
    assert safe.get_ticks_and_labels(4096.0, 4096.0) == ([4096.0], ["4096"])
    assert safe.get_ticks_and_labels(8e15, 8e15 + 2) == ([8e15], ["8e+15"])
    assert safe.get_ticks_and_labels(float("nan"), 1.0) == ([], [])
    assert safe.get_ticks_and_labels(1.0, 2.0) == NumericAxisFormatter().get_ticks_and_labels(
        1.0, 2.0
    )
