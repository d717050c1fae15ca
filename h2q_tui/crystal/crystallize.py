"""``h2q-tui crystallize``: write crystallized checkpoints and measure what each one cost.

For each method: encode the source's weights (:func:`h2q_tui.codecs.policy.encode_state_dict`),
write ``OUT/<slug>/`` atomically (a temporary folder renamed into place: model.safetensors
with the source's metadata, the layout, fresh per-tensor CRC-32s of the stored tensors and
the source's size; a copy of tokenizer.json when the source has one; no state.pt), load it
back the way every command does (``checkpoints.read_info`` + ``load_model_from``, decoding at
load), and measure it against the source on the same held-out windows
(:mod:`h2q_tui.crystal.measure`). One table row per method beside the original:

    method | bytes on disk | ratio | bits/weight | held-out bits/byte | Δ bits/byte ± s.e. |
    mean KLD | KLD p99 | RMS Δp | same top-1 % | seconds

- bytes on disk: os.stat sizes of the folder's files (model.safetensors + tokenizer.json);
  the original's are its model.safetensors + tokenizer.json (state.pt, the optimizer state for
  resuming, is neither counted nor written); ratio = original bytes / these bytes;
- bits/weight: 8 × stored tensor bytes (scales, minima and factors included, the file header
  not) / the source model's distinct weights;
- seconds: encode + write + load (decode) + this method's own forward passes and statistics.

``--method sweep`` runs :func:`sweep_methods` and marks the Pareto front (no other row is at
most as large with at most the same Δ, one of them strictly) with ``*``. The default output
folder is ``RUN/crystal/`` for a checkpoint inside ``RUN/checkpoints/``, else ``crystal/``
beside the checkpoint folder; a folder of an earlier run of the same method is replaced.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from h2q_tui.codecs import stored
from h2q_tui.codecs.kronecker import model_rank
from h2q_tui.codecs.layout import Crystal, encode_state_dict
from h2q_tui.codecs.method import Step, method_name, parse_method
from h2q_tui.codecs.policy import plan, tied_names
from h2q_tui.codecs.tensor import stored_bytes
from h2q_tui.errors import UserError, write_error
from h2q_tui.system.files import give_umask_mode

SWEEP = "sweep"
BASE_METHODS = ("bf16", "int8", "int6-g128", "int5-g64", "int4-g128", "int4-g32")
SVD_LADDER = ("svd:0.75", "svd:0.5", "svd:0.25", "svd:0.5+int8", "svd:0.25+int8")
SOURCE_METADATA = ("format", "format_version", "step", "run_id", "config", "rank_growths")
JSON_NAME = "crystallize.json"
MEASURE_MEMORY_SHARE = 0.25  # of available memory, for the crystallized models measured at once

COLUMNS = (
    "method",
    "bytes on disk",
    "ratio",
    "bits/weight",
    "held-out bits/byte",
    "Δ bits/byte ± s.e.",
    "mean KLD",
    "KLD p99",
    "RMS Δp",
    "same top-1 %",
    "seconds",
)


# ----------------------------------------------------------------------------- methods
def slug(method: str) -> str:
    """A folder name for a method: ``rank:4+int8`` → ``rank-4+int8``."""
    return "".join(c if c.isalnum() or c in ".+-_" else "-" for c in method)


def sweep_methods(
    state_dict: dict[str, torch.Tensor], keep: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The standard ladder for this state_dict, and one line per ladder that does not apply.

    bf16, int8, int6-g128, int5-g64, int4-g128, int4-g32; for HamLinear models rank:K and
    rank-shared:K at K ≈ 3R/4, R/2, R/4 (K < R) and rank:R/2 with int8, int5-g64 and int4-g32;
    for models with dense matrices (besides embeddings and head) svd:0.75/0.5/0.25 of the
    break-even rank and svd:F+int8.
    """
    methods, skipped = list(BASE_METHODS), []
    try:
        rank = model_rank(state_dict)
    except ValueError as exc:
        rank, why = None, str(exc)
    else:
        why = "no HamLinear layers (rank truncation is for microstream, h2q-transformer and qrlm)"
    if rank is None:
        skipped.append(f"rank ladder skipped: {why}")
    elif rank < 2:
        skipped.append("rank ladder skipped: the Kronecker rank R = 1 leaves nothing to truncate")
    else:
        ks = sorted({max(1, rank * 3 // 4), max(1, rank // 2), max(1, rank // 4)}, reverse=True)
        for k in ks:
            methods += [f"rank:{k}", f"rank-shared:{k}"]
        middle = max(1, rank // 2)
        methods += [f"rank:{middle}+{m}" for m in ("int8", "int5-g64", "int4-g32")]
    try:
        plan(state_dict, parse_method("svd:0.5"), keep)
    except ValueError as exc:
        skipped.append(f"svd ladder skipped: {str(exc).removeprefix('svd:0.5 ')}")
    else:
        methods += list(SVD_LADDER)
    return methods, skipped


def resolve_methods(
    text: str, state_dict: dict[str, torch.Tensor], keep: Sequence[str] = ()
) -> tuple[list[tuple[Step, ...]], list[str]]:
    """Parsed methods of ``--method`` (a comma list, or ``sweep``), each checked against the
    model; and the notes of ladders a sweep skipped. One-line UserError for a bad method."""
    try:
        rank = model_rank(state_dict)
    except ValueError:
        rank = None
    unique = {name: t for name, t in state_dict.items() if name not in tied_names(state_dict)}
    parts = [part.strip() for part in text.split(",")]
    skipped: list[str] = []
    if SWEEP in parts:
        if parts != [SWEEP]:
            raise UserError("--method sweep runs the whole ladder; give it alone")
        names, skipped = sweep_methods(unique, keep)
    else:
        names = parts
    methods: list[tuple[Step, ...]] = []
    for name in names:
        try:
            steps = parse_method(name, rank)
            plan(unique, steps, keep)
        except ValueError as exc:
            raise method_error(name, exc) from None
        if method_name(steps) in {method_name(m) for m in methods}:
            raise UserError(f"--method names {method_name(steps)} twice")
        methods.append(steps)
    return methods, skipped


def method_error(name: str, exc: Exception) -> UserError:
    """``--method rank:2 does not apply ...`` / ``--method foo: unknown method 'foo' ...``."""
    text = str(exc)
    return UserError(f"--method {text}" if text.startswith(name) else f"--method {name}: {text}")


# ----------------------------------------------------------------------------- folders
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
    from safetensors.torch import save_file

    from h2q_tui import checkpoints

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


# ----------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One table row (the original's row has no comparison)."""

    method: str
    path: str
    bytes: int
    files: dict[str, int]
    ratio: float
    bits_per_weight: float
    bits_per_byte: float
    seconds: float
    comparison: dict[str, Any] | None = None  # measure.Comparison.as_dict()
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    load_seconds: float = 0.0
    eval_seconds: float = 0.0
    pareto: bool = False
    notes: list[str] = field(default_factory=list)
    tensors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def delta(self) -> float:
        return self.comparison["delta_bits_per_byte"] if self.comparison else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "comparison"}
        measured = {k: v for k, v in (self.comparison or {}).items() if k != "seconds"}
        return {**data, **measured}  # seconds: the row's total (eval_seconds: its evaluation)


def mark_pareto(rows: list[Row]) -> None:
    """Set ``pareto`` on the crystallized rows no other row dominates (bytes and Δ, the original
    included: Δ = 0 at its size)."""
    for row in rows:
        if row.comparison is None:
            continue
        row.pareto = not any(
            other is not row
            and other.bytes <= row.bytes
            and other.delta <= row.delta
            and (other.bytes < row.bytes or other.delta < row.delta)
            for other in rows
        )


def _cells(row: Row, star: bool) -> list[str]:
    method = row.method + (" *" if star and row.pareto else "")
    common = [method, f"{row.bytes:,}", f"{row.ratio:.2f}×", f"{row.bits_per_weight:.2f}"]
    common.append(f"{row.bits_per_byte:.4f}")
    c = row.comparison
    if c is None:
        return [*common, "—", "—", "—", "—", "—", f"{row.seconds:.1f}"]
    return [
        *common,
        f"{c['delta_bits_per_byte']:+.4f} ± {c['delta_std_error']:.4f}",
        f"{c['mean_kld']:.6f}",
        f"{c['kld_p99']:.4f}",
        f"{c['rms_delta_p']:.4f}",
        f"{100 * c['same_top1']:.1f}",
        f"{row.seconds:.1f}",
    ]


def format_rows(headers: Sequence[str], cells: Sequence[Sequence[str]], left: int = 1) -> str:
    """A plain table: columns joined by `` | ``, the first ``left`` left-aligned, others right."""
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return " | ".join(
            v.ljust(w) if i < left else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def format_table(rows: list[Row], star: bool = False) -> str:
    table = format_rows(COLUMNS, [_cells(row, star) for row in rows])
    if star:
        table += "\n* on the Pareto front: no other row is as small with as small a Δ"
    return table


# ----------------------------------------------------------------------------- the command
@dataclass
class Request:
    checkpoint: str
    method: str
    data: str | None = None
    out: str | None = None
    json: str | None = None
    keep: list[str] = field(default_factory=list)
    windows: int = 0
    batch: int = 32
    device: str = "cpu"
    tensors_only: bool = False


def _progress_bar(windows: int, batch: int, label: str, stream: IO[str]):
    from h2q_tui.cli.progress import WindowProgressBar

    return WindowProgressBar(windows, batch, stream=stream, label=label)


def _group_size(model: torch.nn.Module, device: torch.device) -> int:
    """How many crystallized models to measure in one pass (their fp32 weights ≤ a share of
    the memory available)."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) or 1
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return max(1, min(32, int(free * MEASURE_MEMORY_SHARE // size)))


def _unique(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    aliases = tied_names(state_dict)
    return {name: t for name, t in state_dict.items() if name not in aliases}


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict on the CPU, tied tensors (GPT's head = embedding) still one object."""
    state_dict = model.state_dict()
    aliases = tied_names(state_dict)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        out[name] = out[aliases[name]] if name in aliases else tensor.detach().cpu()
    return out


def run(
    request: Request,
    out: Callable[[str], None] = print,
    err: IO[str] | None = None,
) -> dict[str, Any]:
    """The ``crystallize`` command: returns the JSON document it wrote. Every model is
    measured on the same thread count (stated in the JSON); the caller's is restored after."""
    from h2q_tui.system.thread_choice import batched_choice

    threads = batched_choice()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads.threads)
    try:
        return _run(request, out, err, threads)
    finally:
        torch.set_num_threads(previous)


def _run(request: Request, out: Callable[[str], None], err: IO[str] | None, threads) -> dict:
    from h2q_tui import checkpoints
    from h2q_tui.crystal import measure
    from h2q_tui.models import count_parameters
    from h2q_tui.system import hardware

    err = err if err is not None else sys.stderr
    if request.tensors_only:
        from h2q_tui.crystal import tensor_report

        return tensor_report.run(request, out, err)
    if request.batch < 1:
        raise UserError(
            f"--batch must be at least 1 (windows per forward pass), got {request.batch}"
        )
    if request.windows < 0:
        raise UserError(f"--windows must be >= 0 (0 = the whole file), got {request.windows}")
    if request.data is not None and not Path(request.data).is_file():
        raise UserError(f"data file not found: {request.data}")
    device = hardware.resolve_device(request.device)
    started = time.perf_counter()
    try:
        info = checkpoints.read_info(request.checkpoint)
    except UserError as exc:
        text = str(exc)
        if "not an h2q-tui checkpoint" in text:
            text += " (--tensors-only reports on any safetensors file)"
        raise UserError(text) from None
    if info.crystal is not None:
        raise UserError(
            f"checkpoint {info.weights} is already crystallized ({info.crystal.method}); "
            f"crystallize its source {info.crystal.source or 'checkpoint'} instead"
        )
    out_root = check_out(
        Path(request.out) if request.out else default_out(info.weights), info.weights
    )
    base = checkpoints.load_model_from(info, device).eval()
    state_dict = cpu_state_dict(base)
    methods, skipped = resolve_methods(request.method, state_dict, request.keep)
    for steps in methods:  # before any work: a folder holding other files is never replaced
        refuse_foreign_files(out_root / slug(method_name(steps)))
    heldout = measure.load_heldout(
        request.data, info.config.model.context, checkpoints.tokenizer_of(info), request.windows
    )
    load_seconds = time.perf_counter() - started
    for line in skipped:
        print(f"note: {line}", file=err)

    source = describe_source(info, base, state_dict)
    source_bytes, weights = source.bytes, source.weights
    out(
        f"checkpoint {info.weights} | step {info.step} | {info.config.model.family} | "
        f"{count_parameters(base):,} parameters | {source_bytes:,} bytes"
    )
    out(f"data {heldout.describe()} | device {device}")

    original = Row(
        method="original",
        path=str(source.folder),
        bytes=source_bytes,
        files=source.files,
        ratio=1.0,
        bits_per_weight=8 * stored_bytes(_unique(state_dict)) / max(1, weights),
        bits_per_byte=0.0,
        seconds=load_seconds,
    )
    rows: list[Row] = []
    group = _group_size(base, device)
    base_score = None
    for first in range(0, len(methods), group):
        batch_methods = methods[first : first + group]
        models, batch_rows = [], []
        for steps in batch_methods:
            row, model = crystallize_method(
                steps, source, state_dict, request.keep, out_root, device, err
            )
            models.append(model)
            batch_rows.append(row)
        names = ", ".join(row.method for row in batch_rows)
        label = f"measuring {names}" if len(names) <= 40 else f"measuring {len(batch_rows)} methods"
        bar = _progress_bar(heldout.windows, request.batch, label, err)
        score, comparisons = measure.compare_many(
            base, models, heldout, device, request.batch, progress=bar
        )
        base_score = score
        for row, comparison in zip(batch_rows, comparisons, strict=True):
            row.comparison = comparison.as_dict()
            row.bits_per_byte = comparison.bits_per_byte
            row.eval_seconds = comparison.seconds
            row.seconds += comparison.seconds
        rows.extend(batch_rows)
        del models
    if base_score is None:  # no methods (cannot happen: --method is required)
        raise UserError("--method names no method")
    original.bits_per_byte = base_score.bits_per_byte
    original.seconds += base_score.seconds
    original.eval_seconds = base_score.seconds
    table_rows = [original, *rows]
    sweep = request.method.strip() == SWEEP
    mark_pareto(table_rows)
    out(format_table(table_rows, star=sweep))
    for row in rows:
        for note in row.notes:
            print(f"note: {note}", file=err)
    document = {
        "command": "crystallize",
        "source": source.as_dict(),
        "data": {
            "source": heldout.source,
            "bytes": heldout.n_bytes,
            "windows": heldout.windows,
            "context": heldout.context,
            "bytes_per_token": heldout.bytes_per_token,
            "batch": request.batch,
        },
        "machine": hardware.machine_info(),
        "device": str(device),
        "threads": threads.threads,
        "threads_reason": threads.reason,
        "keep": list(request.keep),
        "skipped": skipped,
        "out": str(out_root),
        "rows": [row.as_dict() for row in table_rows],
        "seconds": time.perf_counter() - started,
    }
    path = Path(request.json) if request.json else out_root / JSON_NAME
    write_json(path, document)
    print(f"wrote {path}", file=err)
    return document


def write_json(path: Path, document: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise _write_failed(path.name, path.parent, exc) from None


@dataclass
class Source:
    """What every crystallized folder of one checkpoint records about it, read once."""

    info: Any  # h2q_tui.checkpoints.CheckpointInfo
    folder: Path
    bytes: int  # the checkpoint's model files on disk
    files: dict[str, int]
    weights: int  # distinct weights (tied tensors counted once)
    parameters: int
    metadata: dict[str, str]  # the source file's safetensors metadata
    tokenizer: Path | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.folder),
            "run_id": self.info.run_id,
            "step": self.info.step,
            "family": self.info.config.model.family,
            "bytes": self.bytes,
            "files": self.files,
            "weights": self.weights,
            "parameters": self.parameters,
        }


def describe_source(info: Any, model: torch.nn.Module, state_dict: dict[str, torch.Tensor]):
    """The :class:`Source` of a loaded (not crystallized) checkpoint."""
    from safetensors import safe_open

    from h2q_tui.models import count_parameters

    folder = source_folder(info.weights)
    with safe_open(str(info.weights), framework="pt") as handle:  # the header only
        metadata = handle.metadata() or {}
    tokenizer = folder / stored.TOKENIZER
    return Source(
        info=info,
        folder=folder,
        bytes=stored.model_files_bytes(folder),
        files={
            n: (folder / n).stat().st_size for n in stored.MODEL_FILES if (folder / n).is_file()
        },
        weights=sum(t.numel() for t in _unique(state_dict).values()),
        parameters=count_parameters(model),
        metadata=metadata,
        tokenizer=tokenizer if tokenizer.is_file() else None,
    )


def crystallize_method(
    steps,
    source: Source,
    state_dict: dict[str, torch.Tensor],
    keep: Sequence[str],
    out_root: Path,
    device,
    err: IO[str],
) -> tuple[Row, torch.nn.Module]:
    """Encode, write, load back (decoding) one method: its row (without the comparison) and
    the loaded model."""
    from h2q_tui import checkpoints

    name = method_name(steps)
    started = time.perf_counter()
    try:
        crystal = encode_state_dict(state_dict, steps, keep, measure=True)
    except ValueError as exc:
        raise method_error(name, exc) from None
    encoded = time.perf_counter()
    folder = write_crystal(
        out_root, slug(name), crystal, source.metadata, source.as_dict(), source.tokenizer
    )
    written = time.perf_counter()
    info = checkpoints.read_info(folder)
    model = checkpoints.load_model_from(info, device).eval()
    loaded = time.perf_counter()
    files = folder_bytes(folder)
    total = sum(files.values())
    notes = list(crystal.notes)
    if total >= source.bytes:
        notes.append(f"{name} saves no bytes on disk: {total:,} bytes against {source.bytes:,}")
    row = Row(
        method=name,
        path=str(folder),
        bytes=total,
        files=files,
        ratio=source.bytes / total,
        bits_per_weight=8 * crystal.bytes_after / max(1, source.weights),
        bits_per_byte=0.0,
        seconds=loaded - started,
        encode_seconds=encoded - started,
        write_seconds=written - encoded,
        load_seconds=loaded - written,
        notes=notes,
        tensors=[row.__dict__ for row in crystal.rows],
    )
    print(
        f"crystallized {name} → {folder} ({total:,} bytes, {row.seconds:.1f} s)",
        file=err,
        flush=True,
    )
    return row, model
