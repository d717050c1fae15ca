"""Crystallized models on their integers: decode speed, memory and hot start, side by side.

For one checkpoint and each method (default int8 and int4-g32; the folders are crystallized
first when missing), in one process and one run, interleaved over the repeats:
- **decode tokens/s**: greedy batch-1 decoding through the step program (the path
  ``generate``, ``serve`` and the Generate pane take) of the original fp32 model, of each
  crystallized folder on its integers (the default) and decoded to float (``--dequantize``).
  For the pre-LN families (GPT, QRLM) each new token is one C call (column *step* "C");
  rows ending "torch step" run the same models' tokens through the torch step instead;
- **per phase**: separate timed passes (median of 3) split a token's time into its matrix products (the
  C step adds up its products' time itself; the torch step's ``linear`` calls are timed)
  and the rest (attention, norms, GELU, sampling's argmax, Python);
- **RSS** and **hot start**, each in fresh processes: the resident memory the model adds
  (RSS after its first token minus before the load, imports done: every weight has been read
  once) beside its bytes on disk, and the time from interpreter start to the first generated
  token (median of ``--starts``).
The integer kernels are built before anything is timed (a second, once per machine).

    python benchmarks/quantized.py CHECKPOINT [--methods int8,int4-g32] [--tokens 112]
        [--repeats 5] [--starts 3] [--threads 1] [--json runs/bench-quantized.json]
    python benchmarks/quantized.py --preset gpt --set model.d_model=768 model.n_layers=12 ...
    python benchmarks/quantized.py --kernels   # one product per shape: ours against torch's

``--preset`` (with ``--set``) times a model of random weights saved under runs/ instead: speed
and memory do not depend on the weights' values, and a model larger than the caches shows
the memory-bound case (every weight streamed once a token).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PROMPT = b"Once upon a time"  # 16 bytes: with 112 new tokens, gpt-cpu's whole context


def step_program_of(path: str, dequantize: bool):
    """(model, its step program), every HamLinear frozen as generation freezes it."""
    from h2q_kernels.hamiltonian import frozen_weights

    from h2q_tui import checkpoints
    from h2q_tui.generation.decoder import step_program

    model = checkpoints.load_checkpoint(path, dequantize=dequantize).model
    frozen = frozen_weights(model)
    frozen.__enter__()  # for the benchmark's life: the step program reads the frozen W
    program = step_program(model)
    if program is None:
        raise SystemExit(f"{path}: this model has no step program (cannot be benchmarked)")
    return model, program


def decode(program, tokens: int, torch_step: bool = False, on_start=None) -> float:
    """Seconds for ``tokens`` greedy tokens after the prompt's prefill; ``torch_step``: the
    pre-LN families' tokens through the torch step instead of their one C call; ``on_start``
    is called when the timing starts (after the prefill)."""
    from h2q_tui.generation import steps_transformer

    ids = list(PROMPT)
    fused, steps_transformer.FUSED = steps_transformer.FUSED, not torch_step
    try:
        with torch.inference_mode():
            logits, _ = program.run(ids, 0)
            if on_start is not None:
                on_start()
            start = time.perf_counter()
            for position in range(len(ids), len(ids) + tokens):
                logits, _ = program.run([int(logits.argmax())], position)
            return time.perf_counter() - start
    finally:
        steps_transformer.FUSED = fused


def products_share(program, tokens: int, torch_step: bool, passes: int = 3) -> tuple[float, float]:
    """(ms a token in matrix products, ms a token in the rest), the medians of ``passes``
    timed passes (one pass is a noisy sample)."""
    splits = [one_split(program, tokens, torch_step) for _ in range(passes)]
    return statistics.median(p for p, _ in splits), statistics.median(r for _, r in splits)


def one_split(program, tokens: int, torch_step: bool) -> tuple[float, float]:
    """(ms a token in matrix products, ms a token in the rest), from one timed pass: the C
    step adds up its products' time itself; the torch step's ``linear`` calls are timed."""
    from h2q_tui.generation import steps_hamiltonian, steps_transformer

    fused = program_fused(program)
    if fused is not None and not torch_step:
        try:
            total = decode(program, tokens, on_start=lambda: fused.time_products(True))
            spent = fused.product_seconds
        finally:
            fused.time_products(False)
        return 1e3 * spent / tokens, 1e3 * (total - spent) / tokens
    spent = [0.0]
    modules = (steps_transformer, steps_hamiltonian)
    originals = [module.linear for module in modules]

    def timed(x, weight, bias=None, _linear=originals[0]):
        start = time.perf_counter()
        out = _linear(x, weight, bias)
        spent[0] += time.perf_counter() - start
        return out

    for module in modules:
        module.linear = timed
    try:  # the prefill's products are not counted: the count restarts with the timing
        total = decode(program, tokens, torch_step, on_start=lambda: spent.__setitem__(0, 0.0))
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.linear = original
    return 1e3 * spent[0] / tokens, 1e3 * (total - spent[0]) / tokens


def child(path: str, dequantize: bool) -> None:
    """In a fresh process: RSS added by the load, and seconds from start to the first token."""
    import psutil

    from h2q_tui import checkpoints  # noqa: F401 - imports before the baseline RSS

    process = psutil.Process()
    before = process.memory_info().rss
    model, program = step_program_of(path, dequantize)
    with torch.inference_mode():
        logits, _ = program.run(list(PROMPT), 0)
        int(logits.argmax())
    first = time.time() - process.create_time()
    used = process.memory_info().rss  # after a token: every weight has been read once
    print(json.dumps({"rss_added": used - before, "rss": used, "first_token_s": first}))


def fresh(path: str, dequantize: bool, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", path, "--threads", str(threads)]
    if dequantize:
        command.append("--dequantize")
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'kernels'}"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode:
        raise SystemExit(f"fresh process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folders(checkpoint: Path, methods: list[str]) -> dict[str, Path]:
    """Each method's crystallized folder beside the checkpoint, crystallized when missing."""
    from h2q_tui import checkpoints
    from h2q_tui.cli import main as cli
    from h2q_tui.crystal.folders import default_out, slug

    out = default_out(checkpoints.read_info(checkpoint).weights)
    missing = [m for m in methods if not (out / slug(m) / "model.safetensors").is_file()]
    if missing:
        code = cli.main(["crystallize", str(checkpoint), "--method", ",".join(missing),
                         "--windows", "8", "--out", str(out)])  # fmt: skip
        if code:
            raise SystemExit(f"crystallize failed (exit {code})")
    return {method: out / slug(method) for method in methods}


