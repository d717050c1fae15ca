"""Pilot tests of what the dashboard shows a newcomer: this process's memory and CPU on the
ICU pane, fields that own the keys typed into them, a help screen that scrolls, at-once
answers to n/+/-, and model text, paths and messages shown as data, never as markup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FINAL_STEP, FakeEngine, scripted_records
from pilot_helpers import screen_lines, text_of, wait_until
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static, TabbedContent, TextArea

from h2q_tui.app.panes.icu import IcuPane
from h2q_tui.app.screens import HelpScreen
from h2q_tui.app.shell import H2QApp, SnapshotTaken, make_app
from h2q_tui.system.monitor import SystemSnapshot
from h2q_tui.training import commands, events
from h2q_tui.training.writers import METRICS_FILE

SIZES = [(160, 48), (80, 24)]
GIB = 1024**3
# letters and signs that are dashboard keys: typed into a field they must stay there
TYPED = ["u", "c", "a", "t", "x", "q", "n", "e", "s", "g", "r", "o", "f", "d", "h", "l", "p"]
TYPED += ["plus", "minus", "question_mark", "left_square_bracket", "right_square_bracket"]
MARKUP_SAMPLES = ["cd [/usr] and [/]", "[bold]not bold[/bold] [", "[link=https://x.y]z[/link]"]


def snapshot(rss: int, cpu: float, cuda: int | None = None) -> SystemSnapshot:
    return SystemSnapshot(
        time=0.0,
        host_cpu_percent=50.0,
        process_cpu_percent=cpu,
        process_rss_bytes=rss,
        host_ram_used_bytes=8 * GIB,
        host_ram_total_bytes=16 * GIB,
        gpus=(),
        cuda_allocated_bytes=cuda,
        cuda_reserved_bytes=cuda,
        gpu_status="1 GPU" if cuda else "no NVIDIA driver",
    )


def live_app(engine: FakeEngine) -> H2QApp:
    return make_app(engine, monitor=False, refresh_s=0.05)


def status(app: H2QApp) -> str:
    return text_of(app.query_one("#status-line", Static))


def screen_text(app: H2QApp) -> str:
    return "\n".join(screen_lines(app))


async def play(pilot: Pilot, engine: FakeEngine) -> None:
    await pilot.press("t")
    await wait_until(pilot, engine.script_done.is_set, "the script")
    await wait_until(pilot, lambda: pilot.app.settled, "the last redraw")


# ---------------------------------------------------------------------- the process card
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cuda", [None, 3 * GIB // 2], ids=["cpu", "gpu"])
async def test_the_icu_pane_shows_this_processs_memory_and_cpu(engine, size, cuda):
    app = live_app(engine)
    async with app.run_test(size=size) as pilot:
        await play(pilot, engine)
        app.post_message(SnapshotTaken(snapshot(rss=700 * 1024**2, cpu=187.0, cuda=cuda)))
        await wait_until(pilot, lambda: app.snapshot is not None, "the snapshot")
        await pilot.pause()
        card = text_of(app.query_one("#card-process", Static))
        shown = screen_text(app)
        assert "RSS 700" in card and "CPU 187%" in card
        assert ("GPU 1.5" in card) is (cuda is not None)
        for line in card.split("\n"):  # every line of the card whole on the screen
            assert line in shown, (line, size)


async def test_an_attached_run_shows_the_runs_rss_not_the_viewers(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps(r) for r in scripted_records(steps=10)]
    (run / METRICS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(SnapshotTaken(snapshot(rss=5 * GIB, cpu=3.0)))
        card = app.query_one("#card-process", Static)
        await wait_until(pilot, lambda: "@ step 10" in text_of(card), "the run's RSS")
        assert text_of(card) == "run RSS 286M\n@ step 10"  # fake_engine: 300,000,000 bytes


# ---------------------------------------------------------------------- fields own their keys
def spy_actions(app: H2QApp) -> list[str]:
    """Every action a key binding runs from now on."""
    fired: list[str] = []
    run_action = app.run_action

    async def spy(action, *args, **kwargs):
        fired.append(str(action))
        return await run_action(action, *args, **kwargs)

    app.run_action = spy  # type: ignore[method-assign]
    return fired


@pytest.mark.slow  # a regression guard (Input owns printable keys in Textual 8.2.8): ~30 s a size
@pytest.mark.parametrize("size", SIZES)
async def test_letters_typed_into_any_field_of_any_pane_fire_no_key(engine, size):
    app = live_app(engine)
    async with app.run_test(size=size) as pilot:
        await play(pilot, engine)
        fired = spy_actions(app)
        checked = []
        for pane_id in ("generate", "crystal", "ollama"):
            app.query_one(TabbedContent).active = pane_id
            await pilot.pause()
            pane = app.query_one(f"#{pane_id}")
            for field in pane.query("Input, TextArea"):
                assert isinstance(field, (Input, TextArea))
                field.focus()
                await pilot.pause()
                fired.clear()
                await pilot.press(*TYPED)
                await pilot.pause()
                assert fired == [], (pane_id, field.id, fired)
                assert app.focused is field and app.query_one(TabbedContent).active == pane_id
                checked.append(field.id)
        icu = app.query_one(IcuPane)
        assert icu.units == "nats" and icu.axis == "step" and app.is_running
        assert engine.received == []  # no save, sample, stop or LR change was sent
        assert {"gen-prompt", "gen-tokens", "gen-seed", "cry-windows", "oll-seed"} <= set(checked)


async def test_typing_into_the_mode_box_picks_a_mode_and_fires_no_key(engine):
    app = live_app(engine)
    async with app.run_test(size=(160, 48)) as pilot:
        await play(pilot, engine)
        await pilot.press("3")
        mode = app.query_one("#gen-mode", Select)
        mode.focus()
        await pilot.pause()
        fired = spy_actions(app)
        await pilot.press("s", "t", "e", "e", "r")  # s, t and e are dashboard keys
        await pilot.pause()
        assert fired == [] and engine.received == []
        assert mode.value == "steer"  # s picked it: the next option starting with s
        await pilot.press("f")
        assert mode.value == "flow" and fired == []


# ---------------------------------------------------------------------- help
@pytest.mark.parametrize("size", SIZES)
async def test_help_shows_every_row_and_scrolls(engine, size):
    app = live_app(engine)
    async with app.run_test(size=size) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        await pilot.pause()
        rows = app.screen.bindings
        seen: set[str] = set()
        for _ in range(12):  # PageDown until the end: every row shows on the way
            seen |= {description for _, description in rows if description in screen_text(app)}
            await pilot.press("pagedown")
            await pilot.pause()
        assert seen == {description for _, description in rows}
        assert "Quit (asks while training; saves first)" in screen_text(app)
        await pilot.press("home")
        await pilot.pause()
        assert "Start training (or --autostart)" in screen_text(app)
        await pilot.press("end")
        await pilot.pause()
        assert "Command palette: these actions, themes" in screen_text(app)
        if size == (160, 48):  # the whole table at once, no scrolling needed
            await pilot.press("home")
            await pilot.pause()
            assert all(description in screen_text(app) for _, description in rows)


# ---------------------------------------------------------------------- n, +, - answer at once
async def test_sample_and_learning_rate_keys_say_so_at_once(engine):
    app = live_app(engine)
    async with app.run_test(size=(160, 48)) as pilot:
        await play(pilot, engine)
        engine.answering.clear()  # the trainer is busy with a step
        await pilot.press("n")
        assert "Thought Stream sample asked" in status(app)  # before any record came
        await pilot.press("plus", "plus")
        assert "learning rate ×1.56 asked" in status(app)
        engine.answering.set()
        await wait_until(pilot, lambda: "asked" not in status(app), "the engine's answers")
        notes = [n.message for n in app._notifications]
        assert any(note.startswith("learning rate now 3.125e-03") for note in notes), notes
        engine.answering.clear()
        await pilot.press("c")
        assert "saving a checkpoint" in status(app)
        engine.answering.set()
        await wait_until(pilot, lambda: "saving" not in status(app), "the checkpoint")
        assert engine.received[-1] == commands.SaveNow()


# ---------------------------------------------------------------------- text is data, not markup
@pytest.mark.parametrize("sample", MARKUP_SAMPLES)
async def test_model_text_and_messages_that_look_like_markup_show_as_they_are(tmp_path, sample):
    script = scripted_records(steps=5) + [
        events.SampleReady(5, sample).to_record(),
        events.NoticeGiven(5, f"notice {sample}").to_record(),
    ]
    engine = FakeEngine(tmp_path / "[bold]run[i]", name="[bold]run[/]", script=script)
    engine.run_dir.mkdir()
    app = live_app(engine)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await play(pilot, engine)
            stream = app.query_one("#thought-stream", Static)
            await wait_until(pilot, lambda: sample in text_of(stream), "the sample, verbatim")
            assert f"notice {sample}" in status(app)
            app.on_record(events.AlarmRaised(5, "nan", f"alarm {sample}").to_record())
            await wait_until(pilot, lambda: app._notifications, "the alarm toast")
            app.action_export()  # its toast names the run dir, brackets and all
            app.action_focus_next_run()
            await pilot.pause(0.2)
            assert app.is_running and app.return_code is None
            assert f"] {sample}" in screen_text(app)  # the Thought Stream, brackets kept
    finally:
        engine.close()


async def test_attach_shows_markup_like_samples_as_they_are(tmp_path):
    run = tmp_path / "[link=x]run"
    run.mkdir()
    records = scripted_records(steps=5) + [events.SampleReady(5, MARKUP_SAMPLES[0]).to_record()]
    (run / METRICS_FILE).write_text("\n".join(map(json.dumps, records)) + "\n", encoding="utf-8")
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        stream = app.query_one("#thought-stream", Static)
        await wait_until(pilot, lambda: MARKUP_SAMPLES[0] in text_of(stream), "the sample")
        await pilot.press("d", "escape", "question_mark", "escape")
        await pilot.pause()
        assert app.is_running and app.return_code is None


async def test_error_and_confirm_screens_show_messages_as_they_are(engine):
    from h2q_tui.app.screens import ConfirmScreen, ErrorScreen

    app = live_app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(ErrorScreen("KeyError: '[/usr]' [bold]"))
        await pilot.pause()
        assert "KeyError: '[/usr]' [bold]" in screen_text(app)
        await pilot.press("escape")
        await app.push_screen(ConfirmScreen("save [/tmp] and quit?"))
        await pilot.pause()
        assert "save [/tmp] and quit?" in screen_text(app)
        assert FINAL_STEP  # the fake engine's script is untouched


# ---------------------------------------------------------------------- edges of the screen
@pytest.mark.parametrize(
    "size",
    [
        (80, 24),
        pytest.param((100, 30), marks=pytest.mark.slow),  # ~7 s a size: the narrowest and the
        pytest.param((120, 40), marks=pytest.mark.slow),  # widest stay in the default run
        (160, 48),
    ],
)
async def test_the_footer_shows_whole_keys_only(engine, size):
    from textual.widgets._footer import FooterKey

    app = live_app(engine)
    async with app.run_test(size=size) as pilot:
        await play(pilot, engine)
        for pane in ("1", "3", "4"):
            await pilot.press(pane)
            await pilot.pause(0.2)
            keys = list(app.query(FooterKey))
            palette = next(k for k in keys if k.has_class("-command-palette"))
            shown = [k for k in keys if k.display and k is not palette]
            assert shown and all(k.region.right <= palette.region.x for k in shown), size
            last = screen_lines(app)[-1]
            assert last.rstrip().endswith("^p palette"), last  # nothing after it


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_a_long_line_in_a_pane_ends_in_an_ellipsis(engine, size):
    from h2q_tui.app.panes.generate import GeneratePane

    app = live_app(engine)
    async with app.run_test(size=size) as pilot:
        await pilot.press("3")
        pane = app.query_one(GeneratePane)
        pane.say("ready: " + "a very long path/" * 20 + "END")
        await pilot.pause()
        row = next(line for line in screen_lines(app) if "ready: a very long path" in line)
        assert "END" not in row and row.rstrip().endswith("…"), row


async def test_charts_without_points_show_no_empty_legend_and_the_pareto_legend_avoids_points():
    from textual_plot import LegendLocation

    from h2q_tui.app.panes.crystal_results import quiet_corner

    engine = FakeEngine(Path("unused"), script=[])
    app = live_app(engine)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.3)
        from h2q_tui.app.panes.icu_chart import LossChart

        assert not app.query_one(LossChart).query_one("#legend").display  # no curves yet
    engine.close()
    # points up and to the right (bigger ratio, bigger loss): the legend goes top left
    rising = [(1.0, 0.0), (2.0, 0.01), (4.0, 0.05), (8.0, 0.3), (7.5, 0.25)]
    assert quiet_corner(rising) == LegendLocation.TOPLEFT
    assert quiet_corner([]) == LegendLocation.TOPRIGHT
