"""Compile ``products.c`` and ``decode_step.c`` once per machine with the system C compiler and load it with ctypes.

The library is built for this CPU (``-march=native``: AVX2 and F16C where the CPU has them, a
portable loop otherwise) into the cache folder, under a name that hashes the source, the
compiler (its file) and the CPU's flags, so a changed source, compiler or machine builds anew
and concurrent processes never read a half-written file (written beside, then renamed).
Without a C compiler nothing is built: :func:`library` says why and the callers fall back to
decoding the weights for each product.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

FOLDER = Path(__file__).parent
SOURCES = (FOLDER / "products.c", FOLDER / "decode_step.c")
HEADERS = (FOLDER / "products.h",)
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3"],
)


@dataclass(frozen=True)
class Library:
    """The loaded products library, or why there is none (``handle`` None, ``reason`` set)."""

    handle: ctypes.CDLL | None
    reason: str
    path: Path | None = None

    @property
    def describe(self) -> str:
        return f"integer kernels {self.reason}"


def cache_folder() -> Path:
    """Where built libraries live: $H2Q_TUI_CACHE/kernels, else the user cache folder."""
    root = os.environ.get("H2Q_TUI_CACHE")
    if not root:
        import platformdirs  # noqa: PLC0415 - light, but only needed when a folder is loaded

        root = platformdirs.user_cache_dir("h2q-tui")
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return os.uname().machine


def _compiler() -> str | None:
    return (
        os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    )


def _version(compiler: str) -> str:
    """The compiler as a file (its resolved path, size and time): a changed compiler builds
    anew, without running it at every start."""
    try:
        path = os.path.realpath(shutil.which(compiler) or compiler)
        stat = os.stat(path)
    except OSError:
        return compiler
    return f"{path} {stat.st_size} {stat.st_mtime_ns}"


def _compile(compiler: str, target: Path) -> str:
    """Build ``target``; '' when built, else the compiler's first error line."""
    target.parent.mkdir(parents=True, exist_ok=True)
    error = "no flags worked"
    for flags in FLAG_SETS:
        handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
        command = [compiler, *flags, "-fPIC", "-shared", "-o", temporary, *map(str, SOURCES), "-lm"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            done, error = None, str(exc)
        if done is not None and done.returncode == 0:
            os.replace(temporary, target)
            return ""
        Path(temporary).unlink(missing_ok=True)
        if done is not None:
            lines = [line for line in done.stderr.splitlines() if "error" in line]
            error = (lines or done.stderr.splitlines() or ["failed"])[0]
    return error


def _bind(handle: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    handle.h2q_int8_rows.argtypes = [p, i64, i64, p, p, i64, p, p, i32]
    handle.h2q_int8_rows.restype = i32
    handle.h2q_code_groups.argtypes = [p, i64, i64, p, i32, p, p, i64, i64, p, p, i32]
    handle.h2q_code_groups.restype = i32
    handle.h2q_pre_ln_token.argtypes = [p, i64, i64, p, p, i32, p]
    handle.h2q_matrix_product.argtypes = [p, p, p, i32]
    handle.h2q_matrix_product.restype = i32
    handle.h2q_pre_ln_token.restype = i32


@cache
def library() -> Library:
    """The products library for this machine, built on first use (a second or so)."""
    if os.environ.get("H2Q_TUI_NO_KERNELS"):
        return Library(None, "off (H2Q_TUI_NO_KERNELS is set)")
    compiler = _compiler()
    if compiler is None:
        return Library(None, "not built: no C compiler (cc, gcc or clang) on PATH")
    key = hashlib.sha256(
        "\n".join(
            [*(f.read_text() for f in SOURCES + HEADERS), _version(compiler), _cpu_flags()]
        ).encode()
    ).hexdigest()[:16]
    target = cache_folder() / f"h2q-products-{key}.so"
    if not target.is_file():
        try:
            error = _compile(compiler, target)
        except OSError as exc:
            error = str(exc)
        if error:
            return Library(None, f"not built ({compiler}: {error})")
    try:
        handle = ctypes.CDLL(str(target))
        _bind(handle)
    except (OSError, AttributeError) as exc:
        return Library(None, f"not loaded ({exc})")
    return Library(handle, f"built for this CPU ({target.name})", target)
