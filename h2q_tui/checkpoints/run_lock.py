"""One writer per run dir: an OS file lock on ``RUN_DIR/.lock``, held for the life of the process.

A second process on the same run dir (a fresh start or a resume) fails at once with the PID
of the holder instead of interleaving its steps into the same ``metrics.jsonl``. The lock is
``flock`` on an open file, so the kernel releases it when the holder exits, even on kill -9.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from h2q_tui.errors import UserError, write_error

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # resolved run dir → open file descriptor holding its lock


def acquire(run_dir: Path) -> None:
    """Lock ``run_dir`` for this process (again is a no-op), or raise naming the holder."""
    key = Path(run_dir).resolve()
    if key in _held:
        return
    path = key / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file
    except OSError as exc:
        raise UserError(f"cannot write run dir {run_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise UserError(
            f"run dir {run_dir} is in use by another h2q-tui process (PID {holder}); "
            "wait for it to finish, stop it, or use another --run-dir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:  # a full disk: give the lock back and leave no empty lock file
        os.close(fd)
        path.unlink(missing_ok=True)
        raise write_error(LOCK_FILE, run_dir, exc, ", then start again") from None
    _held[key] = fd


def holds(run_dir: Path) -> bool:
    """Whether this process holds the lock of ``run_dir``."""
    return Path(run_dir).resolve() in _held


def held() -> set[Path]:
    """The run dirs this process holds."""
    return set(_held)


def release(run_dir: Path, remove: bool = False) -> None:
    """Give the lock back (the process's exit does this too); ``remove`` deletes the lock file
    (a refused command leaves the folder as it found it)."""
    key = Path(run_dir).resolve()
    fd = _held.pop(key, None)
    if fd is not None:
        if remove:
            (key / LOCK_FILE).unlink(missing_ok=True)
        os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown"
