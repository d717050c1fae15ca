"""The OpenMP wait policy, decided before torch loads: idle workers sleep instead of spinning.

PyTorch's CPU build runs its parallel ops on GNU OpenMP (libgomp). Between parallel regions
libgomp's idle workers spin on a core for a while before they sleep (``OMP_WAIT_POLICY``
unset), and forever with ``ACTIVE``. On a machine whose cores other work also wants, a
spinning worker takes the time slice the thread it waits for needed: training on 2 threads
ran 8-13x slower than on one at a load average of 10-20, and at 1.05x the one-thread rate
with ``PASSIVE`` (docs/performance.md, "Threads"; ``benchmarks/threads.py``). libgomp reads
the variable once, when it is loaded (at ``import torch``), so every entry point calls
:func:`prefer_passive_waiting` before anything imports torch; child processes inherit it.
This module imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass

VARIABLE = "OMP_WAIT_POLICY"
OUR_POLICY = "PASSIVE"


@dataclass(frozen=True)
class WaitPolicy:
    """The policy in effect: its value, who set it, and whether it reached libgomp."""

    value: str  # PASSIVE | ACTIVE | "" (unset: libgomp spins a while, then sleeps)
    set_by_user: bool  # the environment held it before h2q-tui started
    in_effect: bool = True  # False when torch (libgomp) was loaded before it was set

    def describe(self) -> str:
        """e.g. "OpenMP waits passively (OMP_WAIT_POLICY=PASSIVE, set by h2q-tui)"."""
        if not self.value:
            return "OpenMP spins while idle (OMP_WAIT_POLICY unset)"
        how = "passively" if self.value.upper() == OUR_POLICY else f"per {self.value}"
        who = "set by you" if self.set_by_user else "set by h2q-tui"
        late = "" if self.in_effect else "; torch was loaded before it was set"
        return f"OpenMP waits {how} ({VARIABLE}={self.value}, {who}{late})"


_decided: WaitPolicy | None = None


def prefer_passive_waiting(environ: MutableMapping[str, str] | None = None) -> WaitPolicy:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; call before ``import torch``.

    The first call in a process decides; later calls return the same answer.
    """
    global _decided
    env = os.environ if environ is None else environ
    if environ is None and _decided is not None:
        return _decided
    set_by_user = VARIABLE in env
    env.setdefault(VARIABLE, OUR_POLICY)
    policy = WaitPolicy(
        env[VARIABLE], set_by_user, in_effect=set_by_user or "torch" not in sys.modules
    )
    if environ is None:
        _decided = policy
    return policy


def wait_policy() -> WaitPolicy:
    """The policy this process runs under (as decided at start, else as the environment says)."""
    if _decided is not None:
        return _decided
    return WaitPolicy(os.environ.get(VARIABLE, ""), VARIABLE in os.environ)
