"""How many torch threads to use, from what the machine can give now, and why.

Training with ``train.threads = 0`` (auto) times real steps at 1 thread and at every core
this process may use, interleaved, and keeps the faster; it measures again when the step
time drifts (other work started or ended on the machine). Batch-1 decoding uses one thread:
its ops are too small to split (``benchmarks/threads.py``). A count the user set is used as
it is. Every choice carries a one-line reason for the header, ``run_started`` and the
System pane. This module imports nothing heavy; callers apply the count to torch.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

DECODE_THREADS = 1  # batch-1 decoding: one thread (see the module docstring)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def cores_per_process(local_processes: int = 1) -> int:
    """This process's share of the usable cores when ``local_processes`` share the machine."""
    return max(1, usable_cores() // max(1, local_processes))


def local_process_count(fallback: int = 1) -> int:
    """Processes of this torchrun job on this machine (LOCAL_WORLD_SIZE), else ``fallback``."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "") or fallback))
    except ValueError:
        return max(1, fallback)


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and why it was chosen."""

    threads: int
    reason: str
    set_by_user: bool = False

    def describe(self) -> str:
        """e.g. "1 thread — 1.8x faster than 2 on this machine now (…)"."""
        return f"{plural(self.threads)} — {self.reason}"


def plural(threads: int) -> str:
    return f"{threads} thread{'s' if threads != 1 else ''}"


def user_choice(threads: int, what: str = "train.threads / --threads") -> ThreadChoice:
    return ThreadChoice(threads, f"set by you ({what})", set_by_user=True)


def decoding_choice(threads: int | None = None) -> ThreadChoice:
    """Batch-1 decoding's thread count: the user's, else one."""
    if threads is not None:
        return user_choice(threads, "--threads")
    return ThreadChoice(
        DECODE_THREADS,
        "batch-1 decoding: each token's ops are too small to split across cores",
    )


def batched_choice(threads: int = 0, cores: int | None = None) -> ThreadChoice:
    """Batched forward passes (eval, crystallize's measurement): the user's count, else every
    usable core (idle OpenMP workers sleep: h2q_tui/system/openmp.py)."""
    if threads:
        return user_choice(threads)
    cores = usable_cores() if cores is None else cores
    return ThreadChoice(cores, f"batched forward passes: the {plural(cores)} this process may use")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


class StepThreadChooser:
    """Chooses between 1 thread and ``cores`` threads from timed steps, and re-checks on drift.

    The caller asks :meth:`threads_for_next_step`, runs the step on that count, and reports
    its time to :meth:`observe`, which returns a new :class:`ThreadChoice` when one was
    made (else None). Timings come only through ``observe``: tests inject them.

    Args:
        cores: the largest count to try (the cores this process may use).
        settle_steps: steps run first and not timed (allocations, caches).
        probe_steps: timed steps at each count, interleaved 1, N, 1, N, ...
        window: steps whose median is compared with the median at the choice.
        drift: a window median this many times slower (or faster) measures again.
        what: names the unit in the reasons ("a step", "a batch").
    """

    def __init__(
        self,
        cores: int,
        *,
        settle_steps: int = 1,
        probe_steps: int = 3,
        window: int = 20,
        drift: float = 1.5,
        what: str = "a step",
    ) -> None:
        self.cores = max(1, cores)
        self.settle_steps, self.probe_steps = settle_steps, probe_steps
        self.window, self.drift, self.what = window, drift, what
        self.recent: deque[float] = deque(maxlen=window)
        self.reference_s: float | None = None  # median step time at the last choice
        self.choice = self._initial_choice()
        self._plan: list[int] = []
        self._samples: dict[int, list[float]] = {}
        self._pending: int | None = None  # the count the step being timed runs on
        self._settling = 0  # untimed steps left at the head of the plan
        self._why_measure = "measured at the start"
        if self.cores > 1:
            self._start_probe(settle=settle_steps)

    def _initial_choice(self) -> ThreadChoice:
        if self.cores == 1:
            return ThreadChoice(1, "this process may use 1 core")
        return ThreadChoice(
            self.cores,
            f"auto: timing {self.what} at 1 and at {self.cores} threads first",
        )

    @property
    def measuring(self) -> bool:
        return bool(self._plan)

    def _start_probe(self, settle: int = 0) -> None:
        counts = [1, self.cores] * self.probe_steps
        self._plan = [self.choice.threads] * settle + counts
        self._settling = settle
        self._samples = {1: [], self.cores: []}
        self.recent.clear()

    def threads_for_next_step(self) -> int:
        self._pending = self._plan[0] if self._plan else self.choice.threads
        return self._pending

    def observe(self, step_s: float) -> ThreadChoice | None:
        """Take the time of the step just run; a new choice when this step completed one."""
        threads = self._pending if self._pending is not None else self.choice.threads
        self._pending = None
        if self._plan:
            self._plan.pop(0)
            if self._settling:
                self._settling -= 1
            else:
                self._samples[threads].append(step_s)
            if not self._plan:
                return self._decide()
            return None
        if self.cores == 1:
            return None
        self.recent.append(step_s)
        if len(self.recent) == self.window and self.reference_s:
            now = statistics.median(self.recent)
            if now > self.reference_s * self.drift or now * self.drift < self.reference_s:
                change = "rose" if now > self.reference_s else "fell"
                self._why_measure = (
                    f"measured again: {self.what} {change} from {_ms(self.reference_s)} "
                    f"to {_ms(now)}"
                )
                self._start_probe()
        return None

    def _decide(self) -> ThreadChoice:
        one = statistics.median(self._samples[1])
        many = statistics.median(self._samples[self.cores])
        best, other = (1, self.cores) if one <= many else (self.cores, 1)
        best_s, other_s = (one, many) if best == 1 else (many, one)
        self.reference_s = best_s
        self.choice = ThreadChoice(
            best,
            f"auto ({self._why_measure}): {_ms(best_s)} {self.what} on {plural(best)}, "
            f"{_ms(other_s)} on {other} ({other_s / max(best_s, 1e-12):.2f}x slower)",
        )
        return self.choice


def for_training(
    threads: int,
    device_type: str,
    compiled: bool = False,
    local_processes: int = 1,
) -> tuple[StepThreadChooser | None, ThreadChoice]:
    """Training's thread count and, for ``train.threads = 0`` on a CPU, the chooser that
    times steps (None when the count is fixed)."""
    if threads:
        return None, user_choice(threads)
    cores = cores_per_process(local_processes)
    share = (
        f" ({usable_cores()} cores shared by {local_processes} processes)"
        if local_processes > 1
        else ""
    )
    if device_type != "cpu":
        return None, ThreadChoice(cores, f"the GPU computes; {plural(cores)} feed it{share}")
    if compiled:
        return None, ThreadChoice(
            cores, f"torch.compile builds its kernels for one count: {plural(cores)}{share}"
        )
    chooser = StepThreadChooser(cores)
    if share:
        chooser.choice = ThreadChoice(chooser.choice.threads, chooser.choice.reason + share)
    return chooser, chooser.choice


class BatchPacer:
    """Runs a loop of like units (eval batches) on a chooser's counts: call it after every
    unit, e.g. as the progress callback; ``choice`` says the count in use and why."""

    def __init__(
        self,
        threads: int,
        set_threads: Callable[[int], None],
        clock: Callable[[], float] = time.perf_counter,
        cores: int | None = None,
    ) -> None:
        self.chooser = (
            None if threads else StepThreadChooser(cores or usable_cores(), what="a batch")
        )
        self.choice = self.chooser.choice if self.chooser else user_choice(threads, "--threads")
        self.set_threads, self.clock = set_threads, clock
        self._begin()

    def _begin(self) -> None:
        self.set_threads(
            self.chooser.threads_for_next_step() if self.chooser else self.choice.threads
        )
        self.started = self.clock()

    def __call__(self, *_: object) -> None:
        if self.chooser is not None:
            self.choice = self.chooser.observe(self.clock() - self.started) or self.choice
        self._begin()
