"""The page cache of one file: drop its pages, count how many are resident.

A cold load is one whose file is not in the page cache. Without root the whole cache cannot
be dropped, but one file's clean pages can: ``fsync`` (so none is dirty), then
``posix_fadvise(POSIX_FADV_DONTNEED)``. Whether that worked is checked, not assumed:
``mincore`` on a fresh mapping of the file counts the pages still resident. On tmpfs (and
ramfs) the file *is* its pages, and a mapping held by another process keeps them too: then
:func:`drop_file_cache` says why a cold figure is unavailable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
RESIDENT_LIMIT = 0.05  # at most 5 % of the pages still resident counts as cold


@dataclass(frozen=True)
class Residency:
    """How much of a file is in the page cache."""

    resident_pages: int
    total_pages: int

    @property
    def fraction(self) -> float:
        return self.resident_pages / self.total_pages if self.total_pages else 0.0


class _StatFs(ctypes.Structure):
    """``struct statfs`` of Linux (64-bit): only ``f_type`` is read."""

    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def filesystem_type(path: str | Path) -> int | None:
    """The ``f_type`` magic of the file system holding ``path`` (None where statfs fails)."""
    try:
        buffer = _StatFs()
        if _libc().statfs(os.fsencode(str(path)), ctypes.byref(buffer)) != 0:
            return None
        return buffer.f_type & 0xFFFFFFFF
    except (OSError, AttributeError):
        return None


def in_memory_filesystem(path: str | Path) -> str | None:
    """ "tmpfs"/"ramfs" when ``path`` lives on a memory-only file system, else None."""
    kind = filesystem_type(path)
    if kind == TMPFS_MAGIC:
        return "tmpfs"
    if kind == RAMFS_MAGIC:
        return "ramfs"
    return None


def residency(path: str | Path) -> Residency:
    """Resident pages of ``path`` now (``mincore`` on a read-only mapping; no page is read).

    Raises OSError where the file cannot be mapped or mincore is unavailable.
    """
    page = mmap.PAGESIZE
    size = os.path.getsize(path)
    total = (size + page - 1) // page
    if size == 0:
        return Residency(0, 0)
    libc = _libc()
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:  # a mapping made through libc, because mincore needs its address
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    if address is None or address == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "mmap failed")
    try:
        vector = (ctypes.c_ubyte * total)()
        if libc.mincore(address, size, vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        resident = sum(byte & 1 for byte in bytes(vector))
    finally:
        libc.munmap(address, size)
    return Residency(resident, total)


def drop_file_cache(path: str | Path) -> str | None:
    """Drop ``path``'s pages from the page cache and check they are gone.

    Returns None when the file is now cold (at most 5 % of its pages resident), else the
    reason a cold measurement is unavailable ("/dev/shm is tmpfs", "62 % of its pages stayed
    resident (a mapping held elsewhere?)", ...).
    """
    memory_fs = in_memory_filesystem(path)
    if memory_fs:
        return f"{Path(path).parent} is {memory_fs}: the file is only in memory"
    if not hasattr(os, "posix_fadvise"):
        return "posix_fadvise is not available on this platform"
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        left = residency(path)
    except OSError as exc:
        return f"cannot drop or check its pages ({exc.strerror or exc})"
    if left.fraction > RESIDENT_LIMIT:
        return (
            f"{100 * left.fraction:.0f} % of its pages stayed resident after "
            "POSIX_FADV_DONTNEED (a mapping held elsewhere, or a file system that ignores it)"
        )
    return None


def cache_state(path: str | Path) -> bool | None:
    """True when ``path`` is (almost) not in the page cache, False when it (almost) all is,
    None in between or where it cannot be checked."""
    try:
        fraction = residency(path).fraction
    except OSError:
        return None
    if fraction <= RESIDENT_LIMIT:
        return True
    return False if fraction >= 1 - RESIDENT_LIMIT else None
