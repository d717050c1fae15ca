"""Collect host, process and GPU readings on a background thread, with no rendering code."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

import psutil

from h2q_tui.system.readings_history import SystemHistory

DEFAULT_INTERVAL_S = 1.5


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML sees it; every field is None when its query failed."""

    index: int
    name: str | None
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_watts: float | None
    temperature_c: float | None


@dataclass(frozen=True)
class SystemSnapshot:
    """All readings taken at one moment (`time` is time.time())."""

    time: float
    host_cpu_percent: float | None
    process_cpu_percent: float | None
    process_rss_bytes: int | None
    host_ram_used_bytes: int | None
    host_ram_total_bytes: int | None
    gpus: tuple[GpuReading, ...]
    cuda_allocated_bytes: int | None
    cuda_reserved_bytes: int | None
    gpu_status: str


def _call_or_none(fn: Callable[..., Any], *args: Any) -> Any:
    """Return fn(*args), or None if it raises anything (NVMLError, psutil.Error, ...)."""
    try:
        return fn(*args)
    except Exception:  # a failed reading must never take the monitor down
        return None


def read_host(process: psutil.Process) -> dict[str, Any]:
    """psutil readings since the previous call (non-blocking), keyed like SystemSnapshot fields.

    process_cpu_percent may exceed 100 on several cores; host RAM "used" is total - available.
    """
    memory = _call_or_none(psutil.virtual_memory)
    rss = _call_or_none(lambda: process.memory_info().rss)
    return {
        "host_cpu_percent": _call_or_none(lambda: psutil.cpu_percent(interval=None)),
        "process_cpu_percent": _call_or_none(lambda: process.cpu_percent(interval=None)),
        "process_rss_bytes": None if rss is None else int(rss),
        "host_ram_used_bytes": None if memory is None else int(memory.total - memory.available),
        "host_ram_total_bytes": None if memory is None else int(memory.total),
    }


