"""The per-process memory budget: sizes, crossings, the trainer's alarm and its pause/stop
(with a loadable checkpoint), the flags on the real CLI, and the System pane's bar."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import torch
from test_bad_input import DATA, TEXT, assert_user_error, cli_in_process

from h2q_tui import checkpoints
from h2q_tui.app.widgets import budget_bar, system_text
from h2q_tui.config import resolve
from h2q_tui.data.sources import load_corpus
from h2q_tui.errors import UserError
from h2q_tui.system import budget as budget_module
from h2q_tui.system.budget import BudgetWatch, MemoryBudget, Reading, parse_size
from h2q_tui.system.monitor import SystemSnapshot
from h2q_tui.training import commands, events
from h2q_tui.training import step as step_module
from h2q_tui.training.trainer import Trainer

GB, MB = 10**9, 10**6


# ---------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2GB", 2 * GB),
        ("1.5GiB", 3 * 2**29),
        ("512MB", 512 * MB),
        ("800M", 800 * MB),
        ("2g", 2 * GB),
        ("1MB", MB),
        (" 3 KiB ", 3 * 1024),
        (".5G", GB // 2),
        ("100B", 100),
        ("1tb", 10**12),
    ],
)
def test_good_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2XB", ("'2XB'", "unknown unit 'XB'", "GiB = 2^30")),
        ("-1", ("'-1'", "more than 0")),
        ("0", ("'0'", "more than 0")),
        ("0GB", ("more than 0",)),
        ("nan", ("'nan'", "not a size")),
        ("inf", ("not a size",)),
        ("", ("empty",)),
        ("   ", ("empty",)),
        ("2", ("no unit", "2GB")),
        ("1e9", ("not a size",)),
        ("0.1B", ("less than one byte",)),
        ("9" * 30 + "TB", ("beyond any machine",)),
        ("2GB\nrm -rf", ("not a size",)),
    ],
)
def test_bad_sizes_are_one_line(text, words):
    with pytest.raises(UserError) as caught:
        parse_size(text, "--memory-budget")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--memory-budget")
    for word in words:
        assert word in message, message


def test_config_keys_take_sizes_and_refuse_bad_ones():
    config = resolve("tiny", ['train.memory_budget="400MB"', "train.vram_budget=2GiB"])
    budget = MemoryBudget.from_config(config.train)
    assert (budget.ram.limit, budget.vram.limit) == (400 * MB, 2 * 2**30)
    assert not MemoryBudget.from_config(resolve("tiny").train).is_set
    with pytest.raises(UserError, match=r"config key train.memory_budget '2XB'"):
        resolve("tiny", ["train.memory_budget=2XB"])


# ---------------------------------------------------------------------------- readings
def test_states_and_what_the_reading_says():
    budget = MemoryBudget.from_texts("400MB", None)
    ram = lambda used: budget.readings(used)[0]  # noqa: E731
    assert [ram(u).state for u in (100 * MB, 360 * MB, 400 * MB, 401 * MB)] == [
        "ok",
        "alarm",
        "alarm",
        "over",
    ]
    assert ram(500 * MB).describe() == (
        "RSS 500.0 MB is 125 % of --memory-budget 400MB (100.0 MB over)"
    )
    assert MemoryBudget().readings(MB)[0].state == "none"
    assert len(budget.readings(MB)) == 1  # no CUDA in use, no VRAM budget: RAM only
    assert budget.readings(MB, 5)[1].measure == "CUDA reserved"


def test_the_watch_reports_each_crossing_once_and_rearms():
    budget = MemoryBudget.from_texts("1GB", None)
    watch = BudgetWatch()
    seen = []
    for used in (500, 920, 950, 880, 840, 910, 1100, 1200, 990, 1010):
        crossed = watch.observe(budget.readings(used * MB))
        seen.append(crossed[0][0] if crossed else None)
    # 880 is still above the 85 % re-arm line; 840 re-arms; 990 (under 100 %) re-arms "over"
    assert seen == [None, "alarm", None, None, None, "alarm", "over", None, None, "over"]


def test_this_process_rss_is_read():
    assert budget_module.rss_bytes() > 10 * MB
    assert budget_module.cuda_memory(torch.device("cpu")) == (None, None)


# ---------------------------------------------------------------------------- trainer
def make_trainer(tmp_path, text_file, overrides, log, pause=False, command_queue=None):
    config = resolve("tiny", ["log.sample_interval=0", *overrides])
    corpus = load_corpus(str(text_file), heldout_fraction=0.1)
    return Trainer(
        config,
        corpus,
        tmp_path / "run",
        log.append,
        command_queue,
        preset="tiny",
        pause_on_nan=pause,
    )


def fake_rss(monkeypatch, values_mb):
    """The trainer's RSS reader gives these values, one per step (then the last one)."""
    values = list(values_mb)

    def read() -> int:
        return int((values.pop(0) if len(values) > 1 else values[0]) * MB)

    monkeypatch.setattr(step_module, "rss_bytes", read)


