"""System history: the bounded readings history, the `system` events of metrics.jsonl (their
rate, their check, attach reading them back) and the System pane's charts."""

from __future__ import annotations

import json
import time

import pytest
from fake_engine import FakeEngine, scripted_records, system_records
from pilot_helpers import screen_lines, wait_until
from run_cli import h2q

from h2q_tui.app.panes.system_charts import SystemCharts, braille_rows, charts_text, columns_of
from h2q_tui.app.shell import SnapshotTaken, make_app
from h2q_tui.system.monitor import GpuReading, SystemMonitor, SystemSnapshot
from h2q_tui.system.readings_history import SERIES, SystemHistory, snapshot_readings
from h2q_tui.training import events
from h2q_tui.training.history import RunHistory
from h2q_tui.training.records import record_problem
from h2q_tui.training.system_log import SystemLog, system_event
from h2q_tui.training.writers import METRICS_FILE

GIB = 1024**3


def gpu(index: int, util: float | None, used: int | None) -> GpuReading:
    return GpuReading(index, "Fake GPU", util, used, 24 * GIB, 100.0, 60.0)


def snap(t: float, cpu: float = 50.0, gpus: tuple[GpuReading, ...] = ()) -> SystemSnapshot:
    return SystemSnapshot(
        time=t,
        host_cpu_percent=cpu,
        process_cpu_percent=2 * cpu,
        process_rss_bytes=GIB // 2,
        host_ram_used_bytes=8 * GIB,
        host_ram_total_bytes=32 * GIB,
        gpus=gpus,
        cuda_allocated_bytes=None,
        cuda_reserved_bytes=None,
        gpu_status="test",
    )


# ---------------------------------------------------------------------- the history's bound
def test_the_history_stays_bounded_and_keeps_the_whole_runs_shape():
    history = SystemHistory(recent=50, older=100)
    for i in range(100_000):
        history.add(float(i), {"host_cpu_percent": i % 100})
        assert len(history) <= 150
    samples = history.samples()
    assert len(history) > 100  # thinning halves `older`: it is never left nearly empty
    assert samples[0].x == 0.0  # the run's start stays
    assert [s.x for s in samples[-50:]] == [float(i) for i in range(99_950, 100_000)]
    xs = [s.x for s in samples]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    gaps = {b - a for a, b in zip(xs[:-50], xs[1:-49], strict=True)}
    assert max(gaps) <= history.stride  # older samples evenly thinned, one in `stride`


def test_a_copy_is_independent_and_drop_after_forgets_a_resumed_stretch():
    history = SystemHistory(recent=4, older=4)
    for i in range(10):
        history.add(float(i), {"process_rss_bytes": i})
    copy, before = history.copy(), [s.x for s in history.samples()]
    history.add(10.0, {})
    assert [s.x for s in copy.samples()] == before and before[-1] == 9.0
    assert history.samples()[-1].x == 10.0
    history.drop_after(5.0)
    assert [s.x for s in history.samples()] == [s.x for s in copy.samples() if s.x <= 5.0]


def test_snapshot_readings_average_gpu_utilisation_and_sum_gpu_memory():
    readings = snapshot_readings(snap(1.0, gpus=(gpu(0, 40.0, GIB), gpu(1, 80.0, 3 * GIB))))
    assert readings["gpu_util_percent"] == 60.0
    assert readings["gpu_memory_used_bytes"] == 4 * GIB
    assert readings["gpu_memory_total_bytes"] == 48 * GIB
    none = snapshot_readings(snap(1.0, gpus=(gpu(0, None, None),)))
    assert none["gpu_util_percent"] is None and none["gpu_memory_used_bytes"] is None
    history = SystemHistory()
    history.add_snapshot(snap(1.0))
    assert not history.has_gpu()
    history.add_snapshot(snap(2.0, gpus=(gpu(0, 10.0, GIB),)))
    assert history.has_gpu() and history.totals["gpu_memory_total_bytes"] == 24 * GIB


def test_the_monitor_keeps_its_history_on_its_own_thread():
    monitor = SystemMonitor(interval_s=0.01)
    with monitor:
        deadline = 200
        while len(monitor.history()) < 3 and deadline:
            deadline -= 1
            time.sleep(0.05)
    history = monitor.history()
    assert len(history) >= 3
    rss = [
        s.values[[n for n, _, _ in SERIES].index("process_rss_bytes")] for s in history.samples()
    ]
    assert all(r is not None and r > 0 for r in rss)


# ---------------------------------------------------------------------- the `system` event
def step_event(step: int) -> events.StepCompleted:
    return events.StepCompleted(
        step, step * 128, step * 0.1, 2.0, 2.9, 0.0, 0.0, 1.0, 1.0, 100.0, 1280.0, 1e-3, 0, 0.1, 1
    )


