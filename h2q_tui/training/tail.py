"""Follow an append-only JSONL file that another process is writing."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

CHUNK_BYTES = 4 << 20  # read at most this much per read_new(): a huge log loads in slices
MAX_LINE_BYTES = 1 << 20  # longer lines are skipped and counted (our records are < 100 KB)
# A long backlog (a log of hours of steps, attached at once) is read whole only in its last
# FULL_TAIL_BYTES; before that, step records (one a step) are kept one in k so that about
# THIN_STEPS remain, as many as a chart can show. Every other record is read.
FULL_TAIL_BYTES = 8 << 20
THIN_STEPS = 4000
STEP_PREFIX = b'{"event":"step",'  # how JsonlWriter begins a step record
KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def not_regular(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` (its symlinks followed) is not a file to read: "… is a FIFO, not a
    regular file"; None when it is one or does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return _kind_problem(path, mode)


def _kind_problem(path: str | os.PathLike[str], mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = KINDS.get(stat.S_IFMT(mode), "not a file")
    return f"{path} is {kind}, not a regular file"


class JsonlTailer:
    """Return the complete new JSON-object lines of a growing file on each read_new() call.

    Never raises for what is in (or happens to) the file: a line that is not a JSON object
    is skipped and counted in ``skipped_lines`` (those over MAX_LINE_BYTES in ``long_lines``
    too, without being read whole); a path that cannot be read (a directory, no permission)
    or must not be (a FIFO, a device: reading would block or never end) gives nothing and
    says why in ``read_error`` until it can be read again. Each call reads at most
    ``max_bytes``; ``behind`` says more is waiting. Whether an object is a valid record is
    for the reader to decide (``RunHistory.add``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset_bytes = 0
        self.skipped_lines = 0
        self.long_lines = 0
        self.behind = False
        self.read_error: str | None = None
        self._file_id: tuple[int, int] | None = None
        self._in_long_line = False  # the offset is inside a line being skipped
        self.thin_until = 0  # before this offset, step records are thinned...
        self.keep_every = 1  # ...to one in keep_every
        self.thinned_lines = 0  # step records not read for that
        self._steps_seen = 0

    def read_new(self, max_bytes: int = CHUNK_BYTES) -> list[dict[str, Any]]:
        """Records completed since the last call; a trailing partial line waits for next time."""
        chunk = self._read_from_offset(max_bytes)
        if not self._in_long_line and self.behind and b"\n" not in chunk:
            chunk = self._read_from_offset(MAX_LINE_BYTES + 1)  # a line longer than max_bytes
        if self._in_long_line:
            end = chunk.find(b"\n")
            skipped = len(chunk) if end < 0 else end + 1
            self.offset_bytes += skipped
            chunk = chunk[skipped:]
            self._in_long_line = end < 0
        end = chunk.rfind(b"\n")
        records = self._parse(chunk[: end + 1], self.offset_bytes) if end >= 0 else []
        self.offset_bytes += end + 1
        if len(chunk) - (end + 1) > MAX_LINE_BYTES:  # a line with no end in sight
            self._start_long_line()
            self.offset_bytes += len(chunk) - (end + 1)
        return records

    def _start_long_line(self) -> None:
        self.skipped_lines += 1
        self.long_lines += 1
        self._in_long_line = True

    def _read_from_offset(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` from the saved offset (b"" if the file is missing or is not a
        regular file); restart if replaced."""
        self.behind = False
        problem = not_regular(self.path)  # before opening: opening a FIFO blocks
        if problem is None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            except FileNotFoundError:
                self.read_error = None  # not written yet: nothing is wrong
                return b""
            except OSError as exc:
                problem = f"cannot read {self.path}: {exc.strerror or exc}"
            else:
                try:
                    return self._read_regular(fd, max_bytes)
                except OSError as exc:
                    problem = f"cannot read {self.path}: {exc.strerror or exc}"
                finally:
                    os.close(fd)
        self.read_error = problem
        return b""

    def _read_regular(self, fd: int, max_bytes: int) -> bytes:
        info = os.fstat(fd)
        problem = _kind_problem(self.path, info.st_mode)  # replaced since the stat
        if problem:
            raise OSError(problem)
        self._restart_if_replaced((info.st_dev, info.st_ino), info.st_size)
        data = os.pread(fd, max_bytes, self.offset_bytes)
        if self.offset_bytes == 0:
            self._plan_thinning(info.st_size, data)
        self.behind = self.offset_bytes + len(data) < info.st_size
        self.read_error = None
        return data

    def _restart_if_replaced(self, file_id: tuple[int, int], size_bytes: int) -> None:
        """Go back to offset 0 when the file shrank or is a different file than before."""
        if size_bytes < self.offset_bytes or (self._file_id not in (None, file_id)):
            self.offset_bytes = 0
            self._in_long_line = False
            self.thinned_lines = 0
        self._file_id = file_id

    def _plan_thinning(self, size_bytes: int, head: bytes) -> None:
        """From the file's size and its first bytes (their mean line length): which step
        records a first read of a long backlog keeps."""
        self.thin_until, self.keep_every, self._steps_seen = 0, 1, 0
        if size_bytes <= FULL_TAIL_BYTES:
            return
        self.thin_until = size_bytes - FULL_TAIL_BYTES
        line_bytes = len(head) / max(1, head.count(b"\n"))
        self.keep_every = max(1, math.ceil(self.thin_until / line_bytes / THIN_STEPS))

    def _thinned(self, raw: bytes, at: int) -> bool:
        """Whether this line (at byte ``at``) is a step record left out of a long backlog."""
        if at >= self.thin_until or not raw.startswith(STEP_PREFIX):
            return False
        self._steps_seen += 1
        if self._steps_seen % self.keep_every == 0:
            return False
        self.thinned_lines += 1
        return True

    def _parse(self, data: bytes, at: int = 0) -> list[dict[str, Any]]:
        """Parse newline-separated JSON objects (``data`` begins at byte ``at`` of the file),
        counting the non-blank lines that are not."""
        records: list[dict[str, Any]] = []
        for raw in data.split(b"\n"):
            line_at, at = at, at + len(raw) + 1
            if self.keep_every > 1 and self._thinned(raw, line_at):
                continue
            if len(raw) > MAX_LINE_BYTES:
                self.skipped_lines += 1
                self.long_lines += 1
                continue
            line = raw.decode("utf-8", errors="replace").strip()
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
