"""eval's progress bar, and the progress(done, total) callback of the evaluation functions."""

from __future__ import annotations

import io

import torch

from h2q_tui.cli.progress import WindowProgressBar
from h2q_tui.training.evaluate import heldout_cross_entropy, mean_cross_entropy


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(256, 256)

    def forward(self, x, y):
        logits = self.emb(x)
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def test_heldout_cross_entropy_reports_every_batch_against_a_total_known_up_front():
    data = torch.randint(0, 256, (10 * 16 + 1,), dtype=torch.uint8)
    calls: list[tuple[int, int]] = []
    nats = heldout_cross_entropy(
        TinyLM(), data, 16, torch.device("cpu"), batch=3, progress=lambda d, t: calls.append((d, t))
    )
    assert nats > 0
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 10 windows in batches of 3


def test_mean_cross_entropy_takes_the_total_from_a_sized_batch_list():
    x = torch.randint(0, 256, (2, 8))
    calls: list[tuple[int, int]] = []
    mean_cross_entropy(
        TinyLM(), [(x, x), (x, x)], torch.device("cpu"), progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(1, 2), (2, 2)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bar_redraws_in_place_and_ends_with_its_final_state_and_a_newline():
    out, clock = io.StringIO(), FakeClock()
    bar = WindowProgressBar(100, 10, stream=out, clock=clock, width=10, interval=0.5)
    for done in range(1, 11):
        clock.now += 0.3
        bar(done, 10)
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    frames = text[1:-1].split("\r")
    assert frames[-1] == "evaluating [##########] 100/100 windows 100% 3.0 s"
    assert len(frames) == 6  # throttled to one frame per 0.5 s, plus the final one
    assert frames[0].startswith("evaluating [#---------] 10/100 windows")


def test_bar_stays_silent_for_a_handful_of_batches():
    out = io.StringIO()
    bar = WindowProgressBar(6, 2, stream=out)
    for done in range(1, 4):
        bar(done, 3)
    assert out.getvalue() == ""


def test_a_partial_last_batch_still_ends_at_the_window_count():
    out = io.StringIO()
    bar = WindowProgressBar(95, 10, stream=out, interval=0.0)
    for done in range(1, 11):
        bar(done, 10)
    assert "95/95 windows" in out.getvalue().rsplit("\r", 1)[-1]
    assert "100/95" not in out.getvalue()