def test_a_system_event_follows_a_step_at_most_every_interval():
    clock, latest, out = [0.0], [snap(0.0)], []
    log = SystemLog(out.append, lambda: latest[0], interval_s=10.0, clock=lambda: clock[0])
    for step in range(1, 61):  # a step a second for a minute, a new snapshot every 1.5 s
        clock[0] = float(step)
        latest[0] = snap(1.5 * (step // 1.5))
        log(step_event(step))
    systems = [e for e in out if isinstance(e, events.SystemSampled)]
    assert [e.step for e in systems] == [1, 11, 21, 31, 41, 51]  # the first step, then 10 s on
    assert len([e for e in out if isinstance(e, events.StepCompleted)]) == 60  # all passed on
    assert out.index(systems[1]) == out.index(next(e for e in out if e.step == 11)) + 1


def test_no_system_event_without_a_new_snapshot_or_with_interval_zero():
    out: list = []
    stale = snap(5.0)
    log = SystemLog(out.append, lambda: stale, interval_s=1.0, clock=iter(range(100)).__next__)
    for step in range(1, 6):
        log(step_event(step))
    assert sum(isinstance(e, events.SystemSampled) for e in out) == 1  # the same snapshot once
    out.clear()
    off = SystemLog(out.append, lambda: snap(1.0), interval_s=0.0)
    off(step_event(1))
    assert out == [step_event(1)]
    nothing = SystemLog(out.append, lambda: None, interval_s=1.0)
    nothing(step_event(2))
    assert not any(isinstance(e, events.SystemSampled) for e in out)


def test_system_records_are_checked_and_folded_into_the_runs_history():
    record = system_event(snap(3.0, gpus=(gpu(0, 50.0, GIB),)), 7, 896, 1.25).to_record()
    assert record["event"] == "system" and record["gpus"] == 1 and record_problem(record) is None
    assert record_problem({**record, "process_rss_bytes": -1}) is not None
    assert record_problem({**record, "host_cpu_percent": "high"}) is not None
    assert record_problem({k: v for k, v in record.items() if k != "time"}) is not None
    history = RunHistory()
    for r in scripted_records(steps=3) + system_records(5):
        assert history.add(r)
    assert len(history.system) == 5 and history.system.samples()[-1].x == 0.25
    history.add({**scripted_records()[0], "start_step": 2, "time": 0.1})  # a resume at step 2
    assert [s.x for s in history.system.samples()] == [0.05, 0.1]


# ---------------------------------------------------------------------- the charts
def test_braille_columns_and_rows():
    assert braille_rows([0.0, 100.0], 100.0, 1) == ["\u28b8"]  # right column full
    assert braille_rows([50.0, None], 100.0, 2) == ["\u2800", "\u2847"]  # half: the lower row
    assert braille_rows([0.1, 0.0], 100.0, 1) == ["\u2840"]  # above zero: one dot at least
    history = SystemHistory()
    for x, cpu in ((0.0, 10.0), (1.0, 30.0), (10.0, 90.0)):
        history.add(x, {"host_cpu_percent": cpu})
    assert columns_of(history.samples(), 0, 5) == [20.0, 20.0, 20.0, 20.0, 90.0]


def test_charts_shrink_to_sparklines_on_a_short_screen_and_skip_gpus_without_readings():
    history = SystemHistory()
    for r in system_records(40, with_gpu=False):
        history.add(r["time"], r)
    big = charts_text(history, 156, 27, "test").plain.splitlines()
    assert big[0].startswith("History · 0:02 · 40 samples")
    assert any(line.startswith("Host CPU ") and "Process CPU" in line for line in big)
    assert not any("GPU" in line for line in big) and all(len(line) <= 156 for line in big)
    small = charts_text(history, 76, 3, "test").plain.splitlines()
    assert len(small) == 3 and small[1].startswith("Host CPU") and "Process CPU" in small[1]
    assert all(len(line) <= 76 for line in small)


async def test_the_live_pane_charts_this_dashboards_own_readings(tmp_path):
    app = make_app(FakeEngine(tmp_path, max_idle_s=30), monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        app.monitor = SystemMonitor(interval_s=0.02).start()
        await wait_until(pilot, lambda: len(app.monitor.history()) >= 3, "three readings")
        app.post_message(SnapshotTaken(app.monitor.latest))
        await pilot.press("2")
        charts = app.query_one(SystemCharts)
        await wait_until(pilot, lambda: charts.display, "the charts")
        await pilot.pause(0.1)
        text = "\n".join(screen_lines(app))
        assert "this process, every 0.02 s" in text and "Process RSS" in text
        app.monitor.stop()


# ---------------------------------------------------------------------- a real run, attached
@pytest.mark.slow  # a 2 s tiny run plus start-up: 10-15 s
async def test_a_real_run_logs_system_events_at_its_rate_and_attach_charts_them(
    tmp_path, text_file
):
    interval = 0.25
    result = h2q(
        *("--no-ui", "--preset", "tiny", "--data", str(text_file), "--max-seconds", "2"),
        *("--run-dir", "run", "--set", f"log.system_interval_s={interval}"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).open()]
    systems = [r for r in records if r["event"] == "system"]
    steps = [r for r in records if r["event"] == "step"]
    assert len(systems) >= 2 and all(record_problem(r) is None for r in systems)
    for at, record in enumerate(records):  # each right after the record of its step
        if record["event"] == "system":
            assert records[at - 1]["event"] == "step" and records[at - 1]["step"] == record["step"]
    assert systems[0]["step"] < steps[-1]["step"] // 2  # from the start of the run
    # no sooner than the interval after the one before
    for earlier, later in zip(systems, systems[1:], strict=False):
        assert later["time"] - earlier["time"] >= 0.8 * interval
    assert len(systems) <= 1 + records[-1]["time"] / (0.8 * interval)
    assert all(r["process_rss_bytes"] > 0 and r["host_ram_total_bytes"] > 0 for r in systems)
    app = make_app(attach=[tmp_path / "run"], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.runs.history.finished is not None, "the whole log")
        assert [s.x for s in app.runs.history.system.samples()] == [r["time"] for r in systems]
        app.post_message(SnapshotTaken(snap(1.0)))
        await pilot.press("2")
        await wait_until(pilot, lambda: app.query_one(SystemCharts).display, "the charts")


async def test_an_old_log_without_system_events_still_attaches(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in scripted_records()))
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.runs.history.last_step is not None, "the log")
        app.post_message(SnapshotTaken(snap(1.0)))
        await pilot.press("2")
        await wait_until(pilot, lambda: "Host CPU" in "\n".join(screen_lines(app)), "the pane")
        assert not app.query_one(SystemCharts).display and app.runs.history.bad_records == 0
