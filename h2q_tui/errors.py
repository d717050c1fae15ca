"""User-facing errors: the CLI prints their message on one line and exits 2."""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """Bad usage or bad input; the message names the problem and how to fix it."""


def write_error(
    what: str,
    where: Path,
    exc: OSError,
    after_freeing: str = ", then --resume (the last good checkpoint is intact)",
) -> UserError:
    """A one-line UserError for a failed write (disk full, read-only, permissions);
    ``after_freeing`` says what to do once space is free."""
    if exc.errno == errno.ENOSPC:
        return UserError(
            f"disk full while writing {what} in {where}: free some space{after_freeing}"
        )
    return UserError(f"cannot write {what} in {where}: {exc.strerror or exc}")