def random_checkpoint(preset: str, overrides: list[str]) -> Path:
    """A checkpoint of random weights for ``preset`` + ``overrides`` under runs/ (reused)."""
    from h2q_tui.checkpoints import save_checkpoint
    from h2q_tui.config import resolve
    from h2q_tui.models import build_model

    config = resolve(preset, overrides)
    name = "-".join([preset, *(o.split(".")[-1].replace("=", "") for o in overrides)])
    run = REPO / "runs" / f"bench-quantized-{name}"
    if not (run / "checkpoints").is_dir():
        torch.manual_seed(0)
        save_checkpoint(run, build_model(config.model), config, 0, f"random-{name}", {})
    return run


def variants(checkpoint: Path, methods: list[str]) -> list[tuple[str, str, bool, bool]]:
    """(label, path, dequantize, torch step) of the original (also through the torch step
    where its family has the one-call C step) and each method both ways."""
    rows = [("fp32 (original)", str(checkpoint), False, False)]
    for method, folder in folders(checkpoint, methods).items():
        rows += [(f"{method} on integers", str(folder), False, False),
                 (f"{method} decoded to float", str(folder), True, False)]  # fmt: skip
    return rows


def measure(args: argparse.Namespace) -> list[dict]:
    rows = variants(args.checkpoint, args.methods)
    programs = {label: step_program_of(path, deq) for label, path, deq, _ in rows}
    if program_fused(programs[rows[0][0]][1]) is not None:
        for label, path, deq, _ in [row for row in rows if not row[2]]:
            torch_label = f"{label}, torch step"
            rows.append((torch_label, path, deq, True))
            programs[torch_label] = programs[label]
    context = programs[rows[0][0]][1].context
    if len(PROMPT) + args.tokens > context:
        raise SystemExit(
            f"--tokens {args.tokens}: the prompt and the tokens exceed the context {context}"
        )
    speeds: dict[str, list[float]] = {label: [] for label, *_ in rows}
    for _ in range(args.repeats):  # interleaved: the machine's speed drifts
        for label, _, _, torch_step in rows:
            seconds = decode(programs[label][1], args.tokens, torch_step)
            speeds[label].append(args.tokens / seconds)
    results = []
    for label, path, deq, torch_step in rows:
        model, program = programs[label]
        products_ms, rest_ms = products_share(program, args.tokens, torch_step)
        starts = [] if torch_step else [fresh(path, deq, args.threads) for _ in range(args.starts)]
        results.append(
            {
                "variant": label,
                "path": path,
                "account": getattr(model, "crystal_weights", "") or "fp32",
                "step": "torch" if torch_step or program_fused(program) is None else "C",
                "tokens_per_s": statistics.median(speeds[label]),
                "products_ms": products_ms,
                "rest_ms": rest_ms,
                "disk_bytes": model_bytes(Path(path)),
                "rss_added_bytes": median_or_none(s["rss_added"] for s in starts),
                "first_token_s": median_or_none(s["first_token_s"] for s in starts),
            }
        )
    return results


