"""A run's folder: where it may be, that it is writable, its run.json, what --resume names."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from h2q_tui import checkpoints
from h2q_tui.checkpoints.find import is_inside, named_run_dir
from h2q_tui.errors import UserError, write_error
from h2q_tui.system.files import write_text_atomic

RUN_FILE = "run.json"


def ensure_writable(run_dir: Path, created: list[Path] | None = None) -> None:
    """Create the run dir and prove we can write in it, or raise a one-line UserError.

    ``created`` is given the folders this call made (outermost first), for a refused
    request to remove again.
    """
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if created is not None:
            created.extend(reversed(missing))
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write run dir {run_dir}: {exc.strerror or exc}") from None


def refuse_inside_a_run(run_dir: Path) -> None:
    """A UserError when a new run dir is another run's ``checkpoints/`` folder or inside it."""
    path = Path(os.path.abspath(run_dir))
    for folder in (path, *path.parents):
        run = folder.parent
        if folder.name == "checkpoints" and (
            (run / RUN_FILE).is_file() or (folder / checkpoints.LATEST).is_file()
        ):
            run = Path(os.path.relpath(run)) if run.is_relative_to(Path.cwd()) else run
            raise UserError(
                f"--run-dir {run_dir} is inside the checkpoints of run {run}: use "
                f"--resume {run} to continue it, or another --run-dir"
            )


def resume_source(path: str | Path) -> tuple[Path, Path]:
    """(run dir, checkpoint path) of ``--resume``: a run dir (its latest sound checkpoint), or
    one of its ``checkpoints/step_N`` folders (or that folder's model.safetensors).

    A path inside a run (``RUN/checkpoints``, ``RUN/checkpoints/latest``, a file of the run)
    means that run, so that its data, its files and its lock are the ones used.
    """
    path = named_run_dir(Path(os.path.normpath(path)))
    folder = path.parent if path.is_file() else path
    if not (folder / checkpoints.WEIGHTS).is_file():
        return folder, folder
    if folder.parent.name == "checkpoints":
        if not is_inside(folder.parent, folder):
            raise UserError(
                f"--resume {path}: the checkpoint folder is a link to outside "
                f"{folder.parent}; resume only checkpoints the run wrote itself"
            )
        return folder.parent.parent, folder
    raise UserError(
        f"--resume {path}: a lone checkpoint folder; resume its run dir or a "
        "RUN/checkpoints/step_N folder, or evaluate it with h2q-tui eval"
    )


def set_aside_later_steps(run_dir: Path, step: int) -> str:
    """Resuming from an earlier step: move the later step_* folders out of the way."""
    root = run_dir / "checkpoints"
    later = [p for p in root.glob("step_*") if p.name > f"step_{step:08d}"]
    if not later:
        return ""
    aside = root / f"superseded-{datetime.now():%Y%m%d-%H%M%S}"
    aside.mkdir()
    for folder in later:
        os.rename(folder, aside / folder.name)
    return f"resuming from step {step}: the {len(later)} later checkpoint(s) moved to {aside}"


def write_run_file(run_dir: Path, payload: dict) -> None:
    try:
        write_text_atomic(run_dir / RUN_FILE, json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        raise write_error(RUN_FILE, run_dir, exc, ", then start again") from None


def read_run_file(run_dir: Path) -> dict:
    """run.json as a dict of strings (or None) per key; a damaged file is a one-line UserError."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return {}
    fix = "move it away and pass --data (and --heldout, --tokenizer) to resume"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON or not UTF-8
        raise UserError(f"{path} is unreadable: {fix}") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} holds a JSON {type(saved).__name__}, not an object: {fix}")
    for key, value in saved.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"{path}: {key!r} must be a string, got {type(value).__name__}: {fix}")
    return saved
