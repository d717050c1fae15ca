"""Hot start on this machine: load → first token by phase, warm and cold, in-process and in a
fresh process, memory-mapped safetensors against the pickle path.

For tiny, microstream-cpu, gpt-cpu, a 10 M-parameter GPT and hamiltonian-llm-124m, builds
the model from its preset (random weights: timing does not depend on them), saves it with
``save_checkpoint`` under ``--out`` (default ``runs/bench-hotstart``, which must be on a disk,
not tmpfs, or no cold figure is possible), then runs what ``h2q-tui hotstart CKPT --repeats N
[--cold]`` runs (:func:`h2q_tui.hotstart.measure.measure`) warm and cold. Prints one table
(median of N, ms) and checks the issue's targets:

- in-process load → first token < 25 ms warm for the 10 M GPT;
- fresh process → first token < 2.5 s (warm, every model).

The machine line heads the output and the JSON (``--json``, default
``runs/bench-hotstart.json``) records it.

    python benchmarks/hotstart.py [--repeats 3] [--models tiny,gpt-10m] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from h2q_tui import checkpoints
from h2q_tui.checkpoints import page_cache as cold
from h2q_tui.checkpoints.layout import TOKENIZER
from h2q_tui.config import resolve
from h2q_tui.hotstart import measure as command
from h2q_tui.models import build_model, count_parameters
from h2q_tui.system import hardware

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # name: (preset, --set overrides)
    "tiny": ("tiny", []),
    "microstream-cpu": ("microstream-cpu", []),
    "gpt-cpu": ("gpt-cpu", []),
    "gpt-10m": ("gpt-cpu", ["model.d_model=384", "model.n_layers=6", "model.n_heads=6"]),
    "hamiltonian-llm-124m": ("hamiltonian-llm-124m", []),
}
TARGET_IN_PROCESS_S = ("gpt-10m", 0.025)
TARGET_FRESH_S = 2.5
SHOWN = ("info", "build", "read", "assign", "first_forward", "first_token")


def synthetic_tokenizer(vocab_size: int, path: Path) -> Path:
    """A word-level tokenizer.json with ``vocab_size`` made-up entries ("t0", "t1", ...).

    Only so that a random model with a GPT-2-sized vocabulary can decode what it samples
    (hamiltonian-llm-124m); the text means nothing, the timing is what counts.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(path))
    return path


def make_checkpoint(name: str, root: Path) -> tuple[Path, int]:
    """The model's run dir under ``root`` (written once, reused), and its parameter count."""
    preset, overrides = MODELS[name]
    config = resolve(preset, overrides)
    run = root / name
    torch.manual_seed(0)
    model = build_model(config.model)
    params = count_parameters(model)
    if not (run / "checkpoints" / "latest").is_file():
        extra = {}
        if config.model.vocab_size > 256:
            run.mkdir(parents=True, exist_ok=True)
            path = synthetic_tokenizer(config.model.vocab_size, run / "tokenizer.json")
            extra = {TOKENIZER: path}
        checkpoints.save_checkpoint(run, model, config, 1, f"bench-{name}", {}, extra_files=extra)
    return run, params


def row_cells(column: dict) -> list[str]:
    phases = column["phases"]
    cells = [f"{1000 * phases[p]['median']:.1f}" if p in phases else "—" for p in SHOWN]
    before = sum(
        phases[p]["median"]
        for p in ("start", "python", "import_torch", "import_h2q")
        if p in phases
    )
    cells.insert(0, f"{1000 * before:.0f}" if before else "—")
    cells.append(f"{1000 * column['total_s']['median']:.1f}")
    cells.append(f"{column['tokens_per_s']['median']:.0f}")
    return cells


def table(results: list[dict]) -> str:
    header = ["model", "params", "cache", "path", "start+imports", *SHOWN, "total", "tok/s"]
    rows = []
    for result in results:
        for cache, report in result["reports"].items():
            label = cache if report["cold"] or cache == "warm" else "cold n/a"
            for column in report["columns"].values():
                rows.append(
                    [
                        result["model"],
                        f"{result['params'] / 1e6:.1f}M",
                        label,
                        column["heading"],
                        *row_cells(column),
                    ]
                )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [
        "  ".join(
            h.ljust(w) if i < 4 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i < 4 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def targets(results: list[dict]) -> list[dict]:
    checks = []
    name, limit = TARGET_IN_PROCESS_S
    for result in results:
        warm = result["reports"]["warm"]["columns"]
        if result["model"] == name and "in_process" in warm:
            value = warm["in_process"]["total_s"]["median"]
            checks.append(
                {
                    "target": f"{name} in-process load → first token < {1000 * limit:.0f} ms warm",
                    "measured_s": value,
                    "met": value < limit,
                }
            )
        if "fresh" in warm:
            value = warm["fresh"]["total_s"]["median"]
            checks.append(
                {
                    "target": f"{result['model']} fresh process → first token < {TARGET_FRESH_S} s",
                    "measured_s": value,
                    "met": value < TARGET_FRESH_S,
                }
            )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-hotstart")
    parser.add_argument("--json", type=Path, default=REPO / "runs" / "bench-hotstart.json")
    parser.add_argument("--no-cold", action="store_true")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    memory_fs = cold.in_memory_filesystem(args.out)
    if memory_fs:
        print(f"note: {args.out} is {memory_fs}: cold figures will be unavailable")
    torch.set_num_threads(1)
    print(f"machine: {hardware.machine_line()}")
    print(f"median of {args.repeats} repeats, ms (tok/s: over 64 tokens after the first)\n")
    results = []
    started = time.perf_counter()
    for name in names:
        run, params = make_checkpoint(name, args.out)
        reports = {}
        for cache in ("warm",) if args.no_cold else ("warm", "cold"):
            request = command.Request(str(run), repeats=args.repeats, cold=cache == "cold")
            reports[cache] = command.measure(request)
            if cache == "cold" and not reports[cache]["cold"]:
                print(f"{name}: cold unavailable ({reports[cache]['cold_unavailable']})")
        results.append({"model": name, "params": params, "run": str(run), "reports": reports})
        print(f"{name}: measured ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr)
    print(table(results))
    checks = targets(results)
    print()
    for check in checks:
        mark = "met" if check["met"] else "NOT met"
        print(f"target {check['target']}: {1000 * check['measured_s']:.1f} ms, {mark}")
    document = {
        "benchmark": "hotstart",
        "machine": hardware.cpu_model(),
        "machine_line": hardware.machine_line(),
        "machine_info": hardware.machine_info(),
        "repeats": args.repeats,
        "results": results,
        "targets": checks,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
