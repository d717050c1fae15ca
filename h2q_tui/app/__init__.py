"""The Textual dashboard. Only this package imports textual/rich; the engine never does."""

from h2q_tui.app.shell import H2QApp, make_app
from h2q_tui.app.training_app import run_app

__all__ = ["H2QApp", "make_app", "run_app"]
