"""What this machine can do fast: the device and precision a run uses, and the machine's name.

Precision ``auto`` is bf16 autocast only where the hardware does bf16 matmuls fast (a CPU with
AMX or AVX512-BF16; a CUDA GPU that supports bf16), fp16 + GradScaler on older GPUs, fp32
otherwise: on an AVX2-only CPU a bf16 matmul ran ~13x slower than fp32 (issue 11).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from h2q_tui.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why; ``warning`` is set when a user's choice is slow."""

    name: str  # fp32 | bf16 | fp16
    reason: str
    warning: str | None = None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.name == "fp16"

    def describe(self) -> str:
        """One line for headers and the dashboard: "precision fp32 — this CPU has no fast bf16"."""
        return f"precision {self.name} — {self.reason}"


def _cpu_flag(name: str) -> bool:
    """A CPU feature as torch reports it (torch.cpu helpers, newest API first)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            return bool(capabilities().get(name, False))
        except Exception:  # noqa: BLE001 - an old or odd build: fall through
            pass
    probe = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    fn = getattr(torch.cpu, probe.get(name, ""), None)
    return bool(fn()) if fn is not None else False


@lru_cache(maxsize=1)
def cpu_fast_bf16() -> tuple[bool, str]:
    """(True, which unit) when this CPU multiplies bf16 fast, else (False, why not)."""
    if _cpu_flag("amx_bf16"):
        return True, "this CPU has AMX (fast bf16)"
    if _cpu_flag("avx512_bf16"):
        return True, "this CPU has AVX512-BF16"
    return False, "this CPU has no fast bf16 (no AMX, no AVX512-BF16)"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; bad names raise."""
    name = (name or "auto").strip().lower()
    if not DEVICE_PATTERN.match(name):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here (use cpu or auto)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return torch.device(name)


def choose_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """The precision for ``requested`` (auto|fp32|bf16|fp16) on ``device``, with its reason."""
    if requested not in PRECISIONS:
        raise UserError(
            f"train.precision must be one of {', '.join(PRECISIONS)}, got {requested!r}"
        )
    if device.type == "cuda":
        return _cuda_precision(requested, device)
    fast, why = cpu_fast_bf16()
    if requested == "auto":
        return (
            PrecisionChoice("bf16", f"{why}: bf16 autocast")
            if fast
            else PrecisionChoice("fp32", why)
        )
    if requested == "fp16":
        return PrecisionChoice(
            "fp32", "fp16 is for GPUs; the CPU trains in fp32", "fp16 requested on a CPU: fp32 used"
        )
    if requested == "bf16" and not fast:
        return PrecisionChoice(
            "bf16",
            "requested, although " + why,
            f"train.precision = bf16 but {why}: expect it to run several times slower than fp32 "
            '(train.precision = "auto" picks fp32 here)',
        )
    return PrecisionChoice(requested, "requested")


def _cuda_precision(requested: str, device: torch.device) -> PrecisionChoice:
    bf16_ok = torch.cuda.is_bf16_supported()
    gpu = torch.cuda.get_device_name(device)
    if requested == "auto":
        if bf16_ok:
            return PrecisionChoice("bf16", f"{gpu} supports bf16: bf16 autocast")
        return PrecisionChoice("fp16", f"{gpu} has no bf16: fp16 autocast + GradScaler")
    if requested == "bf16" and not bf16_ok:
        return PrecisionChoice(
            "fp16", f"{gpu} has no bf16: fp16 + GradScaler", "bf16 requested; fp16 used instead"
        )
    return PrecisionChoice(requested, "requested")


def enable_tf32(device: torch.device) -> bool:
    """On an Ampere or later GPU (compute capability ≥ 8) let fp32 matmuls and convolutions
    run on TF32 tensor cores; True when it did. Elsewhere nothing changes."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on ``device``; to a GPU through pinned memory and a non-blocking copy, so
    the copy overlaps the GPU's work instead of waiting for it."""
    if device.type != "cuda":
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo (or the platform) gives it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def torch_capability() -> str:
    """torch's CPU capability string (e.g. AVX2, AVX512)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        return "unknown"


def gpu_names() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine_summary(device: torch.device | None = None) -> str:
    """The CPU model, and the GPU when ``device`` is a CUDA device (for run_started)."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} on {cpu_model()}"
    return f"{cpu_model()} ({torch_capability()})"


def machine_info() -> dict[str, object]:
    """The machine a figure was measured on: CPU, torch capability, bf16 speed class, GPUs."""
    fast, why = cpu_fast_bf16()
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_capability": torch_capability(),
        "cpu_fast_bf16": fast,
        "cpu_bf16_note": why,
        "gpus": gpu_names(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def machine_line() -> str:
    """One line naming the machine, for benchmark tables."""
    info = machine_info()
    gpus = ", ".join(info["gpus"]) or "no GPU"  # type: ignore[arg-type]
    bf16 = "fast bf16" if info["cpu_fast_bf16"] else "no fast bf16"
    return (
        f"{info['cpu_model']} ({info['cpu_cores']} cores, torch capability "
        f"{info['torch_capability']}, {bf16}), {gpus}, torch {info['torch']}"
    )
