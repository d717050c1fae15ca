"""What ``h2q-tui serve`` serves: a ``name:tag`` registry of checkpoints, run dirs and
crystallized folders, each loaded on first use and unloaded after its keep-alive.

Names (SPEC §8): a run dir ``runs/gpt-cpu`` is ``gpt-cpu:latest`` (its latest checkpoint) and
each crystallized folder under it, ``runs/gpt-cpu/crystal/int8/``, is a tag of its own,
``gpt-cpu:int8``; a checkpoint folder ``runs/X/checkpoints/step_00000120`` is
``X:step_00000120``; any other folder or ``.safetensors`` file is ``<its name>:latest``.
Characters other than letters, digits and ``_ . + -`` become ``-``; a name given twice gets
``-2``.

Models load through :func:`h2q_tui.checkpoints.load_checkpoint` (the plain way: checksums
first, crystallized folders decoded at load) and every load is recorded in
:mod:`h2q_tui.checkpoints.timing` (consumer ``serve``). Loading runs on whatever
thread the server gives it (a thread of its own, see server.py); an entry is only ever
loaded, used or unloaded by the one request that holds its gate.

``--follow`` (a run dir being trained): between requests, when the run's
``checkpoints/latest`` pointer has moved, the newest sound checkpoint
(``checkpoints.resolve_checkpoint`` through ``read_info``) is loaded and replaces the model
(``swap`` in the timeline); the request that found it reports the time as its
``load_duration``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import struct
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from h2q_tui import checkpoints
from h2q_tui.checkpoints import timing
from h2q_tui.checkpoints.find import named_run_dir, pointer_state
from h2q_tui.checkpoints.layout import STEP_NAME, TOKENIZER, WEIGHTS
from h2q_tui.errors import UserError
from h2q_tui.generation.decoder import check_output
from h2q_tui.generation.follow import can_swap, swap_weights
from h2q_tui.generation.text import Codec
from h2q_tui.models import count_parameters
from h2q_tui.ollama.protocol import safe_name

CRYSTAL = "crystal"  # RUN/crystal/<method>/: written by h2q-tui crystallize
MAX_HEADER = 100 << 20  # a safetensors header larger than this is not one of ours


def read_header(weights: Path) -> tuple[bytes, dict[str, Any]]:
    """A safetensors file's raw header and its parsed JSON (tensor shapes, metadata)."""
    with open(weights, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        if size > MAX_HEADER:
            raise ValueError("header too large")
        raw = handle.read(size)
    return raw, json.loads(raw)


def human_count(n: int | None) -> str:
    """``1.9M``, ``124M``, ``77K`` (Ollama's parameter_size)."""
    if not n:
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(n)


def iso(at: float) -> str:
    """RFC 3339 in UTC, as Ollama writes times."""
    moment = datetime.fromtimestamp(at, timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class Gate:
    """One request at a time per model; at most ``limit`` more wait, the next gets 503.

    Lives on the event loop: ``reserve`` and ``release`` are called there only.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0  # the request holding the model and those waiting for it
        self._lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def reserve(self) -> Lease | None:
        if self.count > self.limit:
            return None
        self.count += 1
        return Lease(self)

    @property
    def busy(self) -> bool:
        return self.count > 0


class Lease:
    """A place in a model's queue; ``await acquire()`` for the model, ``release()`` once."""

    def __init__(self, gate: Gate) -> None:
        self.gate, self.held, self.released = gate, False, False

    async def acquire(self) -> None:
        await self.gate.lock.acquire()
        self.held = True

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.held:
            self.gate.lock.release()
        self.gate.count -= 1


@dataclass
class Entry:
    """One ``name:tag``: where its weights are, what they are, and the model once loaded."""

    name: str
    path: Path  # what read_info is given: a run dir, a checkpoint folder or a file
    follow: bool = False
    info: Any = None  # CheckpointInfo of the last read
    model: Any = None  # the nn.Module while loaded
    codec: Any = None
    gate: Gate = field(default_factory=lambda: Gate(32))
    expires_at: float | None = None  # time.time() when it unloads; None: never
    loaded_at: float = 0.0
    load_s: float = 0.0  # seconds of the last load or swap
    parameters: int | None = None
    size: int = 0  # bytes of its model files
    digest: str = ""
    modified_at: float = 0.0
    quantization: str = "F32"
    describe: str = ""
    error: str = ""  # why it cannot be read now (a --follow run with no checkpoint yet)
    default_options: dict[str, Any] = field(default_factory=dict)  # /api/create's parameters
    system: str = ""  # /api/create's system prompt
    _pointer: tuple[int, bytes] | None = None  # pointer_state of checkpoints/latest seen

    # ------------------------------------------------------------------ what it is
    def refresh(self, info) -> None:
        """Read the cheap facts of ``info`` (header, sizes) into the entry."""
        weights = Path(info.weights)
        raw, header = read_header(weights)
        self.info, self.error = info, ""
        self.digest = hashlib.sha256(raw).hexdigest()  # the header holds every tensor's CRC-32
        folder = weights.parent
        self.size = sum(
            (folder / name).stat().st_size
            for name in (weights.name, TOKENIZER)
            if (folder / name).is_file()
        )
        self.modified_at = weights.stat().st_mtime
        self.describe = info.describe()
        dtypes = {v.get("dtype") for k, v in header.items() if k != "__metadata__"}
        if info.crystal is not None:
            self.quantization = info.crystal.method.upper()
            self.parameters = self.parameters if self.model is not None else None
        else:
            self.quantization = "F32" if dtypes <= {"F32"} else "/".join(sorted(dtypes))
            self.parameters = sum(
                math.prod(map(int, v["shape"])) for k, v in header.items() if k != "__metadata__"
            )

    @property
    def family(self) -> str:
        return self.info.config.model.family if self.info is not None else "unknown"

    @property
    def has_tokenizer(self) -> bool:
        return self.info is not None and (Path(self.info.weights).parent / TOKENIZER).is_file()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def details(self) -> dict[str, Any]:
        crystal = getattr(self.info, "crystal", None)
        return {
            "parent_model": self.name.split(":")[0] + ":latest" if crystal is not None else "",
            "format": "safetensors",
            "family": self.family,
            "families": [self.family],
            "parameter_size": human_count(self.parameters),
            "quantization_level": self.quantization,
        }

    def model_info(self) -> dict[str, Any]:
        """/api/show's ``model_info`` (the official client requires the key)."""
        if self.info is None:
            return {"general.architecture": "unknown"}
        m = self.info.config.model
        family = m.family
        return {
            "general.architecture": family,
            "general.parameter_count": self.parameters or 0,
            "general.file_type": self.quantization,
            "general.basename": self.name.split(":")[0],
            "h2q.step": self.info.step,
            "h2q.run_id": self.info.run_id,
            "h2q.source": str(self.info.weights.parent),
            f"{family}.context_length": m.context,
            f"{family}.embedding_length": m.d_model,
            f"{family}.block_count": m.n_layers,
            f"{family}.attention.head_count": m.n_heads,
            f"{family}.vocab_size": m.vocab_size,
            "tokenizer.ggml.model": "bpe" if self.has_tokenizer else "bytes",
        }

    # ------------------------------------------------------------------ loading
    def ensure_loaded(self, device=None, dequantize: bool = False) -> tuple[float, str]:
        """Load the model if it is not loaded (``--follow``: or if the run has a newer
        checkpoint); returns (seconds spent, ``load``/``swap``/``""``). Raises UserError.
        ``dequantize``: a crystallized model on float weights instead of its integers."""
        started = time.perf_counter()
        if self.model is not None and not (self.follow and self._pointer_moved()):
            return time.perf_counter() - started, ""
        kind = "swap" if self.model is not None else "load"
        previous = self.info
        self._load(device, kind, previous, dequantize)
        return time.perf_counter() - started, kind

    def _pointer_moved(self) -> bool:
        seen = pointer_state(self.path)
        if seen is None or seen == self._pointer:
            return False
        try:
            weights, _ = checkpoints.resolve_checkpoint(self.path)
        except UserError:
            return False  # keep serving what is loaded
        self._pointer = seen
        return self.info is None or Path(weights) != Path(self.info.weights)

    def _load(self, device, kind: str, previous, dequantize: bool = False) -> None:
        started = time.perf_counter()
        if self.follow:
            self._pointer = pointer_state(self.path)
        try:
            info = checkpoints.read_info(self.path)
        except UserError as exc:
            self.error = str(exc)
            raise
        phases: dict[str, float] = {}
        if kind == "swap" and self.model is not None and can_swap(self.model, info, previous):
            swapped = time.perf_counter()
            swap_weights(self.model, info)  # in place, between two requests (the gate is held)
            model, tokenizer = self.model, checkpoints.tokenizer_of(info)
            phases["copy"] = time.perf_counter() - swapped
        else:
            kind = "load" if kind == "swap" else kind  # another shape: a model of its own
            loaded = checkpoints.load_checkpoint(info, device=device, dequantize=dequantize)
            model, tokenizer = loaded.model, loaded.tokenizer
            check_output(model)  # weights that overflow: a failed load, not a failed request
        codec = Codec(tokenizer)
        total = time.perf_counter() - started
        self.model, self.codec = model, codec
        self.refresh(info)
        self.parameters = count_parameters(model)
        self.loaded_at, self.load_s = time.time(), total
        note = ""
        if kind == "swap" and previous is not None:
            note = f"--follow: step {previous.step} → {info.step}"
        rest = total - sum(phases.values())
        if phases and rest > 0:
            phases["rest"] = rest
        timing.record(
            timing.LoadEvent(
                kind=kind,
                what=info.describe(),
                path=str(Path(info.weights).parent),
                step=info.step,
                total_s=total,
                phases=phases,
                consumer="serve",
                note=note,
            )
        )

    def unload(self) -> None:
        self.model = self.codec = None
        self.expires_at = None

    def adopt(self, other: Entry) -> None:
        """Serve ``other``'s checkpoint and loaded model under this name (/api/swap, with the
        gate held); the name, its queue, keep-alive and defaults stay."""
        keep = {"name", "gate", "expires_at", "default_options", "system"}
        for f in fields(self):
            if f.name not in keep:
                setattr(self, f.name, getattr(other, f.name))


@dataclass
class Registry:
    """Every served ``name:tag``, in the order given."""

    entries: dict[str, Entry] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    names: Any = None  # registry_file.Names: the allowed roots and where API-made names persist

    def get(self, name: str) -> Entry | None:
        """The entry of a normalised ``name:tag`` (names match regardless of case)."""
        if name in self.entries:
            return self.entries[name]
        lowered = name.lower()
        for key, entry in self.entries.items():
            if key.lower() == lowered:
                return entry
        return None

    def add(self, base: str, tag: str, path: Path, follow: bool = False) -> Entry:
        base, tag = safe_name(base), safe_name(tag)
        name, n = f"{base}:{tag}", 2
        while name in self.entries:
            name = f"{base}-{n}:{tag}"
            n += 1
        if n > 2:
            self.warnings.append(f"{path} is served as {name} ({base}:{tag} was taken)")
        entry = Entry(name, path, follow=follow)
        self.entries[name] = entry
        return entry

    @classmethod
    def discover(cls, paths: list[str | Path], follow: bool = False, queue: int = 32) -> Registry:
        """The registry of the CHECKPOINT_OR_RUN_DIR arguments; UserError (one line) for a
        path that is none of them, or a checkpoint that cannot be read."""
        registry = cls()
        followed = 0
        for raw in paths:
            path = Path(raw)
            if not path.exists():
                raise UserError(f"not found: {path}")
            for base, tag, target, is_run in names_of(path):
                entry = registry.add(base, tag, target, follow=follow and is_run)
                entry.gate = Gate(queue)
                followed += entry.follow
                try:
                    entry.refresh(checkpoints.read_info(target))
                except (UserError, OSError, ValueError) as exc:
                    if entry.follow:  # a run that has not saved yet: served once it has
                        entry.error = str(exc)
                        registry.warnings.append(f"{entry.name}: {exc} (waiting for it)")
                    elif target == path:
                        raise UserError(str(exc)) from None
                    else:  # a damaged crystallized folder inside a run dir: skip it
                        del registry.entries[entry.name]
                        registry.warnings.append(f"skipped {target}: {exc}")
        if follow and not followed:
            raise UserError("--follow needs a run dir (a folder holding checkpoints/)")
        return registry


def names_of(path: Path) -> list[tuple[str, str, Path, bool]]:
    """(name, tag, path for read_info, is a run dir) of one argument."""
    if path.exists() and named_run_dir(path) != path:  # RUN/checkpoints[/latest]: the run
        return names_of(named_run_dir(path))
    if path.is_file():
        folder = path.parent
        if path.name == WEIGHTS:
            return [(*_folder_name(folder), path, False)]
        return [(path.stem, "latest", path, False)]
    if (path / WEIGHTS).is_file():
        return [(*_folder_name(path), path, False)]
    if (path / "checkpoints").is_dir():
        found = [(path.name, "latest", path, True)]
        crystal = path / CRYSTAL
        if crystal.is_dir():
            for weights in sorted(crystal.glob(f"*/{WEIGHTS}")):
                found.append((path.name, weights.parent.name, weights.parent, False))
            for weights in sorted(crystal.glob(f"*/*/{WEIGHTS}")):
                snapshot = weights.parent.parent.name
                if snapshot != "checkpoints":  # the Crystal pane's live-step_N/<method>/
                    tag = f"{snapshot}-{weights.parent.name}"
                    found.append((path.name, tag, weights.parent, False))
        return found
    raise UserError(
        f"{path} is not a checkpoint, a checkpoint folder or a run dir (expected {WEIGHTS} "
        "or checkpoints/)"
    )


def _folder_name(folder: Path) -> tuple[str, str]:
    """(name, tag) of a checkpoint folder: crystallized and step folders are tags of their run."""
    parent = folder.parent
    if parent.name == CRYSTAL and parent.parent.name:
        return parent.parent.name, folder.name
    if parent.name == "checkpoints" and STEP_NAME.fullmatch(folder.name):
        return parent.parent.name, folder.name
    return folder.name, "latest"
