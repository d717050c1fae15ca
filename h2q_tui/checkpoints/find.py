"""Finding a sound checkpoint: a run dir's ``latest`` (or the newest sound step when it is
damaged), a checkpoint folder, or a ``.safetensors`` file, each checked against its checksums.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from h2q_tui.checkpoints.layout import (
    FORMAT,
    LATEST,
    STATE,
    STEP_NAME,
    WEIGHTS,
    file_crc,
    tensor_crc,
)
from h2q_tui.codecs.layout import is_crystallized, read_layout
from h2q_tui.errors import UserError
from h2q_tui.units import first_sentence

CRC_THREADS = 2  # checksum threads (zlib, no OpenMP); more gain nothing on these machines
# Below this many bytes of tensors a file's check runs when the loader waits for it, not on a
# thread beside the load: a second thread taking the GIL slowed build, assign and the first
# forward by more than the whole pass costs (`h2q-tui hotstart` in process on the AMD EPYC VM:
# gpt-cpu and a 43 MB GPT loaded faster checked after; on a 341 MB GPT, where the pass is
# longest, the two ways were within noise: docs/hotstart.md).
OVERLAP_BYTES = 128 << 20
POOL_BYTES = 16 << 20  # from this many bytes a check run on the loader's thread takes the pool


def checkpoint_problem(
    weights: Path,
    need_state: bool = False,
    tensors: Mapping | None = None,
    threads: int = CRC_THREADS,
    on_sums: Callable[[SharedSums], None] | None = None,
) -> str | None:
    """Why the checkpoint at ``weights`` cannot be trusted (None when it is sound).

    Reads the safetensors header and every tensor, and compares them with the per-tensor
    CRC-32s in its metadata (checkpoints written before checksums existed pass on the header).
    ``tensors``: the file's tensors as a loader already mapped them (``read_tensors``), summed
    instead of mapping the file a second time (names it lacks are read from the file);
    ``threads``: checksum threads at most; ``on_sums`` is handed the pass's
    :class:`SharedSums` before it starts, so that other threads can take tensors from it.
    """
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT or "config" not in metadata:
                return "not an h2q-tui checkpoint (no config metadata)"
            expected = json.loads(metadata.get("checksums", "{}"))
            if not isinstance(expected, dict):
                return "unreadable checksums metadata"
            crystal = _crystal_problem(metadata)
            if crystal:
                return crystal
            names = list(handle.keys())
            given = tensors or {}
            read = [given[n] if n in given else handle.get_tensor(n) for n in names]
            damaged, unusable = _first_mismatch(names, read, expected, threads, on_sums)
            if damaged is not None:
                return f"damaged: tensor {damaged} does not match its checksum"
            if unusable is not None:
                return (
                    f"unusable: tensor {unusable} holds NaN or Inf values (the weights of a "
                    "run that diverged, or a damaged file)"
                )
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        return f"corrupt or truncated ({first_sentence(exc)})"
    state = weights.with_name(STATE)
    if need_state and is_crystallized(metadata):
        return (
            f"a crystallized checkpoint ({metadata.get('h2q.crystal.method', '?')}): eval, "
            "generate and steer-eval load it, training cannot resume from it"
        )
    if need_state and not state.is_file():
        return f"missing its {STATE}"
    crc = metadata.get("state_crc32")
    if crc and state.is_file() and file_crc(state) != crc:
        return f"damaged: {STATE} does not match its checksum"
    return None


def _first_mismatch(
    names: list[str],
    tensors: list,
    expected: dict[str, str],
    threads: int = CRC_THREADS,
    on_sums: Callable[[SharedSums], None] | None = None,
) -> tuple[str | None, str | None]:
    """(the first name whose tensor's CRC-32 differs from ``expected``, the first name whose
    float tensor holds NaN or Inf); None where there is none. Names without an expected
    checksum are only checked for NaN/Inf.

    The tensors are views of the memory-mapped file; zlib and numpy release the GIL while
    they read, so two threads (ended when the pool closes) halve the wait on a 2-core machine.
    """
    sums = SharedSums(tensors, [name in expected for name in names])
    if on_sums is not None:
        on_sums(sums)
    workers = max(1, min(threads, os.cpu_count() or 1, len(tensors)))
    if workers == 1:
        sums.run()
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="h2q-crc") as pool:
            list(pool.map(lambda _: sums.run(), range(workers)))
    damaged = next(
        (
            n
            for n, crc in zip(names, sums.crcs, strict=True)
            if n in expected and crc != expected[n]
        ),
        None,
    )
    unusable = next((n for n, ok in zip(names, sums.finite, strict=True) if not ok), None)
    return damaged, unusable


# Bit masks of the exponent of each float dtype: all ones means Inf or NaN.
_EXPONENT = {
    torch.float16: (torch.int16, np.uint16, 0x7C00),
    torch.bfloat16: (torch.int16, np.uint16, 0x7F80),
    torch.float32: (torch.int32, np.uint32, 0x7F800000),
    torch.float64: (torch.int64, np.uint64, 0x7FF0000000000000),
}
_FINITE_CHUNK = 1 << 18  # elements checked at a time: a small buffer, reused


def tensor_finite(tensor) -> bool:
    """Whether a float tensor holds no NaN or Inf (True for other dtypes).

    Reads the bits with numpy, a chunk at a time into one small buffer: no torch op, so no
    OpenMP team starts on a checking thread, and no copy the size of the tensor.
    """
    if tensor.dtype not in _EXPONENT or tensor.numel() == 0:
        return True
    signed, unsigned, mask = _EXPONENT[tensor.dtype]
    bits = tensor.detach().cpu().contiguous().reshape(-1).view(signed).numpy().view(unsigned)
    buffer = np.empty(min(_FINITE_CHUNK, bits.size), dtype=unsigned)
    for start in range(0, bits.size, _FINITE_CHUNK):
        chunk = bits[start : start + _FINITE_CHUNK]
        exponent = np.bitwise_and(chunk, unsigned(mask), out=buffer[: chunk.size])
        if (exponent == mask).any():
            return False
    return True


class SharedSums:
    """The CRC-32s of a list of tensors, and whether each is finite, computed by every thread
    that calls :meth:`run`.

    Each caller takes the next tensor not yet taken (largest first, so that the last ones
    taken are small and the callers finish together) until none is left; ``crcs`` and
    ``finite`` are in the order of the list (``crcs`` None where ``summed`` is False). Taking
    is ``next`` on an ``itertools.count``, atomic under the GIL.
    """

    def __init__(self, tensors: list, summed: list[bool] | None = None) -> None:
        self._tensors = tensors
        self._summed = summed or [True] * len(tensors)
        self._order = sorted(range(len(tensors)), key=lambda i: -tensors[i].nbytes)
        self._taken = itertools.count()
        self.crcs: list[str | None] = [None] * len(tensors)
        self.finite: list[bool] = [True] * len(tensors)

    def run(self) -> None:
        while (turn := next(self._taken)) < len(self._order):
            index = self._order[turn]
            tensor = self._tensors[index]
            if self._summed[index]:
                self.crcs[index] = tensor_crc(tensor)
            self.finite[index] = tensor_finite(tensor)


class BackgroundCheck:
    """:func:`checkpoint_problem` on a thread of its own, beside a load of the same file.

    A loader that maps the file itself (``read_tensors``) starts it with those tensors, goes
    on building the model and running it, and calls :meth:`wait` before it hands anything
    computed from the weights to its caller: a load verified this way never returns a model
    (or a token) from a file that fails its checksums. One checksum thread, so that the
    loader keeps the other core, and the loader's thread takes its share of what is left
    when it comes to wait; zlib releases the GIL while it sums, and the thread runs no
    torch op that could start an OpenMP team (h2q_tui/system/threads.py). The thread ends
    with the check. A file under ``OVERLAP_BYTES`` is checked in :meth:`wait` instead, on
    the caller's thread alone, with no thread beside the load.
    """

    def __init__(self, weights: Path, tensors: Mapping | None = None, need_state: bool = False):
        self.weights = weights
        self.seconds = 0.0  # how long the check itself ran, on its thread
        self._tensors = tensors
        self._need_state = need_state
        self._problem: str | None = None
        self._sums: SharedSums | None = None  # the pass's tensors, once it has mapped them
        self._thread = threading.Thread(target=self._run, name="h2q-verify", daemon=True)
        size = sum(t.nbytes for t in tensors.values()) if tensors is not None else None
        self._bytes = size or 0
        self._deferred = size is not None and size < OVERLAP_BYTES
        self.beside = not self._deferred  # whether the check runs beside the load
        if self.beside:
            self._thread.start()

    def _run(self, threads: int = 1) -> None:
        started = time.perf_counter()
        try:
            self._problem = checkpoint_problem(
                self.weights, self._need_state, self._tensors, threads, self._publish
            )
        except Exception as exc:  # noqa: BLE001 - a check that cannot finish is a failed check
            self._problem = f"unverifiable ({first_sentence(exc)})"
        finally:
            self._tensors = None  # the loader owns the mapping; do not keep it alive
            self.seconds = time.perf_counter() - started

    def _publish(self, sums: SharedSums) -> None:
        self._sums = sums

    def wait(self) -> str | None:
        """Why the file cannot be trusted, or None, once the check is done. The caller's
        thread sums the tensors not yet taken meanwhile (:class:`SharedSums`), so that the
        wait is halved on a 2-core machine, then joins the check's thread."""
        if self._deferred:  # a small file: the check runs now, here
            self._deferred = False
            # the pool pays where zlib sums long tensors with the GIL released; under POOL_BYTES
            # the pass is mostly Python around small tensors, where a second thread only adds
            self._run(CRC_THREADS if self._bytes >= POOL_BYTES else 1)
        elif self.beside:
            if self._sums is not None:
                self._sums.run()
            self._thread.join()
        self._sums = None  # the loader owns the mapping; do not keep it alive
        return self._problem


