"""The names that ``/api/create`` and ``/api/copy`` make, kept in a small JSON file so that they
survive a restart, and the folders (roots) inside which a request may name a checkpoint.

The file (``--registry``; by default :data:`FILE_NAME` in the first served argument's folder,
so the names travel with the models they point at) holds
``{"version": 1, "models": {"name:tag": {"from": PATH, "system": ..., "parameters": {...}}}}``;
a path inside the file's folder is kept relative to it. Every write replaces the file whole
(:func:`~h2q_tui.system.files.write_text_atomic`: a temporary file, fsync, one rename).
Command-line models are never written to it. At start every entry is checked as a request
would be (its name, its path inside the roots, a readable checkpoint, its options); one that
fails is left out with one warning line and kept in the file as it was (another ``serve``,
with other roots, may serve it). A file that cannot be read or written: one warning line, and
names made through the API last until serve stops.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from h2q_tui import checkpoints
from h2q_tui.checkpoints.find import named_run_dir
from h2q_tui.errors import UserError
from h2q_tui.ollama import protocol
from h2q_tui.ollama.answer import settings
from h2q_tui.ollama.models import Entry, Gate, Registry, names_of
from h2q_tui.system.files import write_text_atomic
from h2q_tui.units import first_line

FILE_NAME = "h2q-serve-models.json"
VERSION = 1
MAX_FILE = 4 << 20  # bytes; a registry of names is a few kilobytes


class Refused(ValueError):
    """A path a request may not name (a ``..`` part, or outside every root): status 400."""


class Roots:
    """The folders, symbolic links resolved, inside which a checkpoint path may lie."""

    def __init__(self, folders: Iterable[str | Path]) -> None:
        self.folders: list[Path] = []
        for folder in folders:
            resolved = Path(folder).resolve()
            if resolved not in self.folders:
                self.folders.append(resolved)

    @classmethod
    def of(cls, served: Iterable[str | Path], allowed: Iterable[str | Path] = ()) -> Roots:
        """The folders named on serve's command line (a run's, for ``RUN/checkpoints``; a
        file's folder, for a file) and every ``--allow-root``."""
        named = [named_run_dir(Path(p)) for p in served]
        return cls([*(p if p.is_dir() else p.parent for p in named), *allowed])

    def check(self, raw: str, base: Path | None = None) -> Path:
        """The resolved path ``raw`` names (relative: to ``base``, else the working folder);
        :class:`Refused` for ``..`` or a path outside the roots, FileNotFoundError when it is
        inside but missing."""
        path = Path(raw)
        if ".." in path.parts:
            raise Refused(f"path {_shown(raw)} must not contain '..'")
        try:
            resolved = ((base or Path.cwd()) / path).resolve()
            exists = resolved.exists()
        except (OSError, RuntimeError, ValueError) as exc:  # a NUL, a loop, a name too long
            why = getattr(exc, "strerror", None) or first_line(exc)
            raise Refused(f"path {_shown(raw)} cannot be resolved: {why}") from None
        if not any(resolved.is_relative_to(root) for root in self.folders):
            where = ", ".join(str(root) for root in self.folders) or "none"
            raise Refused(
                f"path {_shown(raw)} is outside the allowed roots ({where}; serve "
                "--allow-root DIR adds one)"
            )
        if not exists:
            raise FileNotFoundError(f"path {_shown(raw)} not found")
        return resolved


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 80 else raw[:77] + "…")


def check_parameters(raw: Any, max_predict: int) -> dict[str, Any]:
    """``/api/create``'s ``parameters`` (Ollama's option names) as they will be applied:
    ValueError (one line) for what a request's ``options`` would be refused for."""
    if raw is None:
        return {}
    settings(protocol.parse_options(raw, max_predict), chat=False)  # ValueError: type, range
    return {key: value for key, value in raw.items() if value is not None}


def target_of(path: Path) -> Path:
    """What a checkpoint, run dir or crystallized folder serves under one name, by the
    command line's discovery rules (a run dir: its latest checkpoint); UserError for none."""
    return names_of(path)[0][2]


def read_entry(name: str, path: Path, queue: int, system: str, defaults: dict) -> Entry:
    """The entry of ``path`` (:func:`target_of`); UserError when it cannot be read."""
    target = target_of(path)
    entry = Entry(name, target, gate=Gate(queue), default_options=defaults, system=system)
    try:
        entry.refresh(checkpoints.read_info(target))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {target}: {first_line(exc)}") from None
    return entry


