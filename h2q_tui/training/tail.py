"""Follow an append-only JSONL file that another process is writing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class JsonlTailer:
    """Return the complete new JSON-object lines of a growing file on each read_new() call.

    Never raises for what is in (or happens to) the file: a line that is not a JSON object
    is skipped and counted in ``skipped_lines``; a file that cannot be read (a directory,
    no permission) gives nothing and says why in ``read_error`` until it can be read again.
    Whether an object is a valid record is for the reader to decide (``RunHistory.add``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset_bytes = 0
        self.skipped_lines = 0
        self.read_error: str | None = None
        self._file_id: tuple[int, int] | None = None

    def read_new(self) -> list[dict[str, Any]]:
        """Records completed since the last call; a trailing partial line waits for next time."""
        chunk = self._read_from_offset()
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset_bytes += end + 1
        return self._parse(chunk[: end + 1].decode("utf-8", errors="replace"))

    def _read_from_offset(self) -> bytes:
        """Bytes from the saved offset to the end (b"" if the file is missing); restart if replaced."""
        try:
            with open(self.path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                self._restart_if_replaced((stat.st_dev, stat.st_ino), stat.st_size)
                handle.seek(self.offset_bytes)
                data = handle.read()
        except FileNotFoundError:
            self.read_error = None  # not written yet: nothing is wrong
            return b""
        except OSError as exc:
            self.read_error = f"cannot read {self.path}: {exc.strerror or exc}"
            return b""
        self.read_error = None
        return data

    def _restart_if_replaced(self, file_id: tuple[int, int], size_bytes: int) -> None:
        """Go back to offset 0 when the file shrank or is a different file than before."""
        if size_bytes < self.offset_bytes or (self._file_id not in (None, file_id)):
            self.offset_bytes = 0
        self._file_id = file_id

    def _parse(self, text: str) -> list[dict[str, Any]]:
        """Parse newline-separated JSON objects, counting the non-blank lines that are not."""
        records: list[dict[str, Any]] = []
        for line in text.split("\n"):
            line = line.strip()
            if not line:
                continue
            record = self._parse_line(line)
            if record is None:
                self.skipped_lines += 1
            else:
                records.append(record)
        return records

    @staticmethod
    def _parse_line(line: str) -> dict[str, Any] | None:
        """The JSON object on this line, or None if it is not one."""
        try:
            value = json.loads(line)
        except (ValueError, RecursionError, MemoryError):
            return None
        return value if isinstance(value, dict) else None
