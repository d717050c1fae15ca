"""System readings: host figures, a fake NVML, the sampling thread and the formatters."""

from __future__ import annotations

import sys
import threading
import types
from types import SimpleNamespace

import psutil
import pytest

from h2q_tui.system.monitor import (
    NvmlReader,
    SystemMonitor,
    SystemSnapshot,
    format_value,
    take_snapshot,
)
from h2q_tui.units import format_size

GIB = 1024**3


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


def make_fake_nvml(init_error: Exception | None = None, **overrides) -> types.ModuleType:
    """A pynvml look-alike with one healthy device; overrides replace its functions."""
    fake = types.ModuleType("pynvml")
    fake.NVMLError = FakeNVMLError
    fake.NVML_TEMPERATURE_GPU = 0
    fake.init_calls = 0
    fake.shutdown_calls = 0

    def nvml_init() -> None:
        fake.init_calls += 1
        if init_error is not None:
            raise init_error

    def nvml_shutdown() -> None:
        fake.shutdown_calls += 1

    fake.nvmlInit = nvml_init
    fake.nvmlShutdown = nvml_shutdown
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"handle-{i}"
    fake.nvmlDeviceGetName = lambda h: "Fake GPU"
    fake.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=42, memory=10)
    fake.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=2 * GIB, total=8 * GIB)
    fake.nvmlDeviceGetPowerUsage = lambda h: 123_456
    fake.nvmlDeviceGetTemperature = lambda h, sensor: 61
    for name, value in overrides.items():
        setattr(fake, name, value)
    return fake


def raise_nvml_error(*args) -> None:
    raise FakeNVMLError("Not Supported")


def test_snapshot_on_this_machine() -> None:
    """Host readings are numbers; without a GPU there are no GPUs but a status line."""
    nvml = NvmlReader()
    snapshot = take_snapshot(psutil.Process(), nvml)
    nvml.close()
    assert isinstance(snapshot, SystemSnapshot)
    assert isinstance(snapshot.host_cpu_percent, float)
    assert isinstance(snapshot.process_cpu_percent, float)
    assert snapshot.process_rss_bytes > 0
    assert 0 < snapshot.host_ram_used_bytes <= snapshot.host_ram_total_bytes
    assert snapshot.time > 0
    if snapshot.gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    assert snapshot.gpu_status
    assert snapshot.cuda_allocated_bytes is None
    assert snapshot.cuda_reserved_bytes is None


def test_failed_init_is_tried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_nvml(init_error=FakeNVMLError("Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    nvml = NvmlReader()
    snapshots = [take_snapshot(psutil.Process(), nvml) for _ in range(3)]
    assert all(s.gpus == () for s in snapshots)
    assert "Driver Not Loaded" in snapshots[-1].gpu_status
    assert fake.init_calls == 1
    nvml.close()
    assert fake.shutdown_calls == 0


def test_one_failing_field_blanks_only_that_field(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_nvml(nvmlDeviceGetUtilizationRates=raise_nvml_error)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    nvml = NvmlReader()
    snapshot = take_snapshot(psutil.Process(), nvml)
    (gpu,) = snapshot.gpus
    assert gpu.index == 0
    assert gpu.utilization_percent is None
    assert gpu.memory_used_bytes == 2 * GIB
    assert gpu.memory_total_bytes == 8 * GIB
    assert gpu.power_watts == pytest.approx(123.456)
    assert gpu.temperature_c == 61.0
    assert gpu.name == "Fake GPU"
    assert snapshot.gpu_status == "1 GPU"
    nvml.close()
    assert fake.shutdown_calls == 1


def test_generic_exception_in_a_field_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_power(handle):
        raise RuntimeError("boom")

    monkeypatch.setitem(sys.modules, "pynvml", make_fake_nvml(nvmlDeviceGetPowerUsage=broken_power))
    (gpu,) = NvmlReader().read_gpus()
    assert gpu.power_watts is None
    assert gpu.utilization_percent == 42.0


def test_name_as_bytes_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = make_fake_nvml(nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    (gpu,) = NvmlReader().read_gpus()
    assert gpu.name == "NVIDIA H100 80GB HBM3"


def test_monitor_thread_delivers_and_stops() -> None:
    got: list[SystemSnapshot] = []
    two = threading.Event()

    def on_snapshot(snapshot: SystemSnapshot) -> None:
        got.append(snapshot)
        if len(got) >= 2:
            two.set()

    monitor = SystemMonitor(on_snapshot, interval_s=0.05)
    monitor.start()
    try:
        assert two.wait(timeout=5)
    finally:
        monitor.stop()
    assert not monitor.is_running
    assert monitor.latest is not None
    assert got[1].time >= got[0].time


def test_raising_callback_does_not_kill_the_thread() -> None:
    calls = 0
    two = threading.Event()

    def on_snapshot(snapshot: SystemSnapshot) -> None:
        nonlocal calls
        calls += 1
        if calls >= 2:
            two.set()
        raise RuntimeError("consumer bug")

    with SystemMonitor(on_snapshot, interval_s=0.05) as monitor:
        assert two.wait(timeout=5)
        assert monitor.is_running
    assert not monitor.is_running


def test_default_interval_is_between_one_and_two_seconds() -> None:
    assert 1.0 <= SystemMonitor().interval_s <= 2.0


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "n/a"),
        (0, "0 B"),
        (512, "512 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (int(1.2 * GIB), "1.2 GiB"),
        (3 * 1024**4, "3.0 TiB"),
        (2048 * 1024**5, "2048.0 PiB"),
    ],
)
def test_format_size(n: int | None, text: str) -> None:
    assert format_size(n) == text


def test_format_value() -> None:
    assert format_value(None, ".1f") == "n/a"
    assert format_value(12.345, ".1f") == "12.3"
    assert format_value(7, "d") == "7"
