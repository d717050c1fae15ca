"""A per-process memory budget: this process's RSS (and CUDA memory) against a limit.

Sizes are written ``2GB``, ``1.5GiB``, ``512MB``, ``800M``, ``2g`` (case does not matter):
``KB``/``MB``/``GB``/``TB`` and the bare letters ``K``/``M``/``G``/``T`` are powers of 1000
(``GB`` = 10^9 bytes), ``KiB``/``MiB``/``GiB``/``TiB`` powers of 1024 (``GiB`` = 2^30), ``B``
is bytes. A number without a unit, zero, a negative number, ``nan`` and an empty string are
refused with one line (:class:`~h2q_tui.errors.UserError`).

What is compared: the RAM budget with this process's resident set size (psutil), the VRAM
budget with the memory the CUDA caching allocator has reserved for this process (at least
what its tensors have allocated; allocated is shown beside it). The machine's total and
available RAM is a different quantity (other processes, the page cache) and is never
compared with a per-process budget.

States: ``ok``; ``alarm`` from 90 % of the budget; ``over`` above 100 %. :class:`BudgetWatch`
turns readings into crossings, once each: an alarm is raised again only after the reading
fell back under 85 % (so a reading hovering at 90 % does not repeat it every step), "over"
only after it fell back under the budget.

The ``--memory-budget`` / ``--vram-budget`` flags are :func:`h2q_tui.cli.parser.add_budget_flags`.
This module imports neither torch nor the config, so ``--help`` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import psutil

from h2q_tui.errors import UserError
from h2q_tui.units import format_size

ALARM_FRACTION = 0.90  # an alarm from here
REARM_FRACTION = 0.85  # the alarm is raised again only after falling under this
MAX_BYTES = 2**60  # an exabyte: far beyond any machine, far from int64 overflow

DECIMAL = {"b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
UNITS: dict[str, int] = {
    **DECIMAL,
    **{f"{p}b": v for p, v in DECIMAL.items() if p != "b"},
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
SIZE_HELP = "GB = 10^9 bytes, GiB = 2^30; M, G mean MB, GB"
EXAMPLES = "such as 2GB, 1.5GiB or 512MB"
_SIZE = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)$", re.IGNORECASE)

_PROCESS = psutil.Process()


# ---------------------------------------------------------------------------- parsing
def parse_size(text: str, name: str = "--memory-budget") -> int:
    """Bytes of a size such as ``2GB`` or ``1.5GiB``; ``name`` starts the error message.

    Raises:
        UserError: one line naming the value and what a size looks like.
    """
    shown = repr(text) if isinstance(text, str) and len(text) <= 40 else repr(text)[:40] + "…'"
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{name} is empty: give a size, {EXAMPLES} ({SIZE_HELP})")
    match = _SIZE.match(text.strip())
    if match is None:
        raise UserError(f"{name} {shown} is not a size: write one {EXAMPLES} ({SIZE_HELP})")
    sign, number, written_unit = match.groups()
    unit = written_unit.lower()
    try:
        value = Decimal(number)
    except InvalidOperation:  # the pattern makes this unreachable; kept as a guard
        raise UserError(f"{name} {shown} is not a size: write one {EXAMPLES}") from None
    if sign == "-" or value == 0:
        raise UserError(f"{name} {shown} must be more than 0: give a size, {EXAMPLES}")
    if unit not in UNITS:
        if not unit:
            raise UserError(
                f"{name} {shown} has no unit: write {number}GB, {number}MB or {number}GiB "
                f"({SIZE_HELP})"
            )
        raise UserError(
            f"{name} {shown}: unknown unit {written_unit!r} (known: B, KB, MB, GB, TB, KiB, MiB, "
            f"GiB, TiB; {SIZE_HELP})"
        )
    size = int(value * UNITS[unit])
    if size < 1:
        raise UserError(f"{name} {shown} is less than one byte: give a size, {EXAMPLES}")
    if size > MAX_BYTES:
        raise UserError(f"{name} {shown} is beyond any machine (at most 1 EiB)")
    return size


# ---------------------------------------------------------------------------- readings
def rss_bytes() -> int:
    """This process's resident set size (a few µs)."""
    return _PROCESS.memory_info().rss


def cuda_memory(device: Any) -> tuple[int | None, int | None]:
    """(allocated, reserved) bytes on a CUDA ``torch.device``, or (None, None) elsewhere."""
    if getattr(device, "type", None) != "cuda":
        return None, None
    import torch  # already imported by whoever holds a CUDA device

    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)


@dataclass(frozen=True)
class Limit:
    """One budget: ``resource`` RAM or VRAM, ``limit`` bytes, as written (``text``) and where."""

    resource: str  # "RAM" | "VRAM"
    limit: int
    text: str  # "400MB", as the user wrote it
    source: str  # "--memory-budget" | "train.memory_budget" | ...

    @property
    def binary(self) -> bool:
        """Show figures in the units the budget was written in (GiB or GB)."""
        return "i" in self.text.lower()


