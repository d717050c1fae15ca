"""User-facing errors: the CLI prints their message on one line and exits 2."""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """Bad usage or bad input; the message names the problem and how to fix it."""


def resume_hint(run_dir: Path) -> str:
    """What to do once space is free: resume from the run's last checkpoint, or start again
    when it has none yet."""
    if any((Path(run_dir) / "checkpoints").glob("step_*")):
        return ", then --resume (the last good checkpoint is intact)"
    return ", then start the run again (no checkpoint was saved yet)"


def write_error(
    what: str,
    where: Path,
    exc: OSError,
    after_freeing: str | None = None,
) -> UserError:
    """A one-line UserError for a failed write (disk full, read-only, permissions);
    ``after_freeing`` says what to do once space is free (default: :func:`resume_hint` of
    the run ``where`` is, or is the ``checkpoints`` folder of)."""
    if exc.errno == errno.ENOSPC:
        if after_freeing is None:
            where = Path(where)
            after_freeing = resume_hint(where.parent if where.name == "checkpoints" else where)
        return UserError(
            f"disk full while writing {what} in {where}: free some space{after_freeing}"
        )
    return UserError(f"cannot write {what} in {where}: {exc.strerror or exc}")
