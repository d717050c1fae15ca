"""User-facing errors: the CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """Bad usage or bad input; the message names the problem and how to fix it."""