def _crystal_problem(metadata: dict[str, str]) -> str | None:
    """Why a crystallized file's layout cannot be read (None when it can, or it is not one)."""
    if not is_crystallized(metadata):
        return None
    try:
        read_layout(metadata)
    except ValueError as exc:
        return f"a damaged crystallized file ({first_sentence(exc)})"
    return None


def is_inside(root: Path, folder: Path) -> bool:
    """Whether ``folder`` is, links resolved, a folder directly inside ``root``."""
    try:
        return folder.resolve().parent == root.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _pointer_target(root: Path) -> tuple[Path | None, str | None]:
    """The folder ``latest`` names, or (None, why it cannot be used).

    The pointer is a small file h2q-tui writes itself: a link is never followed, at most a
    few bytes are read, and its contents are never echoed (they may be any file's).
    """
    pointer = root / LATEST
    if pointer.is_symlink():
        return None, f"{pointer} is a link, not the pointer file h2q-tui writes"
    if not pointer.is_file():
        return None, None
    try:
        name = _read_pointer(pointer)[1].decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, f"{pointer} is unreadable"
    if not STEP_NAME.fullmatch(name):
        return None, f"{pointer} does not name a step_NNNNNNNN folder of {root}"
    if not is_inside(root, root / name):
        return None, f"{pointer} names {name}, a link to a folder outside {root}"
    if not (root / name / WEIGHTS).is_file():
        return None, f"{pointer} names {name}, which holds no {WEIGHTS}"
    return root / name, None