@dataclass(frozen=True)
class Reading:
    """One resource now: what is used, against its limit (None: no budget set)."""

    resource: str  # "RAM" | "VRAM"
    measure: str  # "RSS" | "CUDA reserved"
    used: int | None
    limit: Limit | None

    @property
    def fraction(self) -> float | None:
        if self.used is None or self.limit is None:
            return None
        return self.used / self.limit.limit

    @property
    def state(self) -> str:
        """``ok``, ``alarm`` (>= 90 %), ``over`` (> 100 %); ``none`` without a budget or reading."""
        fraction = self.fraction
        if fraction is None:
            return "none"
        if fraction > 1.0:
            return "over"
        return "alarm" if fraction >= ALARM_FRACTION else "ok"

    def size(self, n: int | None) -> str:
        return format_size(n, self.limit.binary if self.limit else True)

    def describe(self) -> str:
        """``RSS 372.0 MB is 93 % of --memory-budget 400MB`` (and by how much it is over)."""
        if self.limit is None:
            return f"{self.measure} {self.size(self.used)} (no budget set)"
        fraction = self.fraction or 0.0
        text = (
            f"{self.measure} {self.size(self.used)} is {100 * fraction:.0f} % of "
            f"{self.limit.source} {self.limit.text}"
        )
        if self.used is not None and self.used > self.limit.limit:
            text += f" ({self.size(self.used - self.limit.limit)} over)"
        return text


class MemoryBudget:
    """The RAM budget (this process's RSS) and the VRAM budget (CUDA reserved), either optional."""

    def __init__(self, ram: Limit | None = None, vram: Limit | None = None) -> None:
        self.ram, self.vram = ram, vram

    @classmethod
    def from_texts(
        cls,
        ram: str | None,
        vram: str | None,
        sources: tuple[str, str] = ("--memory-budget", "--vram-budget"),
    ) -> MemoryBudget:
        """From sizes as written; None or "" means no budget for that resource."""
        limits = [
            Limit(resource, parse_size(text, source), text.strip(), source) if text else None
            for resource, text, source in zip(("RAM", "VRAM"), (ram, vram), sources, strict=True)
        ]
        return cls(*limits)

    @classmethod
    def from_config(cls, train: Any) -> MemoryBudget:
        """From ``train.memory_budget`` / ``train.vram_budget`` (a TrainConfig or its dict);
        named as the flags, which is how they are usually set."""
        get = (
            train.get
            if isinstance(train, dict)
            else lambda key, default: getattr(train, key, default)
        )
        try:
            return cls.from_texts(get("memory_budget", ""), get("vram_budget", ""))
        except UserError:  # a foreign log with a bad value: shown as no budget
            return cls()

    @property
    def is_set(self) -> bool:
        return self.ram is not None or self.vram is not None

    def readings(self, rss: int | None, cuda_reserved: int | None = None) -> list[Reading]:
        """RAM always; VRAM when there is a VRAM budget or CUDA memory in use."""
        out = [Reading("RAM", "RSS", rss, self.ram)]
        if self.vram is not None or cuda_reserved is not None:
            out.append(Reading("VRAM", "CUDA reserved", cuda_reserved, self.vram))
        return out

    def read(self, device: Any = None) -> list[Reading]:
        """Measure now (RSS, and CUDA reserved on ``device``) and compare."""
        return self.readings(rss_bytes(), cuda_memory(device)[1])

    def describe(self) -> str:
        parts = [f"{limit.source} {limit.text}" for limit in (self.ram, self.vram) if limit]
        return ", ".join(parts) or "no budget set"


class BudgetWatch:
    """Crossings of the alarm and the over line, each reported once until re-armed."""

    def __init__(self) -> None:
        self._alarm_armed: dict[str, bool] = {}
        self._over_armed: dict[str, bool] = {}

    def observe(self, readings: list[Reading]) -> list[tuple[str, Reading]]:
        """(``"alarm"`` or ``"over"``, reading) for each resource that just crossed a line;
        over supersedes the alarm of the same reading."""
        crossed = []
        for reading in readings:
            fraction, key = reading.fraction, reading.resource
            if fraction is None:
                continue
            alarm_armed = self._alarm_armed.get(key, True)
            over_armed = self._over_armed.get(key, True)
            if fraction < REARM_FRACTION:
                alarm_armed = True
            if fraction <= 1.0:
                over_armed = True
            if fraction > 1.0 and over_armed:
                crossed.append(("over", reading))
                over_armed = alarm_armed = False
            elif fraction >= ALARM_FRACTION and alarm_armed:
                crossed.append(("alarm", reading))
                alarm_armed = False
            self._alarm_armed[key], self._over_armed[key] = alarm_armed, over_armed
        return crossed
