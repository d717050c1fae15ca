"""Follow an append-only JSONL file that another process is writing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class JsonlTailer:
    """Return the complete new JSON-object lines of a growing file on each read_new() call."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset_bytes = 0
        self.skipped_lines = 0
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
                return handle.read()
        except FileNotFoundError:
            return b""

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
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None
