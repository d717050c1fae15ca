"""JsonlTailer: complete records only, once each, robust to junk, absence and truncation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from h2q_tui.training import tail
from h2q_tui.training.tail import MAX_LINE_BYTES, JsonlTailer, not_regular

# files that are not regular: a FIFO blocks an open, a device reads without end
NOT_REGULAR_FILES = pytest.mark.parametrize(
    "make, kind",
    [
        (lambda path: os.mkfifo(path), "a FIFO"),
        (lambda path: path.symlink_to("/dev/zero"), "a character device"),
        (lambda path: path.symlink_to("/dev/urandom"), "a character device"),
    ],
    ids=["fifo", "dev-zero", "dev-urandom"],
)


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def test_missing_file_gives_nothing(tmp_path: Path) -> None:
    tailer = JsonlTailer(tmp_path / "events.jsonl")
    assert tailer.read_new() == []
    assert tailer.read_new() == []


def test_half_line_waits_until_complete(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tailer = JsonlTailer(path)
    append(path, '{"step": 1}\n{"step"')
    assert tailer.read_new() == [{"step": 1}]
    assert tailer.read_new() == []
    append(path, ": 2, ")
    assert tailer.read_new() == []
    append(path, '"loss": 0.5}\n')
    assert tailer.read_new() == [{"step": 2, "loss": 0.5}]
    assert tailer.read_new() == []
    assert tailer.skipped_lines == 0


def test_split_inside_a_multibyte_character(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    data = json.dumps({"text": "é"}, ensure_ascii=False).encode("utf-8") + b"\n"
    cut = data.index("é".encode()) + 1
    tailer = JsonlTailer(path)
    path.write_bytes(data[:cut])
    assert tailer.read_new() == []
    with open(path, "ab") as handle:
        handle.write(data[cut:])
    assert tailer.read_new() == [{"text": "é"}]


def test_invalid_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, '{"a": 1}\nnot json\n[1, 2]\n\n{"b": 2}\n{"broken": \n')
    tailer = JsonlTailer(path)
    assert tailer.read_new() == [{"a": 1}, {"b": 2}]
    assert tailer.skipped_lines == 3


def test_truncation_restarts_from_the_top(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, '{"run": 1, "step": 1}\n{"run": 1, "step": 2}\n')
    tailer = JsonlTailer(path)
    assert len(tailer.read_new()) == 2
    path.write_text('{"run": 2}\n', encoding="utf-8")
    assert tailer.read_new() == [{"run": 2}]
    assert tailer.offset_bytes == path.stat().st_size


def test_many_records_in_one_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, "".join(json.dumps({"step": i}) + "\n" for i in range(5000)))
    tailer = JsonlTailer(path)
    records = tailer.read_new()
    assert [r["step"] for r in records] == list(range(5000))
    assert tailer.read_new() == []


def test_replaced_file_restarts_even_when_not_smaller(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, '{"run": 1}\n')
    tailer = JsonlTailer(path)
    assert tailer.read_new() == [{"run": 1}]
    fresh = tmp_path / "fresh.jsonl"
    append(fresh, '{"run": 2}\n{"run": 2, "step": 1}\n')
    fresh.replace(path)
    assert tailer.read_new() == [{"run": 2}, {"run": 2, "step": 1}]


def test_valid_json_with_bad_fields_is_passed_on_for_the_reader_to_judge(tmp_path: Path) -> None:
    # The tailer only splits lines; RunHistory.add validates and counts bad records.
    path = tmp_path / "metrics.jsonl"
    append(path, '{"event": "step"}\n{"event": "step", "step": NaN}\n{"step": Infinity}\n')
    tailer = JsonlTailer(path)
    records = tailer.read_new()
    assert records[0] == {"event": "step"} and records[1]["step"] != records[1]["step"]
    assert len(records) == 3 and tailer.skipped_lines == 0


def test_hostile_lines_are_skipped_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    deep = "[" * 100_000 + "]" * 100_000  # RecursionError inside json
    huge_int = '{"step": ' + "9" * 5000 + "}"  # beyond int's default digit limit
    path.write_bytes(
        b"\xff\xfe garbage\n"
        + deep.encode()
        + b"\n"
        + huge_int.encode()
        + b"\n"
        + b'{"text": "\xe9t\xe9"}\n'  # Latin-1, not UTF-8: still an object
        + b"null\n42\n"
    )
    tailer = JsonlTailer(path)
    records = tailer.read_new()
    assert len(records) == 1 and records[0]["text"].startswith("\ufffd")
    assert tailer.skipped_lines == 5


def test_an_unreadable_path_gives_nothing_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.mkdir()  # a directory where the log should be
    tailer = JsonlTailer(path)
    assert tailer.read_new() == []
    assert tailer.read_error is not None and "metrics.jsonl" in tailer.read_error
    path.rmdir()
    append(path, '{"a": 1}\n')
    assert tailer.read_new() == [{"a": 1}] and tailer.read_error is None


def read_in_a_thread(tailer: JsonlTailer, **kwargs) -> list:
    """read_new() on a thread that must end within 10 s (a FIFO would block it for ever)."""
    import threading

    result: list = []
    thread = threading.Thread(target=lambda: result.append(tailer.read_new(**kwargs)))
    thread.daemon = True
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "read_new() blocked"
    return result[0]


@NOT_REGULAR_FILES
def test_a_fifo_or_a_device_is_refused_at_once_not_read(tmp_path: Path, make, kind) -> None:
    path = tmp_path / "metrics.jsonl"
    make(path)
    tailer = JsonlTailer(path)
    assert read_in_a_thread(tailer) == []
    assert tailer.read_error == f"{path} is {kind}, not a regular file"
    assert tailer.offset_bytes == 0 and not tailer.behind
    assert not_regular(path) == tailer.read_error
    path.unlink()
    append(path, '{"a": 1}\n')
    assert tailer.read_new() == [{"a": 1}] and tailer.read_error is None


def test_over_long_lines_are_skipped_and_counted_without_being_held(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    long_line = '{"text": "' + "x" * (3 * MAX_LINE_BYTES) + '"}'
    append(path, '{"a": 1}\n' + long_line + '\n{"b": 2}\n')
    tailer = JsonlTailer(path)
    records = []
    for _ in range(40):  # slices of 64 KiB: the long line is never read whole
        records += tailer.read_new(max_bytes=64 << 10)
        if not tailer.behind:
            break
    assert records == [{"a": 1}, {"b": 2}]
    assert tailer.skipped_lines == 1 and tailer.long_lines == 1
    # one still being written: skipped as it grows, the record after its end is read
    append(path, "y" * (2 * MAX_LINE_BYTES))
    assert tailer.read_new() == [] and tailer.long_lines == 2
    append(path, "y" * MAX_LINE_BYTES)
    assert tailer.read_new() == []
    append(path, 'yyy\n{"c": 3}\n')
    assert tailer.read_new() == [{"c": 3}]
    assert tailer.skipped_lines == 2 and tailer.offset_bytes == path.stat().st_size


def test_a_line_longer_than_one_slice_but_within_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    text = "z" * (200 << 10)
    append(path, json.dumps({"text": text}) + "\n" + '{"b": 2}\n')
    tailer = JsonlTailer(path)
    first = tailer.read_new(max_bytes=4 << 10)
    assert first[0]["text"] == text and tailer.long_lines == 0


def test_a_long_backlog_is_read_in_slices_with_its_early_steps_thinned(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(tail, "FULL_TAIL_BYTES", 20_000)
    monkeypatch.setattr(tail, "THIN_STEPS", 50)
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"event": "run_started"}, separators=(",", ":"))]
    for step in range(1, 5001):
        lines.append(json.dumps({"event": "step", "step": step}, separators=(",", ":")))
        if step % 100 == 0:
            lines.append(json.dumps({"event": "eval", "step": step}, separators=(",", ":")))
    append(path, "\n".join(lines) + "\n")
    tailer = JsonlTailer(path)
    records, reads = [], 0
    while True:
        records += tailer.read_new(max_bytes=16 << 10)
        reads += 1
        if not tailer.behind:
            break
    assert reads > 5  # slices, not one read of everything
    steps = [r["step"] for r in records if r["event"] == "step"]
    evals = [r["step"] for r in records if r["event"] == "eval"]
    assert records[0] == {"event": "run_started"} and evals == list(range(100, 5001, 100))
    data = path.read_bytes()
    full_tail = data[data.index(b"\n", len(data) - 20_000) + 1 :]  # lines read whole
    recent = [r["step"] for r in map(json.loads, full_tail.splitlines()) if r["event"] == "step"]
    assert steps[-len(recent) :] == recent  # every recent step...
    assert 25 <= len(steps) - len(recent) <= 100  # ...and about THIN_STEPS before them
    assert tailer.thinned_lines + len(steps) == 5000 and tailer.skipped_lines == 0
    append(path, json.dumps({"event": "step", "step": 5001}, separators=(",", ":")) + "\n")
    assert tailer.read_new() == [{"event": "step", "step": 5001}]  # live lines: all read
