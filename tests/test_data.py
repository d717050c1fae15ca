"""Byte data: sources, parallel streams, rolling horizon and held-out windows."""

from __future__ import annotations

import pytest
import torch

from h2q_tui.data.sources import default_corpus_bytes, load_corpus
from h2q_tui.data.streams import (
    HorizonSampler,
    RandomWindowSampler,
    heldout_batches,
    parallel_streams,
)
from h2q_tui.errors import UserError


def test_default_corpus_is_embedded_english_text():
    data = default_corpus_bytes()
    assert len(data) > 400_000 and b"the" in data


def test_file_is_read_as_bytes_not_characters(tmp_path):
    path = tmp_path / "utf8.txt"
    path.write_text("naïve café — ok\n" * 50, encoding="utf-8")
    corpus = load_corpus(str(path), heldout_fraction=0.1)
    raw = path.read_bytes()
    assert bytes(torch.cat([corpus.train, corpus.heldout]).tolist()) == raw
    assert corpus.train.numel() == len(raw) - int(len(raw) * 0.1)


def test_directory_concatenates_text_and_skips_binaries(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.md").write_text("beta\n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    corpus = load_corpus(str(tmp_path), heldout_fraction=0.1)
    joined = bytes(torch.cat([corpus.train, corpus.heldout]).tolist())
    assert joined == b"alpha\nbeta\n"


def test_explicit_heldout_is_never_part_of_training(tmp_path, text_file):
    heldout = tmp_path / "held.txt"
    heldout.write_text("held out text\n" * 20)
    corpus = load_corpus(str(text_file), str(heldout))
    assert corpus.train.numel() == text_file.stat().st_size
    assert corpus.heldout_source == str(heldout)


def test_parallel_streams_rows_are_consecutive_slices():
    chunk = torch.arange(20, dtype=torch.uint8)
    streams = parallel_streams(chunk, 3)  # L = 6, last 2 bytes dropped
    assert streams.tolist() == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18))]


def test_horizon_sampler_walks_windows_chunks_and_wraps():
    data = torch.arange(200, dtype=torch.uint8)
    sampler = HorizonSampler(
        data, batch=2, context=4, chunk_bytes=50
    )  # 4 chunks, 25 cols -> 6 windows
    x, y = sampler.next_batch()
    assert x.tolist() == [[0, 1, 2, 3], [25, 26, 27, 28]]
    assert y.tolist() == [[1, 2, 3, 4], [26, 27, 28, 29]]
    seen = 0
    while not (sampler.chunk == 0 and sampler.epoch == 1):
        sampler.advance()
        seen += 1
    assert seen == 4 * 6 and sampler.window == 0


def test_horizon_validation_reads_the_next_chunk():
    data = torch.arange(200, dtype=torch.uint8)
    sampler = HorizonSampler(data, batch=2, context=4, chunk_bytes=50)
    batches = list(sampler.horizon_val_batches(0.2))
    assert len(batches) == 1 and batches[0][0][0, 0].item() == 50  # chunk 1, first 1/5 of columns


def test_random_sampler_state_round_trip_repeats_batches():
    data = torch.randint(0, 256, (1000,), dtype=torch.uint8)
    a = RandomWindowSampler(data, 4, 8, seed=1)
    a.advance()
    state = a.state_dict()
    first = a.next_batch()[0]
    b = RandomWindowSampler(data, 4, 8, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.next_batch()[0], first)


def test_heldout_batches_cover_non_overlapping_windows():
    data = torch.arange(41, dtype=torch.uint8)
    batches = list(heldout_batches(data, context=10, batch=3))
    xs = torch.cat([x for x, _ in batches])
    assert xs.shape == (4, 10) and xs[:, 0].tolist() == [0, 10, 20, 30]


def test_too_short_heldout_is_an_error():
    with pytest.raises(ValueError):
        list(heldout_batches(torch.arange(5, dtype=torch.uint8), context=10, batch=1))


def test_named_corpus_unknown_name_lists_known(tmp_path):
    with pytest.raises(UserError, match="tinystories"):
        load_corpus(str(tmp_path / "nope-not-a-corpus"))