def _read_pointer(pointer: Path) -> tuple[int, bytes]:
    """(mtime_ns, the first 64 bytes) of a ``latest`` pointer file; OSError when unreadable."""
    with open(pointer, "rb") as handle:
        return os.fstat(handle.fileno()).st_mtime_ns, handle.read(64)


def pointer_state(run_dir: Path) -> tuple[int, bytes] | None:
    """(mtime_ns, contents) of ``RUN/checkpoints/latest`` now, None when it cannot be read:
    what a follower compares to see the pointer move, for one open and a tiny read."""
    try:
        return _read_pointer(Path(run_dir) / "checkpoints" / LATEST)
    except OSError:
        return None


def named_run_dir(path: Path) -> Path:
    """The run dir meant when ``RUN/checkpoints/latest`` (the pointer file itself) or
    ``RUN/checkpoints`` is named; any other path as it is. Nothing needs to exist yet."""
    if path.name == LATEST and path.parent.name == "checkpoints" and not path.is_dir():
        return path.parent.parent
    if path.name == "checkpoints" and not (path / WEIGHTS).is_file():
        return path.parent
    return path


def resolve_checkpoint(path: str | Path, need_state: bool = False) -> tuple[Path, str]:
    """(weights file, note) from a run dir, a checkpoint folder or a .safetensors file.

    A run dir means its ``latest``; when that is missing or damaged, the newest sound
    ``step_*`` checkpoint is used and the note says which and why. A folder or file named
    directly must itself be sound.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    path = named_run_dir(path)
    direct = path if path.is_file() else path / WEIGHTS
    if direct.is_file():
        problem = checkpoint_problem(direct, need_state)
        if problem:
            raise UserError(f"checkpoint {direct} is {problem}")
        return direct, ""
    root = path / "checkpoints"
    target, pointer_problem = _pointer_target(root)
    steps = sorted(root.glob("step_*/" + WEIGHTS), reverse=True) if root.is_dir() else []
    outside = [s.parent.name for s in steps if not is_inside(root, s.parent)]
    steps = [s for s in steps if s.parent.name not in outside]  # links out of the run: skipped
    candidates = ([target / WEIGHTS] if target else []) + [s for s in steps if s.parent != target]
    first_problem = pointer_problem or (
        f"{outside[0]} is a link to a folder outside {root}" if outside else None
    )
    if not candidates and first_problem is None:
        raise UserError(f"no checkpoint in {path} (expected {WEIGHTS} or checkpoints/step_*/)")
    for weights in candidates:
        problem = checkpoint_problem(weights, need_state)
        if problem is None:
            if first_problem is None:
                return weights, ""
            return weights, f"{first_problem}; using {weights.parent.name}, the newest sound one"
        first_problem = first_problem or f"{weights.parent.name} is {problem}"
    raise UserError(f"no sound checkpoint in {root}: {first_problem}")


def candidate_weights(path: str | Path) -> Path | None:
    """The weights file :func:`resolve_checkpoint` tries first, unchecked (no checksum pass,
    so nothing is read): for looking at a file's page-cache state before loading it."""
    path = named_run_dir(Path(path))
    direct = path if path.is_file() else path / WEIGHTS
    if direct.is_file():
        return direct
    target, _ = _pointer_target(path / "checkpoints")
    return target / WEIGHTS if target else None


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint's weights file from a run dir, a checkpoint folder or a .safetensors file."""
    return resolve_checkpoint(path)[0]