def read_cuda_memory() -> tuple[int | None, int | None]:
    """(allocated, reserved) CUDA bytes of this process, summed over devices, or (None, None).

    Only when torch is already imported and CUDA already initialised: never imports torch
    nor initialises CUDA itself.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None, None
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return None, None
        devices = range(torch.cuda.device_count())
        allocated = sum(int(torch.cuda.memory_allocated(i)) for i in devices)
        reserved = sum(int(torch.cuda.memory_reserved(i)) for i in devices)
    except Exception:
        return None, None
    return allocated, reserved


def _decode_name(name: Any) -> str | None:
    """NVML names come as bytes in old bindings and str in new ones."""
    if name is None:
        return None
    if isinstance(name, bytes):
        return name.decode("utf-8", errors="replace")
    return str(name)


def _init_failure_status(exc: Exception) -> str:
    """A short human reason for a failed nvmlInit."""
    name = type(exc).__name__
    if name.endswith(("LibraryNotFound", "DriverNotLoaded")):
        return "no NVIDIA driver"
    return f"NVML error: {exc}"


class NvmlReader:
    """Lazily initialised NVML; after a failed import or init it returns no GPUs forever, quietly."""

    def __init__(self) -> None:
        self._nvml: ModuleType | None = None
        self._tried = False
        self.status = "NVML not started"

    def _ensure_init(self) -> ModuleType | None:
        """Import and initialise pynvml on the first call only; None if that failed."""
        if self._tried:
            return self._nvml
        self._tried = True
        try:
            # lazy: only the first GPU reading pays for it, and where it fails the pane says why
            import pynvml
        except Exception as exc:
            self.status = f"pynvml unavailable: {exc}"
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self.status = _init_failure_status(exc)
            return None
        self._nvml = pynvml
        return pynvml

    def read_gpus(self) -> tuple[GpuReading, ...]:
        """One reading per GPU; () when NVML is unavailable."""
        nvml = self._ensure_init()
        if nvml is None:
            return ()
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            self.status = f"NVML error: {exc}"
            return ()
        self.status = "no GPUs" if count == 0 else f"{count} GPU{'s' if count != 1 else ''}"
        return tuple(self._read_one(nvml, index) for index in range(count))

    def _read_one(self, nvml: ModuleType, index: int) -> GpuReading:
        """Query each field on its own so that one failure blanks only that field."""
        handle = _call_or_none(nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            return GpuReading(index, None, None, None, None, None, None)
        utilization = _call_or_none(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = _call_or_none(nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = _call_or_none(nvml.nvmlDeviceGetPowerUsage, handle)
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        temperature = _call_or_none(nvml.nvmlDeviceGetTemperature, handle, sensor)
        return GpuReading(
            index=index,
            name=_decode_name(_call_or_none(nvml.nvmlDeviceGetName, handle)),
            utilization_percent=_call_or_none(lambda: float(utilization.gpu)),
            memory_used_bytes=_call_or_none(lambda: int(memory.used)),
            memory_total_bytes=_call_or_none(lambda: int(memory.total)),
            power_watts=None if power_mw is None else power_mw / 1000.0,
            temperature_c=None if temperature is None else float(temperature),
        )

    def close(self) -> None:
        """Shut NVML down if it was initialised; later reads return no GPUs."""
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            _call_or_none(nvml.nvmlShutdown)
            self.status = "NVML closed"


def take_snapshot(process: psutil.Process, nvml: NvmlReader) -> SystemSnapshot:
    """Read host, process, GPU and CUDA figures once."""
    host = read_host(process)
    gpus = nvml.read_gpus()
    allocated, reserved = read_cuda_memory()
    return SystemSnapshot(
        time=time.time(),
        gpus=gpus,
        cuda_allocated_bytes=allocated,
        cuda_reserved_bytes=reserved,
        gpu_status=nvml.status,
        **host,
    )


SnapshotCallback = Callable[[SystemSnapshot], None]


class SystemMonitor:
    """A daemon thread taking a snapshot every interval_s, keeping it in a bounded history
    (see SystemHistory) and handing it to on_snapshot."""

    def __init__(
        self,
        on_snapshot: SnapshotCallback | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        process: psutil.Process | None = None,
        nvml: NvmlReader | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.latest: SystemSnapshot | None = None
        self._history = SystemHistory()
        self._history_lock = threading.Lock()  # the sampler adds while the UI copies
        self._on_snapshot = on_snapshot
        self._process = process if process is not None else psutil.Process()
        self._owns_nvml = nvml is None
        self._nvml = nvml if nvml is not None else NvmlReader()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        read_host(self._process)  # prime psutil's CPU counters so the first snapshot is meaningful

    @property
    def is_running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> SystemMonitor:
        """Start the sampling thread (no-op if it already runs)."""
        if self.is_running:
            return self
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="h2q-system-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to stop, wait for it, and close NVML if this monitor opened it."""
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._owns_nvml and not self.is_running:
            self._nvml.close()

    def _run(self) -> None:
        """Sample until stopped; the first snapshot comes right away."""
        while not self._stop_event.is_set():
            self._tick()
            if self._stop_event.wait(self.interval_s):
                break

    def _tick(self) -> None:
        """Take one snapshot and deliver it, swallowing every error."""
        try:
            snapshot = take_snapshot(self._process, self._nvml)
        except Exception:
            return
        with self._history_lock:
            self._history.add_snapshot(snapshot)
        self.latest = snapshot
        if self._on_snapshot is None:
            return
        try:
            self._on_snapshot(snapshot)
        except Exception:
            pass  # a faulty consumer must not kill the sampler

    def history(self) -> SystemHistory:
        """A copy of the readings so far (the sampler goes on adding to its own)."""
        with self._history_lock:
            return self._history.copy()

    def __enter__(self) -> SystemMonitor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def format_value(x: float | int | None, fmt: str = ".1f") -> str:
    """format(x, fmt), or "n/a" for None."""
    return "n/a" if x is None else format(x, fmt)
