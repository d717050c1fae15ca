"""Where crystallized folders go and how each is written: atomically, never over foreign files.

The default output folder is ``RUN/crystal/`` for a checkpoint inside ``RUN/checkpoints/``,
else ``crystal/`` beside the checkpoint folder; a folder of an earlier run of the same method
is replaced (a temporary folder renamed into place, so there is never a gap).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from h2q_tui import checkpoints
from h2q_tui.codecs import stored
from h2q_tui.codecs.layout import Crystal
from h2q_tui.config import RunConfig
from h2q_tui.errors import UserError, write_error
from h2q_tui.system.files import give_umask_mode

SOURCE_METADATA = ("format", "format_version", "step", "run_id", "config", "rank_growths")


def slug(method: str) -> str:
    """A folder name for a method: ``rank:4+int8`` → ``rank-4+int8``."""
    return "".join(c if c.isalnum() or c in ".+-_" else "-" for c in method)


def source_folder(weights: Path) -> Path:
    return weights.parent


def default_out(weights: Path) -> Path:
    """``RUN/crystal`` for ``RUN/checkpoints/<name>/``, else ``crystal/`` beside the folder."""
    folder = weights.parent
    if folder.parent.name == "checkpoints":
        return folder.parent.parent / "crystal"
    return folder.parent / "crystal"


def check_out(out: Path, weights: Path) -> Path:
    """The output root, refused when it is the source checkpoint folder or inside it."""
    source = source_folder(weights).resolve()
    resolved = out.resolve()
    if resolved == source or resolved.is_relative_to(source):
        raise UserError(
            f"--out {out} is inside the source checkpoint folder {source_folder(weights)}: "
            "choose a folder outside it (the source stays untouched)"
        )
    if resolved.exists() and not resolved.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    return out


def refuse_foreign_files(folder: Path) -> None:
    """A UserError when ``folder`` holds anything crystallize did not write there: replacing
    the folder would delete it."""
    if not folder.is_dir() or folder.is_symlink():
        if folder.is_symlink() or folder.exists():
            raise UserError(
                f"--out: {folder} exists and is not a folder crystallize wrote: move it away "
                "or choose another --out"
            )
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in stored.MODEL_FILES)
    if foreign:
        raise UserError(
            f"--out: {folder} holds files crystallize did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); move them away or choose another --out "
            "(replacing the folder would delete them)"
        )


def _write_failed(what: str, where: Path, exc: OSError) -> UserError:
    return write_error(what, where, exc, " (the source checkpoint is untouched)")


def write_crystal(
    out: Path,
    name: str,
    crystal: Crystal,
    source_metadata: dict[str, str],
    source: dict[str, Any],
    tokenizer: Path | None,
) -> Path:
    """Write ``out/name/`` atomically (temporary folder + rename) and return it."""
    final = out / name
    tmp = out / f".tmp-{name}-{os.getpid()}"
    metadata = {key: source_metadata[key] for key in SOURCE_METADATA if key in source_metadata}
    metadata.update(crystal.metadata)
    metadata["checksums"] = json.dumps(checkpoints.tensor_checksums(crystal.tensors))
    metadata[stored.SOURCE_KEY] = json.dumps(source)
    try:
        out.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_leftovers(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {key: value.detach().cpu().contiguous() for key, value in crystal.tensors.items()}
        save_file(tensors, str(tmp / stored.WEIGHTS), metadata=metadata)
        give_umask_mode(tmp / stored.WEIGHTS)  # safetensors writes 0600
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / stored.TOKENIZER)
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        refuse_foreign_files(final)
        if final.exists():  # an earlier run of this method: swap, never leave a gap
            old = out / f".old-{name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(f"crystallized checkpoint {name}", out, exc) from None
    except Exception:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        if shutil.disk_usage(out).free < (1 << 20):
            raise _write_failed(
                f"crystallized checkpoint {name}", out, OSError(errno.ENOSPC, "")
            ) from None
        raise
    return final


def folder_bytes(folder: Path) -> dict[str, int]:
    """name → os.stat size of every file in a folder (not recursive)."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def write_json(path: Path, document: dict[str, Any]) -> None:
    """The JSON report at ``path``, its folder made; a one-line UserError when it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise _write_failed(path.name, path.parent, exc) from None


def save_snapshot(model: Any, step: int, live: dict[str, Any]) -> tuple[Path, Path, bool]:
    """Save a live run's model copy as a plain checkpoint ``live-step_N`` under
    ``RUN/crystal/checkpoints/`` (a temporary folder when the run dir is unset or not
    writable): (the checkpoint folder, the folder its crystallized folders go to, whether
    that is in the run dir).

    ``live``: ``config``, ``run_id``, ``rank_growths``, ``tokenizer`` (a path or None) and
    ``run_dir`` (or None) of the run.
    """
    config = live["config"] or RunConfig(model=model.config)  # as Trainer.save
    name = f"live-step_{step:08d}"
    extra = {checkpoints.TOKENIZER: Path(live["tokenizer"])} if live["tokenizer"] else {}
    run_dir = live["run_dir"]
    roots = [Path(run_dir) / "crystal"] if run_dir else []
    roots.append(Path(tempfile.mkdtemp(prefix="h2q-crystal-")))
    problem = ""
    for root in roots:
        try:
            folder = checkpoints.save_checkpoint(
                root,
                model,
                config,
                step,
                str(live["run_id"]),
                {"rank_growths": live["rank_growths"]},
                extra_files=extra,
                name=name,
            )
        except UserError as exc:
            problem = str(exc)
            continue
        return folder, root / name, bool(root is roots[0] and run_dir)
    raise UserError(problem or "cannot save the snapshot")
