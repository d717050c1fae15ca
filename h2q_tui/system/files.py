"""Files written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` at ``path`` through a temporary file beside it and one rename, so a reader,
    a full disk or a stop signal mid-write never leaves a half-written file there (the old
    one stays). OSError propagates; the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask_file_mode() -> int:
    """The mode a new file gets under this process's umask (0o644 under the usual 022).

    Read from /proc (Linux), which leaves the umask alone; elsewhere set and restored at once.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def give_umask_mode(path: str | Path) -> None:
    """Set ``path`` to the mode every other file of ours gets (writers that create files
    0600, as safetensors does, would otherwise leave one file of a folder unreadable to
    the group and others)."""
    os.chmod(path, umask_file_mode())