class Names:
    """The names made through the API: their records, the roots, and the file that keeps
    them (``path`` None: in memory only)."""

    def __init__(self, roots: Roots, path: Path | None = None) -> None:
        self.roots, self.path, self.origin = roots, path, path
        self.records: dict[str, Any] = {}  # as in the file, entries left out at start included

    @property
    def base(self) -> Path | None:
        return None if self.origin is None else self.origin.parent

    def record(self, entry: Entry) -> dict[str, Any]:
        """What the file keeps of an entry."""
        path = Path(entry.path)
        if self.base is not None and path.is_relative_to(self.base.resolve()):
            path = path.relative_to(self.base.resolve())
        record: dict[str, Any] = {"from": str(path)}
        if entry.system:
            record["system"] = entry.system
        if entry.default_options:
            record["parameters"] = entry.default_options
        if entry.follow:
            record["follow"] = True
        return record

    def put(self, entry: Entry) -> None:
        self.records[entry.name] = self.record(entry)
        self._write()

    def drop(self, name: str) -> None:
        if self.records.pop(name, None) is not None:
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        text = json.dumps({"version": VERSION, "models": self.records}, indent=2, sort_keys=True)
        try:
            write_text_atomic(self.path, text + "\n")
        except OSError as exc:
            _warn(f"cannot write {self.path} ({first_line(exc)}): {_MEMORY}")
            self.path = None

    # ------------------------------------------------------------------ at start
    def read(self) -> str:
        """Read the file; a warning line ('' when none) when it cannot be used (then names
        made through the API are kept in memory only, and the file is left as it is)."""
        if self.path is None:
            return ""
        folder = self.path.parent
        try:
            if not self.path.exists():
                if not os.access(folder, os.W_OK):
                    raise OSError(f"folder {folder} is not writable")
                return ""
            if self.path.stat().st_size > MAX_FILE:
                raise ValueError(f"over {MAX_FILE:,} bytes")
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError(f"not a version-{VERSION} registry file")
            if not isinstance(data.get("models"), dict):
                raise ValueError("its 'models' is not an object")
            self.records = data["models"]
            if not (os.access(self.path, os.W_OK) and os.access(folder, os.W_OK)):
                raise OSError("read-only")
        except (OSError, ValueError, RecursionError) as exc:
            path, self.path = self.path, None
            return f"registry file {path}: {first_line(exc)}: {_MEMORY}"
        return ""

    def serve(self, registry: Registry, queue: int, max_predict: int) -> str:
        """Add the file's names to ``registry`` (the command line's names win); one warning
        line ('' when none) for the entries left out."""
        skipped = []
        for name, record in self.records.items():
            if registry.get(str(name)) is not None:
                skipped.append(f"{name} (the name is taken)")
                continue
            try:
                registry.entries[name] = self._entry(name, record, queue, max_predict)
            except (ValueError, UserError, OSError) as exc:
                skipped.append(f"{_shown(str(name))} ({first_line(exc)})")
        if not skipped:
            return ""
        listed = "; ".join(skipped)
        listed = listed if len(listed) <= 300 else listed[:299] + "…"
        return f"registry file {self.origin}: {len(skipped)} name(s) left out: {listed}"

    def _entry(self, name: str, record: Any, queue: int, max_predict: int) -> Entry:
        if protocol.normalize_name(name) != name:
            raise ValueError("not a name:tag")
        if not isinstance(record, dict) or not isinstance(record.get("from"), str):
            raise ValueError("no 'from' path")
        system = record.get("system", "")
        if not isinstance(system, str):
            raise ValueError("its system is not a string")
        defaults = check_parameters(record.get("parameters"), max_predict)
        path = self.roots.check(record["from"], self.base)
        entry = read_entry(name, path, queue, system, defaults)
        entry.follow = record.get("follow") is True
        return entry


_MEMORY = "names made through the API last until serve stops"


def _warn(line: str) -> None:
    print(f"h2q-tui serve: warning: {line}", file=sys.stderr, flush=True)


def default_path(served: list[str | Path]) -> Path:
    """Where the names are kept without ``--registry``: beside the first served model."""
    first = named_run_dir(Path(served[0]))
    return (first if first.is_dir() else first.parent) / FILE_NAME


def attach(
    registry: Registry,
    roots: Roots,
    path: Path | None,
    queue: int = 32,
    max_predict: int = protocol.MAX_PREDICT,
) -> Names:
    """The names of ``path`` (None: memory only) served by ``registry`` from now on; each
    warning is one line in ``registry.warnings``."""
    names = Names(roots, path)
    for warning in (names.read(), names.serve(registry, queue, max_predict)):
        if warning:
            registry.warnings.append(warning)
    registry.names = names
    return names
