"""SVG snapshots of the dashboard (pytest-textual-snapshot): scripted data only, no wall clock.

Update the baselines after an intended UI change with
``python -m pytest tests/test_snapshots.py --snapshot-update`` and look at the report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fake_engine import FINAL_STEP, FakeEngine, scripted_records, system_records
from pilot_helpers import wait_until
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static

from h2q_tui.app.panes.generate import GeneratePane
from h2q_tui.app.panes.icu import IcuPane
from h2q_tui.app.panes.system import SystemPanel
from h2q_tui.app.panes.system_charts import SystemCharts
from h2q_tui.app.shell import H2QApp, SnapshotTaken, make_app
from h2q_tui.generation.generate import GenerationStats
from h2q_tui.system.monitor import GpuReading, SystemSnapshot
from h2q_tui.training.writers import METRICS_FILE

SIZE = (160, 48)
GIB = 1024**3


def step_card(app: H2QApp) -> str:
    return str(app.query_one("#card-step", Static).content)


async def settle(pilot: Pilot) -> None:
    """Wait until every record is folded in and drawn, then drop the toasts (they time out)."""
    app: H2QApp = pilot.app  # type: ignore[assignment]
    await wait_until(pilot, lambda: app.settled, "the last redraw")
    app.clear_notifications()
    # on a loaded machine a layout change (compact cards, a status line that got shorter) can
    # still be on its way: take the picture once two renders in a row are the same
    previous = None
    for _ in range(100):
        await pilot.pause(0.05)
        shot = app.export_screenshot()
        if shot == previous and app.settled:
            break
        previous = shot


def play_script(*keys: str):
    """A run_before that trains the fake run to its end, then presses ``keys``."""

    async def run_before(pilot: Pilot) -> None:
        app: H2QApp = pilot.app  # type: ignore[assignment]
        await pilot.press("t")
        await wait_until(pilot, app.engine.script_done.is_set, "the script")
        await wait_until(
            pilot, lambda: step_card(app).startswith(f"{FINAL_STEP} / "), "the final step"
        )
        for key in keys:
            await pilot.press(key)
        await settle(pilot)

    return run_before


def fake_app(tmp_path: Path) -> H2QApp:
    return make_app(FakeEngine(tmp_path, max_idle_s=30), monitor=False, refresh_s=0.05)


def test_icu_pane_after_the_scripted_run(snap_compare, tmp_path):
    app = fake_app(tmp_path)
    assert snap_compare(app, terminal_size=SIZE, run_before=play_script())


def test_icu_pane_in_bits_per_byte_against_tokens(snap_compare, tmp_path):
    app = fake_app(tmp_path)
    play, seen = play_script("u", "a"), []

    async def run_before(pilot: Pilot) -> None:
        await play(pilot)
        icu = app.query_one(IcuPane)
        seen.append((icu.units, icu.axis))

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
    assert seen == [("bpb", "tokens")]


def test_icu_pane_at_80x24(snap_compare, tmp_path):
    """The smallest common terminal: compact cards, chart beside the streams, no wrapping."""
    app = fake_app(tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=play_script())


def test_attach_at_80x24_with_bad_records(snap_compare, tmp_path):
    run_dir = tmp_path / "run-a"
    run_dir.mkdir()
    lines = [json.dumps(r) for r in scripted_records("run-a", steps=30)]
    lines[5:5] = ['{"event": "step"}', '{"event": "step", "step": NaN}', "not json"]
    (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    app = make_app(attach=[run_dir], monitor=False, refresh_s=0.05)

    async def run_before(pilot: Pilot) -> None:
        await wait_until(pilot, lambda: step_card(app).startswith("30 / "), "the cards")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


FAKE_SNAPSHOT = SystemSnapshot(
    time=0.0,
    host_cpu_percent=12.5,
    process_cpu_percent=101.0,
    process_rss_bytes=512 * 1024**2,
    host_ram_used_bytes=8 * GIB,
    host_ram_total_bytes=32 * GIB,
    gpus=(
        GpuReading(
            index=0,
            name="NVIDIA Fake GPU 24GB",
            utilization_percent=42.0,
            memory_used_bytes=6 * GIB,
            memory_total_bytes=24 * GIB,
            power_watts=123.4,
            temperature_c=61.0,
        ),
    ),
    cuda_allocated_bytes=1 * GIB,
    cuda_reserved_bytes=2 * GIB,
    gpu_status="1 GPU",
)


async def show_system_pane(pilot: Pilot) -> None:
    app: H2QApp = pilot.app  # type: ignore[assignment]
    app.post_message(SnapshotTaken(FAKE_SNAPSHOT))
    await wait_until(pilot, lambda: app.snapshot is FAKE_SNAPSHOT, "the snapshot")
    await pilot.press("2")
    panel = app.query_one(SystemPanel)
    await wait_until(pilot, lambda: "GPU 0" in str(panel.content), "the GPU readings")
    await settle(pilot)


def test_system_pane_with_one_gpu(snap_compare, tmp_path):
    app = fake_app(tmp_path)
    assert snap_compare(app, terminal_size=SIZE, run_before=show_system_pane)


def test_system_pane_at_80x24_with_a_memory_budget(snap_compare, tmp_path):
    """The budget bar (512 MiB of 560MB: 96 %, the alarm colour) and the machine's RAM apart."""
    script = scripted_records(overrides=['train.memory_budget="560MB"'])
    app = make_app(
        FakeEngine(tmp_path, script=script, max_idle_s=30), monitor=False, refresh_s=0.05
    )

    async def run_before(pilot: Pilot) -> None:
        await play_script()(pilot)
        await show_system_pane(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def attached_with_system_history(tmp_path: Path) -> H2QApp:
    """An attached run whose log has a `system` record after each of its 40 steps (one GPU)."""
    run_dir = tmp_path / "run-a"
    run_dir.mkdir()
    systems = iter(system_records(FINAL_STEP))
    lines = []
    for record in scripted_records("run-a"):
        lines.append(json.dumps(record))
        if record["event"] == "step":
            lines.append(json.dumps(next(systems)))
    (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return make_app(attach=[run_dir], monitor=False, refresh_s=0.05)


async def show_system_history(pilot: Pilot) -> None:
    app: H2QApp = pilot.app  # type: ignore[assignment]
    await wait_until(pilot, lambda: len(app.runs.history.system) == FINAL_STEP, "the history")
    await show_system_pane(pilot)
    await wait_until(pilot, lambda: app.query_one(SystemCharts).display, "the charts")
    await settle(pilot)


def test_system_pane_history_of_an_attached_run(snap_compare, tmp_path):
    """Charts of the run's logged readings (CPU, RSS, host RAM, GPU) under the viewer's."""
    app = attached_with_system_history(tmp_path)
    assert snap_compare(app, terminal_size=SIZE, run_before=show_system_history)


def test_system_pane_history_at_80x24(snap_compare, tmp_path):
    """A short screen: the readings lose their padding and each history is a sparkline."""
    app = attached_with_system_history(tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=show_system_history)


def test_help_screen(snap_compare, tmp_path):
    app = fake_app(tmp_path)
    assert snap_compare(app, press=["question_mark"], terminal_size=SIZE, run_before=settle)


def test_attach_view_of_two_runs(snap_compare, tmp_path):
    runs = []
    for name, floor, lr, steps in (("run-a", 2.0, 0.002, 30), ("run-b", 2.3, 0.001, 20)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        records = scripted_records(name, [f"train.lr={lr}"], floor=floor, steps=steps)
        (run_dir / METRICS_FILE).write_text(
            "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
        )
        runs.append(run_dir)
    app = make_app(attach=runs, monitor=False, refresh_s=0.05)

    async def run_before(pilot: Pilot) -> None:
        histories = app.runs.histories.values()
        await wait_until(pilot, lambda: all(h.records for h in histories), "both runs")
        await wait_until(pilot, lambda: step_card(app).startswith("30 / "), "run-a's cards")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


async def show_generate_pane(pilot: Pilot) -> None:
    """Snapshot of the fake run's model, a steering readout, then a steered generation."""
    app: H2QApp = pilot.app  # type: ignore[assignment]
    await pilot.press("t")
    await wait_until(pilot, app.engine.script_done.is_set, "the script")
    await wait_until(pilot, lambda: step_card(app).startswith(f"{FINAL_STEP} / "), "the last step")
    await pilot.press("3", "s")
    pane = app.query_one(GeneratePane)
    await wait_until(pilot, lambda: pane.model is not None, "the snapshot")
    pane.query_one("#gen-mode", Select).value = "steer"
    pane.query_one("#gen-word", Input).value = "the"
    pane.query_one("#gen-tokens", Input).value = "60"
    pane.readout_samples, pane.readout_tokens = 2, 8
    await pilot.press(*["right"] * 5, "r")
    await wait_until(pilot, lambda: pane.busy is None, "the readout")
    await pilot.press("g")
    await wait_until(pilot, lambda: pane.busy is None, "the generation")
    assert not pane.last_error
    # tokens/s and latencies come from the wall clock: show fixed numbers instead
    pane.show_stats(
        GenerationStats(new_tokens=60, first_token_s=0.012, seconds=0.5, stop_reason="length")
    )
    await settle(pilot)


def test_generate_pane_steered_from_a_live_snapshot(snap_compare, tmp_path):
    import torch

    from h2q_tui.config import resolve
    from h2q_tui.models import build_model

    torch.manual_seed(0)  # an untrained tiny model: fixed gibberish
    model = build_model(resolve("tiny").model)
    engine = FakeEngine(tmp_path, max_idle_s=30, model=model)
    app = make_app(engine, monitor=False, refresh_s=0.05)
    assert snap_compare(app, terminal_size=SIZE, run_before=show_generate_pane)


def test_run_browser_of_live_finished_crashed_and_malformed_runs(
    snap_compare, tmp_path, monkeypatch
):
    """h2q-tui attach runs/: one run of each status, fixed ages (the clock is injected), the
    second run selected."""
    from h2q_tui.app.run_browser import RunBrowserScreen
    from h2q_tui.checkpoints import run_lock

    monkeypatch.chdir(tmp_path)  # the title and the detail line show runs/..., not tmp paths
    now = 1_800_000_000.0
    finished = {"event": "run_finished", "step": 40, "time": 9.0, "reason": "max_steps"}
    runs = {
        "tiny-live": (scripted_records("live", steps=30), 20),
        "tiny-done": ([*scripted_records("done", floor=1.8, steps=40), finished], 3 * 3600),
        "tiny-crashed": (scripted_records("crashed", steps=12), 2 * 86400),
    }
    for name, (records, age_s) in runs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        log = tmp_path / "runs" / name / METRICS_FILE
        log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        os.utime(log, (now - age_s, now - age_s))
    (tmp_path / "runs" / "tiny-crashed" / ".lock").write_text("999999999\n")  # no such PID
    garbage = tmp_path / "runs" / "garbage" / METRICS_FILE
    garbage.parent.mkdir()
    garbage.write_text("not json\n")
    os.utime(garbage, (now - 5 * 60, now - 5 * 60))
    run_lock.acquire(Path("runs/tiny-live"))
    app = make_app(browse=Path("runs"), monitor=False, refresh_s=0.05, clock=lambda: now)

    async def run_before(pilot: Pilot) -> None:
        await wait_until(pilot, lambda: isinstance(app.screen, RunBrowserScreen), "the browser")
        screen = app.screen
        await wait_until(pilot, lambda: screen.scans > 0, "the listing")
        await pilot.press("down", "space")
        await pilot.pause(0.1)

    try:
        assert snap_compare(app, terminal_size=(100, 16), run_before=run_before)
    finally:
        run_lock.release(Path("runs/tiny-live"))


def test_metrics_pane_grid(snap_compare, tmp_path):
    """Key 6: a chart per scalar of the scripted run, four a row at 160 columns."""
    app = fake_app(tmp_path)
    assert snap_compare(app, terminal_size=SIZE, run_before=play_script("6"))


def test_metrics_pane_at_80x24_in_log_y(snap_compare, tmp_path):
    app = fake_app(tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=play_script("6", "y"))


def test_metrics_pane_full_size_of_two_runs_with_envelopes(snap_compare, tmp_path):
    """Two attached runs of 400 steps overlaid: more points than columns, so envelopes."""
    run_dirs = []
    for name, floor in (("run-a", 2.0), ("run-b", 1.2)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        lines = [json.dumps(r) for r in scripted_records(name, floor=floor, steps=400)]
        (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        run_dirs.append(run_dir)
    app = make_app(attach=run_dirs, monitor=False, refresh_s=0.05)

    async def run_before(pilot: Pilot) -> None:
        histories = app.runs.histories.values()
        await wait_until(pilot, lambda: all(len(h.train) == 400 for h in histories), "the logs")
        await pilot.press("6", "enter")
        await settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