def alarms(log):
    return [e for e in log if isinstance(e, events.AlarmRaised)]


def test_the_alarm_fires_once_past_90_percent(tmp_path, text_file, monkeypatch):
    fake_rss(monkeypatch, [500, 950, 960, 700, 955, 600])
    log: list[events.Event] = []
    trainer = make_trainer(
        tmp_path, text_file, ["train.max_steps=6", 'train.memory_budget="1GB"'], log
    )
    assert trainer.run() == "max_steps"
    found = alarms(log)
    assert [(a.kind, a.step) for a in found] == [("memory", 2), ("memory", 5)]
    assert isinstance(found[0], events.MemoryAlarmRaised)
    assert (found[0].resource, found[0].used_bytes, found[0].budget_bytes) == ("RAM", 950 * MB, GB)
    assert "RSS 950.0 MB is 95 % of --memory-budget 1GB" in found[0].message


def test_a_real_budget_just_above_the_rss_raises_the_alarm(tmp_path, text_file):
    rss = budget_module.rss_bytes()
    log: list[events.Event] = []
    limit = f"{int(rss / 0.97 / 1000)}KB"  # the RSS is ~97 % of it, and grows a little
    trainer = make_trainer(
        tmp_path, text_file, ["train.max_steps=3", f'train.memory_budget="{limit}"'], log
    )
    trainer.run()
    assert {a.kind for a in alarms(log)} & {"memory", "memory_over"}


def test_over_the_budget_saves_and_pauses_then_stop_leaves_a_loadable_checkpoint(
    tmp_path, text_file, monkeypatch
):
    fake_rss(monkeypatch, [500, 1200])
    q: queue.Queue = queue.Queue()
    log: list[events.Event] = []

    def stop_when_paused(event):
        log.append(event)
        if isinstance(event, events.RunPaused):
            paused_at.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
            q.put(commands.Stop())

    paused_at: list[dict] = []
    trainer = make_trainer(
        tmp_path,
        text_file,
        ["train.max_steps=10", 'train.memory_budget="1GB"'],
        log,
        pause=True,
        command_queue=q,
    )
    trainer.emit = stop_when_paused
    assert trainer.run() == "stopped"
    over = [a for a in alarms(log) if a.kind == "memory_over"]
    assert len(over) == 1 and over[0].step == 2
    assert "1.2 GB is 120 % of --memory-budget 1GB (200.0 MB over)" in over[0].message
    watched = (events.MemoryAlarmRaised, events.CheckpointSaved, events.RunPaused)
    order = [type(e).__name__ for e in log if isinstance(e, watched)]
    assert order[:3] == ["MemoryAlarmRaised", "CheckpointSaved", "RunPaused"]
    info = checkpoints.read_info(trainer.run_dir)
    assert info.step == 2
    model = checkpoints.load_model_from(info)
    for key, value in model.state_dict().items():
        assert torch.equal(value, paused_at[0][key]), key


def test_resume_after_the_pause_trains_on(tmp_path, text_file, monkeypatch):
    fake_rss(monkeypatch, [1200])  # over at every step: one pause per crossing, not per step
    q: queue.Queue = queue.Queue()
    log: list[events.Event] = []

    def resume_when_paused(event):
        log.append(event)
        if isinstance(event, events.RunPaused):
            q.put(commands.Resume())

    trainer = make_trainer(
        tmp_path,
        text_file,
        ["train.max_steps=4", 'train.memory_budget="1GB"'],
        log,
        pause=True,
        command_queue=q,
    )
    trainer.emit = resume_when_paused
    assert trainer.run() == "max_steps"
    assert [e.step for e in log if isinstance(e, events.RunPaused)] == [1]
    assert [e.step for e in log if isinstance(e, events.StepCompleted)] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / DATA).write_bytes(TEXT)
    return tmp_path


