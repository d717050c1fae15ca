"""The Metrics pane (key 6): a chart per scalar the attached logs carry, the filter, log-Y
with values ≤ 0, the min/max envelope, full size, export, and several runs overlaid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fake_engine import scripted_records, system_records
from pilot_helpers import wait_until
from textual.containers import Grid
from textual.events import Key
from textual.widgets import Input

from h2q_tui.app.panes.icu_chart import RUN_COLOURS
from h2q_tui.app.panes.metrics import MetricsPane, matches
from h2q_tui.app.panes.metrics_chart import (
    ENVELOPE,
    MEAN,
    MetricChart,
    Series,
    buckets,
    chart_title,
    render,
)
from h2q_tui.app.shell import H2QApp, make_app
from h2q_tui.training.history import RunHistory, scalar_fields
from h2q_tui.training.writers import METRICS_FILE


def write_run(folder: Path, name: str, steps: int = 40, floor: float = 2.0) -> Path:
    """A finished log: scripted steps with ``wobble`` (−2…2, zero included) and aux_loss 0."""
    run_dir = folder / name
    run_dir.mkdir()
    records = scripted_records(name, steps=steps, floor=floor) + system_records(5)
    for record in records:
        if record["event"] == "step":
            record["wobble"] = record["step"] % 5 - 2
            record["aux_loss"] = 0.0
    lines = [json.dumps(record) for record in records]
    (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run_dir


async def open_metrics(pilot, app: H2QApp, steps: int = 40) -> MetricsPane:
    """Wait for every attached log to be read, show the pane, wait for its draw."""
    await wait_until(
        pilot,
        lambda: all(len(h.train) == steps for h in app.runs.histories.values()),
        "the logs",
    )
    await pilot.press("6")
    pane = app.query_one(MetricsPane)
    await wait_until(pilot, lambda: app.settled and bool(pane.names), "the charts")
    await pilot.pause(0.1)
    return pane


def shown(pane: MetricsPane) -> list[str]:
    return [c.scalar for c in pane.query_one("#metrics-grid", Grid).query(MetricChart) if c.display]


def chart(pane: MetricsPane, name: str) -> MetricChart:
    return next(c for c in pane.query(MetricChart) if c.scalar == name and c.id != "metrics-full")


def test_scalar_fields_come_from_the_records_not_a_list():
    step = {"event": "step", "step": 3, "tokens": 9, "time": 1.0, "my_metric": 2, "ok": True}
    assert scalar_fields(step) == {"my_metric": 2.0}  # bools, and the x axes, are no scalars
    evaluation = {"event": "eval", "split": "heldout", "step": 3, "val_loss_nats": 1.5}
    assert scalar_fields(evaluation) == {"heldout.val_loss_nats": 1.5}
    assert scalar_fields({"event": "checkpoint", "step": 3, "checkpoint_bytes": 5}) == {}


def test_a_resume_drops_the_scalars_it_logs_again():
    history = RunHistory()
    for record in scripted_records(steps=20):
        history.add(record)
    history.add({**scripted_records()[0], "start_step": 10})
    assert history.scalars.curves["grad_norm"].step[-1] == 10


async def test_the_grid_charts_every_scalar_on_the_icu_axis(tmp_path):
    app = make_app(attach=[write_run(tmp_path, "run-a")], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: len(app.runs.history.train) == 40, "the log")
        await pilot.pause(0.3)
        pane = app.query_one(MetricsPane)
        assert pane._drawn is None  # hidden: never drawn, whatever the log brought
        pane = await open_metrics(pilot, app)
        for name in (
            "train_loss_nats",
            "grad_norm",
            "lr",
            "energy",
            "aux_loss",
            "step_ms",
            "tokens_per_s",
            "wobble",
            "heldout.val_loss_nats",
            "horizon.val_loss_nats",
            "system.process_rss_bytes",
        ):
            assert name in pane.names, name
        assert shown(pane) == pane.names
        assert chart(pane, "grad_norm").border_title == "grad_norm 1.1"
        assert str(chart(pane, "lr").text()).splitlines()[-1].endswith("40 step")
        await pilot.press("a")  # the ICU pane's x axis key: the grid follows it
        await wait_until(pilot, lambda: app.settled, "the redraw")
        assert pane.axis == "tokens"
        assert str(chart(pane, "lr").text()).splitlines()[-1].endswith("5120 tokens")


async def test_the_filter_narrows_by_substring_or_glob_and_esc_clears_it(tmp_path):
    app = make_app(attach=[write_run(tmp_path, "run-a")], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_metrics(pilot, app)
        every = list(pane.names)
        await pilot.press("slash", *"loss")
        assert app.query_one("#metrics-filter", Input).has_focus
        assert pane.names and all("loss" in name for name in pane.names)
        assert len(pane.names) < len(every)
        assert shown(pane) == pane.names
        await pilot.press(*["backspace"] * 4, *"*_norm")
        assert pane.names == ["grad_norm"]
        await pilot.press("escape")
        assert pane.pattern == "" and pane.names == every
        assert not app.query_one("#metrics-filter", Input).display
    assert matches("heldout.val_loss_nats", "HELDOUT*") and not matches("lr", "*loss")


async def test_log_y_survives_zero_and_negative_values(tmp_path):
    app = make_app(attach=[write_run(tmp_path, "run-a")], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_metrics(pilot, app)
        await pilot.press("y")
        await wait_until(pilot, lambda: app.settled, "the redraw")
        assert pane.log_y
        assert chart(pane, "aux_loss").border_title == "aux_loss 0 · log-Y: n/a (values ≤ 0)"
        assert chart(pane, "wobble").border_title == "wobble -2 · log-Y (≤ 0 clipped)"
        assert chart(pane, "lr").border_title == "lr 0.002 · log-Y"
        assert MEAN in str(chart(pane, "wobble").text())
    series = [Series("a", "cyan", [1, 2, 3], [-1.0, 0.0, 10.0])]
    lines = str(render(series, 20, 5, True, "step")).splitlines()
    assert lines[0].split()[0] == "10" and lines[3].split()[0] == "10"  # clipped up to 10
    assert (
        chart_title("x", [Series("a", "c", [1], [-3.0])], True) == "x -3 · log-Y: n/a (values ≤ 0)"
    )


def test_more_points_than_columns_draw_the_min_max_envelope_and_the_mean():
    xs = list(range(100))
    ys = [float(x % 2) for x in xs]  # every column's bucket spans 0..1, its mean near 0.5
    text = str(render([Series("a", "cyan", xs, ys)], 18, 11, False, "step"))
    rows = [line[8:] for line in text.splitlines()[:-1]]  # 10 rows of 10 columns
    assert {cell for row in rows for cell in row} == {ENVELOPE, MEAN}  # no cell left blank
    columns = ["".join(row[i] for row in rows) for i in range(10)]
    assert all(column.count(MEAN) == 1 for column in columns)  # one mean a bucket
    assert {column.index(MEAN) for column in columns} <= {4, 5}  # at 0.5: the middle rows
    assert buckets([(0, 1.0), (0, 3.0), (1, 5.0)], int) == {0: (1.0, 3.0, 2.0), 1: (5.0, 5.0, 5.0)}
    few = str(render([Series("a", "cyan", [0, 1, 2], [1.0, 2.0, 3.0])], 18, 5, False, "step"))
    assert ENVELOPE not in few and few.count(MEAN) == 3  # a point a dot


async def test_the_envelope_shows_on_a_long_run_at_80x24(tmp_path):
    app = make_app(attach=[write_run(tmp_path, "run-a", steps=300)], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await open_metrics(pilot, app, steps=300)
        grad = chart(pane, "train_loss_nats")
        assert grad.content_size.width < 300
        assert ENVELOPE in str(grad.text()) and MEAN in str(grad.text())


async def test_enter_opens_the_focused_chart_full_size_and_esc_returns(tmp_path):
    app = make_app(attach=[write_run(tmp_path, "run-a")], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_metrics(pilot, app)
        await pilot.press("right", "down")  # four charts a row at 160 columns
        assert pane.current == 5 and chart(pane, pane.names[5]).has_focus
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.settled, "the full chart")
        full = app.query_one("#metrics-full", MetricChart)
        assert pane.full == pane.names[5] and full.display
        assert not app.query_one("#metrics-grid").display
        assert full.content_size.width > 140 and full.border_title.startswith(pane.names[5])
        await pilot.press("escape")
        assert pane.full is None and not full.display
        assert chart(pane, pane.names[5]).has_focus


async def test_e_exports_the_charts_shown_into_the_run_dir(tmp_path):
    run_dir = write_run(tmp_path, "run-a")
    app = make_app(attach=[run_dir], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_metrics(pilot, app)
        await pilot.press("slash", *"grad", "enter", "e")
        await wait_until(pilot, lambda: list(run_dir.glob("metrics-*.csv")), "the export")
        [path] = run_dir.glob("metrics-*.csv")
        rows = list(csv.reader(path.open(encoding="utf-8")))
        assert rows[0] == ["run", "scalar", "step", "value"]
        assert [row[:3] for row in rows[1:3]] == [["run-a", "grad_norm", "1"]] + [
            ["run-a", "grad_norm", "2"]
        ]
        assert len(rows) == 41 and pane.names == ["grad_norm"]
        assert any(str(path) in str(n.message) for n in app._notifications)


async def test_attached_runs_overlay_in_the_icu_colours(tmp_path):
    runs = [write_run(tmp_path, "run-a"), write_run(tmp_path, "run-b", floor=1.0)]
    app = make_app(attach=runs, monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_metrics(pilot, app)
        series = pane.series("train_loss_nats")
        assert [(s.run, s.colour) for s in series] == [
            ("run-a", RUN_COLOURS[0]),
            ("run-b", RUN_COLOURS[1]),
        ]
        content = chart(pane, "train_loss_nats").text()
        styles = {str(span.style) for span in content.spans}
        assert f"bold {RUN_COLOURS[0]}" in styles and f"bold {RUN_COLOURS[1]}" in styles


async def test_keys_typed_before_the_filter_has_the_focus_go_to_it(tmp_path):
    """A terminal can deliver ``/loss`` in one read: the letters must not act as keys."""
    app = make_app(attach=[write_run(tmp_path, "run-a")], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        pane = await open_metrics(pilot, app)
        for key, char in [("slash", "/"), *((char, char) for char in "y*norm")]:
            app.post_message(Key(key, char))  # all queued before the field can have the focus
        await wait_until(pilot, lambda: app.focused is app.query_one("#metrics-filter"))
        assert pane.pattern == "y*norm" and not pane.log_y
        await pilot.press("escape", "y")  # the field cleared and left: y is log-Y again
        assert pane.log_y and pane.pattern == ""