def program_fused(program):
    """The program's one-call C step, or None (another family, or the kernels absent)."""
    return getattr(program, "fused", None)


def median_or_none(values) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def model_bytes(path: Path) -> int:
    from h2q_tui import checkpoints
    from h2q_tui.codecs.stored import model_files_bytes

    return model_files_bytes(checkpoints.read_info(path).weights.parent)


def table(results: list[dict]) -> str:
    base = results[0]["tokens_per_s"]
    lines = [
        f"{'variant':<36} {'step':>5} {'tok/s':>7} {'× fp32':>7} {'products ms':>11} "
        f"{'rest ms':>8} {'disk MB':>8} {'RSS+ MB':>8} {'1st token s':>11}"
    ]
    for r in results:
        fresh = r["rss_added_bytes"] is not None
        rss = f"{r['rss_added_bytes'] / 1e6:>8.1f}" if fresh else f"{'':>8}"
        first = f"{r['first_token_s']:>11.2f}" if fresh else f"{'':>11}"
        lines.append(
            f"{r['variant']:<36} {r['step']:>5} {r['tokens_per_s']:>7.0f} "
            f"{r['tokens_per_s'] / base:>6.2f}× {r['products_ms']:>11.3f} {r['rest_ms']:>8.3f} "
            f"{r['disk_bytes'] / 1e6:>8.2f} {rss} {first}"
        )
    return "\n".join(lines)


KERNEL_SHAPES = [(576, 192), (768, 192), (192, 768), (2304, 768), (3072, 768), (768, 3072)]


