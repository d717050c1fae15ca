"""The --no-ui printer: a line at least every 10 s, notices at once, progress throttled (fake clock)."""

from __future__ import annotations

import io

from h2q_tui.training import events
from h2q_tui.training.writers import ConsolePrinter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def step(n: int, loss: float = 2.0) -> events.StepCompleted:
    return events.StepCompleted(
        step=n,
        tokens=128 * n,
        time=float(n),
        train_loss_nats=loss,
        train_bpb=loss / events.LN2,
        aux_loss=0.0,
        penalty=0.0,
        grad_norm=1.0,
        energy=10.0,
        step_ms=5000.0,
        tokens_per_s=25.0,
        lr=1e-3,
        epoch=0,
        data_progress=0.01,
        rss_bytes=0,
    )


def started(**extra) -> events.RunStarted:
    model = {"family": "microstream", "d_model": 128, "n_layers": 2, "context": 32}
    return events.RunStarted(
        run_id="r",
        n_params=77_320,
        config={"model": model},
        preset="tiny",
        train_source="t.txt",
        heldout_source="tail",
        train_bytes=1000,
        heldout_bytes=100,
        device="cpu",
        threads=1,
        start_step=0,
        time=0.0,
        started_at="now",
        **extra,
    )


def printer(log_interval: int = 50) -> tuple[ConsolePrinter, io.StringIO, FakeClock]:
    out, clock = io.StringIO(), FakeClock()
    return ConsolePrinter(log_interval, 1000, stream=out, clock=clock), out, clock


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_header_names_precision_reason_and_machine():
    p, out, _ = printer()
    p(
        started(
            precision="fp32",
            precision_reason="this CPU has no fast bf16 (no AMX, no AVX512-BF16)",
            machine="AMD EPYC 7B13",
        )
    )
    text = out.getvalue()
    assert lines(out)[0] == "parameters: 77,320"
    assert "precision fp32 — this CPU has no fast bf16 (no AMX, no AVX512-BF16)" in text
    assert "AMD EPYC 7B13" in text


def test_a_slow_run_prints_a_step_line_every_10_seconds_not_only_every_log_interval():
    p, out, clock = printer(log_interval=50)
    p(started())
    p(step(1))  # the first step is always shown: the user sees the speed at once
    assert lines(out)[-1].startswith("step 1/1000 |")
    for n in range(2, 6):  # 4 s per step: a line after 10 s, then again 10 s later
        clock.now += 4.0
        p(step(n, loss=3.0))
    step_lines = [line for line in lines(out) if line.startswith("step ")]
    assert [line.split(" |")[0] for line in step_lines] == ["step 1/1000", "step 4/1000"]
    assert "train 3.0000 nats" in step_lines[-1]  # the mean since the last printed line


def test_the_train_loss_is_labelled_as_the_mean_over_the_steps_since_the_last_line():
    p, out, _ = printer(log_interval=4)
    p(started())
    p(step(1, loss=5.0))
    for n, loss in zip(range(2, 6), (1.0, 2.0, 3.0, 6.0), strict=True):
        p(step(n, loss))
    first, second = [line for line in lines(out) if line.startswith("step ")]
    assert "| train 5.0000 nats 7.213 bpb (step 1) |" in first
    assert "| train 2.0000 nats 2.885 bpb (mean of steps 2-4) |" in second  # not step 4's 3.0
    p(step(8, loss=1.0))  # steps 6 and 7 never reported: the window still starts at 5
    assert "| train 3.5000 nats 5.049 bpb (mean of steps 5-8) |" in lines(out)[-1]


def test_no_step_limit_shows_no_total_and_a_limit_of_zero_shows_it():
    for max_steps, head in ((-1, "step 1 |"), (0, "step 1/0 |")):
        out = io.StringIO()
        ConsolePrinter(50, max_steps, stream=out, clock=FakeClock())(step(1))
        assert out.getvalue().startswith(head)


def test_a_fast_run_still_prints_only_every_log_interval():
    p, out, clock = printer(log_interval=10)
    p(started())
    for n in range(1, 31):
        clock.now += 0.01
        p(step(n))
    steps = [line.split(" |")[0] for line in lines(out) if line.startswith("step ")]
    assert steps == ["step 1/1000", "step 10/1000", "step 20/1000", "step 30/1000"]


def test_any_printed_line_resets_the_10_second_heartbeat():
    p, out, clock = printer(log_interval=50)
    p(step(1))
    clock.now += 9.0
    p(events.NoticeGiven(step=1, message="pausing after this step"))
    clock.now += 5.0  # 14 s since the step line, 5 s since the notice
    p(step(2))
    assert not any(line.startswith("step 2") for line in lines(out))
    clock.now += 5.0
    p(step(3))
    assert lines(out)[-1].startswith("step 3/1000")


def test_notices_are_printed_at_once():
    p, out, clock = printer()
    p(events.NoticeGiven(step=7, message="stopping: saving checkpoint…"))
    assert lines(out) == ["stopping: saving checkpoint…"]


def test_progress_is_throttled_to_one_line_per_two_seconds_and_closed_when_done():
    p, out, clock = printer()
    for done in range(1, 49):  # 48 batches, 0.25 s each: 12 s in all
        clock.now += 0.25
        p(events.ProgressReported(step=3, task="held-out eval", done=done, total=48))
    got = lines(out)
    # nothing until the task has run 2 s (from its first record), then a line every 2 s
    assert got == [f"held-out eval: {n}/48" for n in (9, 17, 25, 33, 41)] + [
        "held-out eval: 48/48 done"
    ]


def test_a_short_task_prints_no_progress_lines():
    p, out, clock = printer()
    for done in range(1, 5):
        clock.now += 0.1
        p(events.ProgressReported(step=3, task="held-out eval", done=done, total=4))
    assert lines(out) == []


def test_a_task_that_starts_again_waits_its_two_seconds_again():
    p, out, clock = printer()
    clock.now += 3.0
    p(events.ProgressReported(step=1, task="horizon validation", done=1, total=10))
    clock.now += 3.0
    p(events.ProgressReported(step=1, task="horizon validation", done=2, total=10))
    assert lines(out) == ["horizon validation: 2/10"]
    clock.now += 0.5
    p(events.ProgressReported(step=2, task="horizon validation", done=1, total=10))  # a new run
    clock.now += 1.0
    p(events.ProgressReported(step=2, task="horizon validation", done=2, total=10))
    assert lines(out) == ["horizon validation: 2/10"]
