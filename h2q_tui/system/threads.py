"""Torch work off the main thread runs on a thread of its own that ends with the work.

PyTorch's CPU build uses GNU OpenMP (libgomp), which gives every thread that starts a
parallel region its own team of worker threads and keeps that team until the thread ends.
Once more OpenMP threads exist than cores, libgomp stops spinning between parallel regions
and sleeps on a futex instead, which cost training ~10 % on a 2-core machine
(``benchmarks/openmp_teams.py``; README, "Performance"). Textual runs thread workers on
asyncio's pooled executor threads, which live as long as the app: a team made on one of
them would outlive its work and slow every later training step. A thread that ends takes
its team with it.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_on_own_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` on a new thread, wait for it, and return its result or raise its error.

    Context variables carry over, so Textual's ``get_current_worker()`` still works in ``fn``.
    """
    context = contextvars.copy_context()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"h2q-{fn.__name__.strip('_')}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def on_own_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator form of :func:`run_on_own_thread` (put it under Textual's ``@work``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return run_on_own_thread(fn, *args, **kwargs)

    return wrapper
