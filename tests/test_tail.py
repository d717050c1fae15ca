"""JsonlTailer: complete records only, once each, robust to junk, absence and truncation."""

from __future__ import annotations

import json
from pathlib import Path

from h2q_tui.training.tail import JsonlTailer


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
