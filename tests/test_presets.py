"""Every small preset builds, trains a couple of steps headless, resumes, samples and evaluates."""

from __future__ import annotations

import queue

import pytest

from h2q_tui import checkpoints
from h2q_tui.config import preset_names, resolve
from h2q_tui.data.sources import load_corpus
from h2q_tui.training import commands, events
from h2q_tui.training.trainer import Trainer

BIG = {"hamiltonian-llm-124m", "qrlm", "microstream", "h2q-transformer", "gpt"}  # source-sized
SMALL = [name for name in preset_names() if name not in BIG]
FAST = [
    "model.n_layers=2",  # the preset's width and layers, two of them: building four is most of the time
    "train.batch_size=2",
    "model.context=32",
    "log.sample_interval=0",
    "log.sample_bytes=8",
    "eval.heldout_bytes=2048",
    "train.warmup_steps=0",
]


def test_the_source_presets_are_all_present():
    assert BIG <= set(preset_names())
    assert {
        "microstream-cpu",
        "gpt-cpu",
        "h2q-transformer-cpu",
        "qrlm-cpu",
        "hamiltonian-llm",
    } <= set(SMALL)


@pytest.mark.parametrize("name", SMALL)
def test_small_preset_trains_resumes_and_samples(tmp_path, text_file, name):
    corpus = load_corpus(str(text_file), heldout_fraction=0.1)
    config = resolve(name, [*FAST, "train.max_steps=3", "train.chunk_bytes=4096"])
    q: queue.Queue = queue.Queue()
    log: list[events.Event] = []

    def emit(event):
        log.append(event)
        if isinstance(event, events.StepCompleted) and event.step == 2:
            q.put(commands.SampleNow())
            q.put(commands.Stop("interrupted"))

    Trainer(config, corpus, tmp_path / "run", emit, q, preset=name).run()
    assert [e.step for e in log if isinstance(e, events.StepCompleted)] == [1, 2]
    assert [e for e in log if isinstance(e, events.SampleReady)][0].text
    info = checkpoints.read_info(tmp_path / "run")
    resumed: list[events.Event] = []
    Trainer(config, corpus, tmp_path / "run", resumed.append, preset=name, resume_from=info).run()
    assert [e.step for e in resumed if isinstance(e, events.StepCompleted)] == [3]
    model = checkpoints.load_model_from(checkpoints.read_info(tmp_path / "run"))
    assert model is not None


def test_the_presets_list_gives_whole_sentences_within_80_columns(tmp_path):
    """`h2q-tui presets` cut descriptions at the first comment line, mid-sentence."""
    from h2q_tui.cli.presets import description_of, format_table, summaries

    preset = tmp_path / "two-lines.toml"
    preset.write_text("# A model sized for\n# a small CPU. Second sentence.\n#\n[model]\n")
    assert description_of(preset) == "A model sized for a small CPU."
    rows = summaries()
    table = format_table(rows, width=80)
    assert max(map(len, table.splitlines())) <= 80
    words = table.split()
    for row in rows:
        assert row.description.endswith("."), row
        assert " ".join(row.description.split()) in " ".join(words), row.name
    piped = format_table(rows).splitlines()  # no width: one line per preset, for grep
    assert len(piped) == len(rows) + 1
