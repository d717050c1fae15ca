"""Torch work off the main thread runs on a thread that ends with it (h2q_tui/system/threads.py)."""

from __future__ import annotations

import contextvars
import threading

import pytest

from h2q_tui.system.threads import on_own_thread, run_on_own_thread

LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="unset")


def test_runs_on_a_new_thread_that_has_ended_and_returns_the_result():
    seen: list[threading.Thread] = []

    def work(a: int, b: int = 0) -> int:
        seen.append(threading.current_thread())
        return a + b

    assert run_on_own_thread(work, 2, b=3) == 5
    (thread,) = seen
    assert thread is not threading.current_thread()
    assert thread.name == "h2q-work" and not thread.is_alive()


def test_errors_are_raised_in_the_caller():
    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_on_own_thread(fail)


def test_context_variables_carry_over():  # Textual's get_current_worker() is one
    LABEL.set("from the caller")
    assert run_on_own_thread(LABEL.get) == "from the caller"


def test_the_decorator_keeps_the_name_and_passes_self():
    class Pane:
        @on_own_thread
        def _worker(self, x: int) -> tuple[int, str]:
            return x * 2, threading.current_thread().name

    assert Pane._worker.__name__ == "_worker"
    assert Pane()._worker(21) == (42, "h2q-worker")
