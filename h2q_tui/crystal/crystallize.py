"""``h2q-tui crystallize``: write crystallized checkpoints and measure what each one cost.

For each method (:mod:`h2q_tui.crystal.methods`) the sweep (:func:`h2q_tui.crystal.sweep.sweep`)
encodes the source's weights, writes ``OUT/<slug>/`` atomically (a temporary folder renamed
into place: model.safetensors with the source's metadata, the layout, fresh per-tensor CRC-32s
of the stored tensors and the source's size; a copy of tokenizer.json when the source has one;
no state.pt), loads it back the way every command does (``checkpoints.load_checkpoint``,
decoding at load), and measures it against the source on the same held-out windows
(:mod:`h2q_tui.crystal.measure`). One table row per method beside the original:

    method | bytes on disk | ratio | bits/weight | held-out bits/byte | Δ bits/byte ± s.e. |
    mean KLD | KLD p99 | RMS Δp | same top-1 % | seconds

then, under it, the columns ``llama-perplexity --kl-divergence`` prints, so the two reports
read side by side (:mod:`h2q_tui.crystal.measure` defines them):

    method | mean Δp % | KLD med. | KLD max | ln PPL ratio | top p %

(mean Δp in %, the KLD's median and max, mean ln(PPL(Q)/PPL(base)), same top p in %; 80
columns wide for method names up to 22 characters)

and with ``--details`` each mean with its standard error, and the percentiles of Δp (in %)
and of the KLD per method. The JSON holds them all.

- bytes on disk: os.stat sizes of the folder's files (model.safetensors + tokenizer.json);
  the original's are its model.safetensors + tokenizer.json (state.pt, the optimizer state for
  resuming, is neither counted nor written); ratio = original bytes / these bytes;
- bits/weight: 8 × stored tensor bytes (scales, minima and factors included, the file header
  not) / the source model's distinct weights;
- seconds: encode + write + load (decode) + this method's own forward passes and statistics.

``--method sweep`` runs :func:`h2q_tui.crystal.methods.sweep_methods` and marks the Pareto front
(no other row is at most as large with at most the same Δ, one of them strictly) with ``*``.
Where the folders go: :mod:`h2q_tui.crystal.folders`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from h2q_tui import checkpoints
from h2q_tui.codecs.method import method_name
from h2q_tui.crystal import calibrate
from h2q_tui.crystal.folders import check_out, default_out, refuse_foreign_files, slug, write_json
from h2q_tui.crystal.methods import SWEEP, resolve_methods
from h2q_tui.crystal.sweep import (
    Plan,
    ProgressFactory,
    Row,
    group_size,
    load_source,
    mark_pareto,
    refuse_crystallized,
    sweep,
)
from h2q_tui.errors import UserError
from h2q_tui.system import hardware
from h2q_tui.system.thread_choice import ThreadChoice, batched_choice

JSON_NAME = "crystallize.json"
LLAMA_COLUMNS = ("method", "mean Δp %", "KLD med.", "KLD max", "ln PPL ratio", "top p %")
ERROR_COLUMNS = (
    "method",
    "KLD mean ± s.e.",
    "Δp % ± s.e.",
    "ln PPL ratio ± s.e.",
    "top p % ± s.e.",
)
DETAIL_KEYS = ("min", "p1", "p5", "p10", "p50", "p90", "p95", "p99", "max")

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


# ----------------------------------------------------------------------------- the table
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


def format_llama_table(rows: list[Row]) -> str:
    """The measured rows under :data:`LLAMA_COLUMNS` (llama-perplexity's KL-divergence report)."""
    cells = []
    for row in rows:
        c = row.comparison
        if c is None:
            continue
        cells.append(
            [
                row.method,
                f"{100 * c['mean_delta_p']:+.3f}",
                f"{c['kld_median']:.6f}",
                f"{c['kld_max']:.4f}",
                f"{c['ln_ppl_ratio']:+.5f}",
                f"{100 * c['same_top1']:.2f}",
            ]
        )
    return format_rows(LLAMA_COLUMNS, cells)


def format_details(rows: list[Row]) -> str:
    """Per method, the means with their standard errors, then the percentiles of Δp (%) and
    of the KLD over positions."""
    measured = [(row.method, row.comparison) for row in rows if row.comparison is not None]
    errors = [
        [
            method,
            f"{c['mean_kld']:.6f} ± {c['mean_kld_error']:.6f}",
            f"{100 * c['mean_delta_p']:+.3f} ± {100 * c['delta_p_error']:.3f}",
            f"{c['ln_ppl_ratio']:+.5f} ± {c['ln_ppl_ratio_error']:.5f}",
            f"{100 * c['same_top1']:.2f} ± {100 * c['same_top1_error']:.2f}",
        ]
        for method, c in measured
    ]
    parts = ["means ± s.e.\n" + format_rows(ERROR_COLUMNS, errors)]
    for title, key, scale, spec in (
        ("Δp % percentiles", "delta_p_percentiles", 100.0, "+.3f"),
        ("KLD percentiles", "kld_percentiles", 1.0, ".6f"),
    ):
        cells = [
            [row.method, *(format(scale * row.comparison[key][k], spec) for k in DETAIL_KEYS)]
            for row in rows
            if row.comparison is not None
        ]
        parts.append(title + "\n" + format_rows(("method", *DETAIL_KEYS), cells))
    return "\n\n".join(parts)


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
    calibrate: int = 0  # held-out bytes to calibrate cal methods on (0: none)
    details: bool = False  # print the percentile tables too


@contextmanager
def batched_threads() -> Iterator[ThreadChoice]:
    """Torch on the batched thread count (yielded); the caller's count restored after."""
    threads = batched_choice()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads.threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def run(
    request: Request,
    out: Callable[[str], None] = print,
    err: IO[str] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """The ``crystallize`` command: returns the JSON document it wrote. Every model is
    measured on the same thread count (stated in the JSON); the caller's is restored after.

    ``progress`` makes the progress callback of each measuring pass (None: no progress shown).
    """
    err = err if err is not None else sys.stderr
    with batched_threads() as threads:
        started = time.perf_counter()
        _check(request)
        plan, skipped = _prepare(request)
        for line in skipped:
            print(f"note: {line}", file=err)
        if plan.calibration is not None:
            print(f"note: {plan.calibration.describe(plan.heldout)}", file=err)
        original = plan.source.original_row(time.perf_counter() - started)
        _describe(plan, out)
        rows = list(sweep(plan, original, progress, lambda row: _written(row, err)))
        if not rows:  # no methods (cannot happen: --method is required)
            raise UserError("--method names no method")
        mark_pareto(rows)
        out(format_table(rows, star=request.method.strip() == SWEEP))
        out("")
        out(format_llama_table(rows))
        if request.details:
            out("")
            out(format_details(rows))
        for row in rows:
            for note in row.notes:
                print(f"note: {note}", file=err)
        document = _document(request, plan, rows, skipped, threads, started)
        path = Path(request.json) if request.json else plan.out_root / JSON_NAME
        write_json(path, document)
        print(f"wrote {path}", file=err)
        return document


def _check(request: Request) -> None:
    """One-line UserErrors for bad numbers and a missing data file, before any work."""
    if request.batch < 1:
        raise UserError(
            f"--batch must be at least 1 (windows per forward pass), got {request.batch}"
        )
    if request.windows < 0:
        raise UserError(f"--windows must be >= 0 (0 = the whole file), got {request.windows}")
    if request.calibrate < 0:
        raise UserError(f"--calibrate must be a positive number of bytes, got {request.calibrate}")
    if request.data is not None and not Path(request.data).is_file():
        raise UserError(f"data file not found: {request.data}")


def _source_info(checkpoint: str) -> Any:
    """The checkpoint's info; refused when it is not ours or already crystallized."""
    try:
        info = checkpoints.read_info(checkpoint)
    except UserError as exc:
        text = str(exc)
        if "not an h2q-tui checkpoint" in text:
            text += " (--tensors-only reports on any safetensors file)"
        raise UserError(text) from None
    refuse_crystallized(info)
    return info


def _prepare(request: Request) -> tuple[Plan, list[str]]:
    """The source loaded, the methods checked, the output folders cleared to write, the
    held-out windows read: the sweep's plan, and the notes of ladders it skips."""
    device = hardware.resolve_device(request.device)
    info = _source_info(request.checkpoint)
    out_root = check_out(
        Path(request.out) if request.out else default_out(info.weights), info.weights
    )
    source = load_source(info, device)
    methods, skipped = resolve_methods(
        request.method, source.state_dict, request.keep, request.calibrate > 0
    )
    for steps in methods:  # before any work: a folder holding other files is never replaced
        refuse_foreign_files(out_root / slug(method_name(steps)))
    heldout = source.heldout(request.data, request.windows)
    group = group_size(source.model, device)
    plan = Plan(source, methods, heldout, out_root, request.keep, device, request.batch, group)
    if request.calibrate:
        plan.calibration = calibrate.collect(
            source.model, heldout, request.calibrate, device, request.batch
        )
        plan.importance = plan.calibration.importance
    return plan, skipped


def _describe(plan: Plan, out: Callable[[str], None]) -> None:
    source, info = plan.source, plan.source.info
    out(
        f"checkpoint {info.weights} | step {info.step} | {info.config.model.family} | "
        f"{source.parameters:,} parameters | {source.bytes:,} bytes"
    )
    out(f"data {plan.heldout.describe()} | device {plan.device}")


def _written(row: Row, err: IO[str]) -> None:
    print(
        f"crystallized {row.method} → {row.path} ({row.bytes:,} bytes, {row.seconds:.1f} s)",
        file=err,
        flush=True,
    )


def _document(
    request: Request,
    plan: Plan,
    rows: list[Row],
    skipped: list[str],
    threads: ThreadChoice,
    started: float,
) -> dict[str, Any]:
    heldout = plan.heldout
    return {
        "command": "crystallize",
        "source": plan.source.as_dict(),
        "data": {
            "source": heldout.source,
            "bytes": heldout.n_bytes,
            "windows": heldout.windows,
            "context": heldout.context,
            "bytes_per_token": heldout.bytes_per_token,
            "batch": request.batch,
        },
        "machine": hardware.machine_info(),
        "device": str(plan.device),
        "threads": threads.threads,
        "threads_reason": threads.reason,
        "keep": list(request.keep),
        "calibration": plan.calibration.as_dict() if plan.calibration else None,
        "skipped": skipped,
        "out": str(plan.out_root),
        "rows": [row.as_dict() for row in rows],
        "seconds": time.perf_counter() - started,
    }
