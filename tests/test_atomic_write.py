"""write_text_atomic: a failed write (full disk) leaves the old file whole and no leftovers."""

from __future__ import annotations

import errno
import os

import pytest

from h2q_tui.system import files


def test_writes_the_text(tmp_path):
    target = tmp_path / "report.json"
    files.write_text_atomic(target, "{}\n")
    assert target.read_text() == "{}\n" and os.listdir(tmp_path) == ["report.json"]


def test_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        files.write_text_atomic(target, "new and longer\n")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["report.json"]


def test_hotstart_json_error_is_one_line(tmp_path, monkeypatch):
    from h2q_tui.cli import hotstart as command
    from h2q_tui.errors import UserError

    target = tmp_path / "hot.json"
    target.write_text("old\n")
    monkeypatch.setattr(
        files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space"))
    )
    with pytest.raises(UserError, match=r"cannot write --json .*hot.json: No space"):
        command.write_json({"a": 1}, target)
    assert target.read_text() == "old\n"