def kernel_rows(repeats: int) -> list[dict]:
    """µs per batch-1 product (medians, interleaved) for each (N, K): fp32 F.linear, ours from
    Python (a tensor in, a tensor out), the one-row products of the C step called alone (the
    same arithmetic, its scratch allocated per call), and the CPU kernels PyTorch has for the
    same job, where this torch has them."""
    import torch.nn.functional as F
    from h2q_kernels.quantized import step

    from h2q_tui.codecs import packed

    rows = []
    for outputs, width in KERNEL_SHAPES:
        x, weight = torch.randn(1, width), torch.randn(outputs, width) * 0.05
        int8, int4 = packed.quantize(weight, "int8"), packed.quantize(weight, "int4", 32)
        row, dense = x[0], step.dense(weight)
        int8_matrix, int4_matrix = int8.matrix(), int4.matrix()
        calls = {
            "fp32 F.linear": lambda x=x, w=weight: F.linear(x, w),
            "ours int8": lambda x=x, w=int8: w.linear(x),
            "ours int4-g32": lambda x=x, w=int4: w.linear(x),
            "C step fp32": lambda r=row, m=dense: step.matrix_product(m, r),
            "C step int8": lambda r=row, m=int8_matrix: step.matrix_product(m, r),
            "C step int4-g32": lambda r=row, m=int4_matrix: step.matrix_product(m, r),
            **torch_kernels(x, weight),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                times[name].append(per_call_us(call))
        rows.append({"shape": [outputs, width],
                     **{name: statistics.median(v) for name, v in times.items()}})  # fmt: skip
    return rows


def torch_kernels(x: torch.Tensor, weight: torch.Tensor) -> dict:
    """PyTorch's own weight-only int8 and int4 CPU products, and fbgemm's dynamic int8 linear."""
    import warnings

    calls = {}
    q = torch.round(weight / (weight.abs().amax(1, keepdim=True) / 127)).to(torch.int8)
    scale = weight.abs().amax(1) / 127
    if hasattr(torch, "_weight_int8pack_mm"):
        calls["torch int8pack (fp32 x)"] = lambda: torch._weight_int8pack_mm(x, q, scale)
    ops = torch.ops.aten
    if hasattr(ops, "_convert_weight_to_int4pack_for_cpu") and weight.shape[1] % 32 == 0:
        codes = torch.randint(0, 16, weight.shape, dtype=torch.int32)
        packed4 = ops._convert_weight_to_int4pack_for_cpu(codes, 2)
        zeros = torch.rand(weight.shape[1] // 32, weight.shape[0], 2, dtype=torch.bfloat16)
        x16 = x.bfloat16()
        calls["torch int4pack (bf16 x)"] = lambda: ops._weight_int4pack_mm_for_cpu(
            x16, packed4, 32, zeros
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated, still shipped
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        quant = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
        prepacked = torch.ops.quantized.linear_prepack(quant, None)
    calls["fbgemm dynamic int8"] = lambda: torch.ops.quantized.linear_dynamic(x, prepacked)
    return calls


def per_call_us(call, calls: int = 200) -> float:
    call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return 1e6 * (time.perf_counter() - start) / calls


def kernel_table(rows: list[dict]) -> str:
    names = [k for k in rows[0] if k != "shape"]
    lines = [f"{'N×K':<10}" + "".join(f"{n:>24}" for n in names)]
    for row in rows:
        shape = "×".join(map(str, row["shape"]))
        lines.append(f"{shape:<10}" + "".join(f"{row[n]:>21.1f} µs" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, nargs="?")
    parser.add_argument("--methods", default="int8,int4-g32", type=lambda s: s.split(","))
    parser.add_argument("--tokens", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=REPO / "runs" / "bench-quantized.json")
    parser.add_argument("--preset", help="time a model of random weights of this preset")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for --preset")
    parser.add_argument(
        "--kernels", action="store_true", help="time single products per shape, ours and torch's"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dequantize", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.dequantize)
        return 0
    if args.kernels:
        return kernels_main(args)
    if args.preset:
        args.checkpoint = random_checkpoint(args.preset, args.set)
    if args.checkpoint is None:
        parser.error("give a CHECKPOINT (a run dir or checkpoint folder) or --preset")
    from h2q_kernels import quantized

    from h2q_tui.system import hardware

    print(f"machine: {hardware.machine_line()}")
    print(f"integer kernels: {quantized.library().reason}; {args.threads} thread(s)")
    load_before = os.getloadavg()[0]
    results = measure(args)
    print(table(results))
    load = (load_before, os.getloadavg()[0])
    print(
        f"load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after, on {os.cpu_count()} cores"
    )
    document = {
        "machine": hardware.cpu_model(),
        "machine_line": hardware.machine_line(),
        "machine_info": hardware.machine_info(),
        "kernels": quantized.library().reason,
        "threads": args.threads,
        "load_average": load,
        "tokens": args.tokens,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


def kernels_main(args: argparse.Namespace) -> int:
    from h2q_kernels import quantized

    from h2q_tui.system import hardware

    print(f"machine: {hardware.machine_line()}")
    print(f"integer kernels: {quantized.library().reason}; {args.threads} thread(s)")
    load = [os.getloadavg()[0]]
    rows = kernel_rows(args.repeats)
    load.append(os.getloadavg()[0])
    print(kernel_table(rows))
    print(f"load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after")
    document = {"machine": hardware.cpu_model(), "machine_line": hardware.machine_line(),
                "threads": args.threads, "load_average": load, "kernels": rows}  # fmt: skip
    path = args.json.with_name(args.json.stem + "-kernels.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