def test_no_ui_over_the_budget_stops_with_one_line_and_a_checkpoint(workdir):
    result = cli_in_process(
        workdir,
        "--no-ui",
        "--preset",
        "tiny",
        "--data",
        DATA,
        "--run-dir",
        "r",
        "--max-steps",
        "50",
        "--memory-budget",
        "1MB",
    )
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("h2q-tui: stopped: RSS ")
    for words in ("% of --memory-budget 1MB", "over) at step 1", "checkpoint r/checkpoints/"):
        assert words in lines[0], lines[0]
    assert "--resume r and a larger --memory-budget" in lines[0]
    assert "ALARM (memory_over)" in result.stdout
    info = checkpoints.read_info(workdir / "r")
    assert info.step == 1
    checkpoints.load_model_from(info)
    assert '"reason":"memory"' in (workdir / "r" / "metrics.jsonl").read_text()


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--memory-budget", "2XB", ("--memory-budget '2XB'", "unknown unit")),
        ("--memory-budget", "-1", ("--memory-budget '-1'", "more than 0")),
        ("--memory-budget", "0", ("more than 0",)),
        ("--memory-budget", "nan", ("not a size",)),
        ("--memory-budget", "", ("--memory-budget is empty",)),
        ("--vram-budget", "2XB", ("--vram-budget '2XB'", "unknown unit")),
        ("--set", "train.memory_budget=2XB", ("config key train.memory_budget", "unknown unit")),
    ],
)
def test_bad_budgets_on_the_command_line(workdir, flag, value, words):
    result = cli_in_process(workdir, "--no-ui", "--preset", "tiny", "--data", DATA, flag, value)
    assert_user_error(result, *words)
    assert not (workdir / "runs").exists()  # refused before any run dir was made


# ---------------------------------------------------------------------------- System pane
def snapshot(rss: int, reserved: int | None = None) -> SystemSnapshot:
    return SystemSnapshot(
        time=0.0,
        host_cpu_percent=10.0,
        process_cpu_percent=99.0,
        process_rss_bytes=rss,
        host_ram_used_bytes=30 * GB,
        host_ram_total_bytes=32 * GB,
        gpus=(),
        cuda_allocated_bytes=None if reserved is None else reserved // 2,
        cuda_reserved_bytes=reserved,
        gpu_status="no NVIDIA driver",
    )


def lines_of(text) -> dict[str, str]:
    return {line[:18].strip(): line[18:] for line in text.plain.splitlines() if line.strip()}


def test_the_pane_shows_rss_against_the_budget_and_the_machine_apart():
    budget = MemoryBudget.from_texts("400MB", None)
    rows = lines_of(system_text(snapshot(380 * MB), budget=budget, train_threads=2))
    assert rows["This process RSS"].endswith("380.0 MB of 400MB · 95 %")
    assert rows["This process RSS"].count("█") == 15  # 95 % of 16 cells
    assert rows["Host RAM"] == "27.9 GiB / 29.8 GiB used (the whole machine; no budget)"
    assert rows["Threads"] == "training 2 · generation 1 (batch-1 decoding)"
    # the machine's RAM is 94 % used and is never the bar's figure
    assert "%" not in rows["Host RAM"]


def test_bar_colours_follow_the_state():
    budget = MemoryBudget.from_texts("1GB", None)

    def style(used):
        bar = budget_bar(budget.readings(used * MB)[0])
        return str(bar.spans[0].style), bar.plain

    assert style(500)[0] == "green"
    assert style(920)[0] == "bold yellow"
    colour, plain = style(1500)
    assert colour == "bold red" and plain.endswith("150 % OVER") and "█" * 16 in plain


def test_without_a_budget_the_pane_says_so():
    rows = lines_of(system_text(snapshot(300 * 2**20), budget=None))
    assert rows["This process RSS"] == "300.0 MiB · no budget set (--memory-budget SIZE)"
    assert rows["CUDA reserved"] == "n/a"


def test_cuda_memory_against_the_vram_budget():
    budget = MemoryBudget.from_texts(None, "4GiB")
    rows = lines_of(system_text(snapshot(MB, reserved=2 * 2**30), budget=budget))
    assert rows["CUDA reserved"].endswith("2.0 GiB of 4GiB · 50 %")
    assert rows["CUDA allocated"] == "1.0 GiB"
    reading = Reading("VRAM", "CUDA reserved", None, budget.vram)
    assert budget_bar(reading, "--vram-budget").plain == "n/a of 4GiB budget"


def test_attached_the_bar_is_the_runs_rss_from_its_step_records():
    from fake_engine import scripted_records

    from h2q_tui.training.history import RunHistory

    history = RunHistory()
    for record in scripted_records(overrides=['train.memory_budget="400MB"'], steps=3):
        history.add(record)  # step records carry rss_bytes=300_000_000
    rows = lines_of(system_text(snapshot(50 * 2**20), history, live=False))
    assert rows["This process RSS"] == "50.0 MiB (this viewer)"
    assert rows["Run RSS @3"].endswith("300.0 MB of 400MB · 75 %")
