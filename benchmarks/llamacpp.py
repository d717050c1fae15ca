"""h2q-tui beside llama.cpp on the same GPT, one thread: greedy tokens, decode speed, perplexity.

For one gpt checkpoint (default: gpt-cpu from ``runs/bench-cpu-presets/``, else the newest
``runs/bench-*/gpt-cpu``), in one run:

- ``h2q-tui export gguf`` writes it as F32, Q8_0 and Q4_0 GGUF files, and ``h2q-tui
  crystallize`` writes its int8 and int4-g32 folders (our side of Q8_0 and Q4_0), all under
  ``--out``;
- our side: each of the checkpoint, int8 and int4-g32 loaded by the one loader
  (``checkpoints.load_checkpoint``: a crystallized folder on its stored integers, as the
  commands run it) and decoded greedily by ``Generation`` (the step program), ``--tokens``
  new tokens from the same prompt, median tokens/s of ``--repeats`` runs; perplexity over
  the first ``--windows`` non-overlapping windows of ``--data``, the very windows ``h2q-tui
  eval --windows N`` scores;
- llama.cpp's side, through llama-cpp-python in a child process per file (a crash, such as
  the SIGILL its AMX weight repacking raised on one Intel VM, is reported and the file is
  run again without repacking): the same prompt bytes as token ids (token = byte), greedy
  by argmax of its logits, tokens/s measured the same way (prompt included, as our stats
  count it), and perplexity from its logits over the same windows; and whether llama.cpp's
  own tokenizer (the one llama-cli and llama-perplexity use) turns the scored text into the
  same byte ids and back;
- one more row exports our int8 folder itself (decoded to floats) as F32: llama.cpp running
  our int8 weights must agree with our int8 as the F32 file agrees with our fp32.

Speed is new tokens / seconds from the prompt to the last token on both sides; llama.cpp's
runs happen between the two halves of ours, so drifting machine load falls on both. The
*CPU-time ratio* divides tokens by the CPU seconds each side was given instead (our decoding
thread's, llama.cpp's process's): on a machine shared with other work it moves far less
than the wall-clock ratio, as time-slicing then falls out of both. When
llama_cpp is not importable the script says how to install it and writes ``"llama_cpp":
null`` (exit 0). The machine line heads the output and the JSON (``--json``).

    python benchmarks/llamacpp.py [CHECKPOINT] [--data FILE] [--tokens 112] [--windows 500]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinystories_valid_head.txt"
PROMPT = "Once upon a time"  # 16 bytes: with 112 new tokens, gpt-cpu's 128-byte window
# (row: the GGUF file, its --type, what it is exported from, what of ours it is compared with);
# the last row exports our int8 folder itself (decoded) as F32: llama.cpp must then agree
# with our int8 decoded to float (--dequantize) as it agrees with our fp32 on the first row
ROWS = (
    ("f32", "f32", "fp32", "fp32"),
    ("q8_0", "q8_0", "fp32", "int8"),
    ("q4_0", "q4_0", "fp32", "int4-g32"),
    ("int8→f32", "f32", "int8", "int8"),
    ("q4_0/mix", "q4_0", "fp32", "int4-g32+head:int8+cal"),  # ours: mixed, calibrated
)
DEQUANTIZED = {"int8→f32"}  # rows whose our side runs --dequantize (the same float weights)
METHODS = ("int8", "int4-g32", "int4-g32+head:int8+cal")  # crystallized for our side
CALIBRATION_BYTES = 65_536  # +cal methods: calibrated on the data's last bytes
INSTALL = (
    "llama_cpp is not importable: pip install llama-cpp-python (builds llama.cpp from "
    "source: tens of minutes on 2 cores); our side is measured alone"
)


def default_checkpoint() -> Path:
    """runs/bench-cpu-presets/gpt-cpu, else the newest runs/bench-*/gpt-cpu."""
    fixed = REPO / "runs" / "bench-cpu-presets" / "gpt-cpu"
    newest = sorted((REPO / "runs").glob("bench-*/gpt-cpu"), reverse=True)
    return fixed if fixed.is_dir() or not newest else newest[0]


def scored_bytes(data: bytes, context: int, windows: int) -> bytes:
    """The bytes ``h2q-tui eval --windows N`` reads: N windows of ``context`` and one more."""
    return data[: windows * context + 1]


def windows_of(data: bytes, context: int) -> list[bytes]:
    """Its non-overlapping windows of context + 1 bytes (the inputs and each next byte)."""
    count = (len(data) - 1) // context
    return [data[i * context : (i + 1) * context + 1] for i in range(count)]


# ------------------------------------------------------------------------------ llama.cpp
def llama_child(args: argparse.Namespace) -> int:
    """In the child process: one GGUF file measured by llama-cpp-python; JSON on stdout."""
    # only the child loads llama.cpp: a crash there is the parent's report, not its end
    import llama_cpp

    if args.no_repack:  # the CPU backend's weight repacking (AMX, ...) off, as llama-cli -nr
        defaults = llama_cpp.llama_cpp.llama_model_default_params

        def no_repack():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_cpp.llama_model_default_params = no_repack
    spec = json.loads(Path(args.child_spec).read_text())
    context, prompt = spec["context"], spec["prompt"]
    llm = llama_cpp.Llama(
        args.child, n_ctx=context, n_batch=context, n_ubatch=context, n_threads=1,
        n_threads_batch=1, logits_all=True, verbose=False,
    )  # fmt: skip
    greedy(llm, prompt, 8)  # warm-up
    runs = [greedy(llm, prompt, spec["tokens"]) for _ in range(spec["repeats"])]
    data = Path(spec["data"]).read_bytes()
    save = Path(spec["logprobs"]) / (Path(args.child).stem + ".npy")
    nats, scored = llama_cross_entropy(llm, windows_of(data, context), save)
    # llama.cpp's own tokenizer (what llama-cli and llama-perplexity use) on the same text
    ids = llm.tokenize(data, add_bos=False, special=False)
    print(
        json.dumps(
            {
                "tokens": runs[0][0],
                "tokens_per_s": statistics.median(spec["tokens"] / s for _, s, _ in runs),
                "tokens_per_cpu_s": statistics.median(spec["tokens"] / c for _, _, c in runs),
                "logprobs": str(save),
                "nats_per_byte": nats,
                "scored_bytes": scored,
                "tokenizer_is_bytes": ids == list(data) and llm.detokenize(ids) == data,
                "version": getattr(llama_cpp, "__version__", "?"),
            }
        )
    )
    return 0


def greedy(llm, prompt: list[int], tokens: int) -> tuple[list[int], float, float]:
    """(the greedy continuation, seconds from the prompt to the last token, CPU seconds of
    this process meanwhile) of llama.cpp."""
    llm.reset()
    started, cpu = time.perf_counter(), time.process_time()
    llm.eval(prompt)
    out: list[int] = []
    while True:
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        if len(out) == tokens:
            return out, time.perf_counter() - started, time.process_time() - cpu
        llm.eval([out[-1]])


def llama_cross_entropy(llm, windows: list[bytes], save: Path | None = None) -> tuple[float, int]:
    """Mean nats per byte of llama.cpp's logits over the windows, and the bytes scored;
    ``save``: every position's log-probabilities (positions, 256) as float32 .npy there."""
    total, scored, rows = 0.0, 0, []
    for window in windows:
        llm.reset()
        llm.eval(list(window[:-1]))
        logits = np.asarray(llm.scores[: len(window) - 1], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        targets = np.frombuffer(window[1:], dtype=np.uint8)
        total += float((log_z - logits[np.arange(len(targets)), targets]).sum())
        scored += len(targets)
        if save is not None:
            rows.append((logits - log_z[:, None]).astype(np.float32))
    if save is not None:
        np.save(save, np.concatenate(rows))
    return total / scored, scored


def run_llama(gguf: Path, spec_path: Path) -> dict:
    """Measure one GGUF in a child process; a child killed by a signal is run once more with
    weight repacking off, and both outcomes are recorded."""
    notes = []
    for no_repack in (False, True):
        command = [sys.executable, __file__, "--child", str(gguf), "--child-spec", str(spec_path)]
        done = subprocess.run(
            command + (["--no-repack"] if no_repack else []), capture_output=True, text=True
        )
        if done.returncode == 0:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            return {**result, "repack": not no_repack, "notes": notes}
        if done.returncode < 0:
            name = signal.Signals(-done.returncode).name
            notes.append(f"llama.cpp {'without' if no_repack else 'with'} repacking died: {name}")
            continue
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        notes.append(f"llama.cpp failed (exit {done.returncode}): {tail}")
        break
    return {"error": "; ".join(notes), "notes": notes}


# ------------------------------------------------------------------------------- our side
def ours(path: Path, prompt: str, tokens: int, repeats: int, data: bytes, beside, dequantize=False):
    """Our greedy decode speed and perplexity on ``data`` of one checkpoint, loaded as eval
    and generate load it, with ``beside()`` (llama.cpp's run) called between the first and
    the second half of our timed runs, so that both sides see the same machine load."""
    # the parent only: the llama.cpp child must not pay for torch
    import torch

    from h2q_tui import checkpoints
    from h2q_tui.generation.generate import Generation
    from h2q_tui.generation.sampling import SamplingConfig
    from h2q_tui.generation.text import Codec
    from h2q_tui.training.evaluate import heldout_cross_entropy

    loaded = checkpoints.load_checkpoint(path, dequantize=dequantize)
    model, context = loaded.model, loaded.info.config.model.context

    def decode(count: int) -> tuple[Generation, float]:
        """The finished run and its CPU seconds (this thread: what a busy machine leaves us)."""
        greedy_config = SamplingConfig(
            temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=count
        )
        run = Generation(model, Codec(), prompt, greedy_config)
        cpu = time.thread_time()
        list(run)
        return run, time.thread_time() - cpu

    decode(tokens)  # warm-up, a whole run: the process's first runs are slower (measured)
    timed = [decode(tokens) for _ in range(repeats // 2)]
    theirs = beside()
    timed += [decode(tokens) for _ in range(repeats - repeats // 2)]
    runs = [run for run, _ in timed]
    heldout = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with torch.no_grad():
        nats = heldout_cross_entropy(model, heldout, context, torch.device("cpu"), batch=32)
        logprobs = log_probabilities(model, data, context)
    mine = {
        "tokens": list(runs[0].tokens),
        "tokens_per_s": statistics.median(r.stats.tokens_per_s for r in runs),
        "tokens_per_cpu_s": statistics.median(tokens / cpu for _, cpu in timed),
        "nats_per_byte": nats,
        "scored_bytes": (len(data) - 1) // context * context,
        "what": loaded.info.describe(),
        "logprobs": logprobs,
    }
    return mine, theirs


def log_probabilities(model, data: bytes, context: int):
    """Our log-probabilities (positions, 256) over the windows llama.cpp scores."""
    import torch

    inputs = torch.tensor([list(w[:-1]) for w in windows_of(data, context)])
    rows = []
    for batch in inputs.split(32):
        logits = model(batch)[0]
        rows.append(torch.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1]))
    return torch.cat(rows).numpy()


def divergence(base: np.ndarray, other: np.ndarray) -> dict:
    """llama-perplexity --kl-divergence's figures of ``other`` against ``base`` (log-probs)."""
    kld = (np.exp(base) * (base - other)).sum(axis=1)
    return {
        "kld_mean": float(kld.mean()), "kld_median": float(np.median(kld)),
        "kld_max": float(kld.max()),
        "same_top_p": float((base.argmax(axis=1) == other.argmax(axis=1)).mean()),
    }  # fmt: skip


def prepare(checkpoint: Path, data: Path, out: Path) -> dict[str, tuple[Path, Path]]:
    """Export the three GGUF files and crystallize int8 and int4-g32 under ``out``:
    {row label: (our checkpoint folder or file, the GGUF file)}."""
    # the parent only (torch): see ours()
    from h2q_tui.cli import main as cli
    from h2q_tui.crystal.folders import slug
    from h2q_tui.export.gguf_export import export_gguf

    out.mkdir(parents=True, exist_ok=True)
    crystal = out / "crystal"
    methods = ",".join(METHODS)
    args = ["crystallize", str(checkpoint), "--method", methods, "--out", str(crystal)]
    if any(m.endswith("+cal") for m in METHODS):
        args += ["--calibrate", str(min(CALIBRATION_BYTES, data.stat().st_size // 4))]
    if cli.main([*args, "--data", str(data), "--windows", "1", "--json", str(out / "c.json")]):
        raise SystemExit("crystallize failed (its error is above)")
    files = {}
    ours_of = {"fp32": checkpoint, **{method: crystal / slug(method) for method in METHODS}}
    for label, kind, source, method in ROWS:
        name = f"model-{kind}.gguf" if source == "fp32" else f"{source}-{kind}.gguf"
        gguf = export_gguf(ours_of[source], out / name, kind).path
        files[label] = (ours_of[method], gguf)
    return files


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two greedy continuations share before they first differ."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def disk_bytes(path: Path) -> int:
    """Bytes of a GGUF file, or of a checkpoint's weights file."""
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.exists() and path.is_dir():  # a run dir: its latest checkpoint
        # the parent only (torch): see ours()
        from h2q_tui import checkpoints

        weights = checkpoints.read_info(path).weights
    return weights.stat().st_size


def row(kind: str, method: str, mine: dict, theirs: dict | None, files) -> dict:
    """One line of the comparison: our figures, llama.cpp's, their ratio and agreement."""
    ours_path, gguf = files[kind]
    line = {
        "gguf_type": kind, "ours": method, "ours_bytes": disk_bytes(ours_path),
        "gguf_bytes": gguf.stat().st_size, "ours_tokens_per_s": mine["tokens_per_s"],
        "ours_perplexity": math.exp(mine["nats_per_byte"]), "ours_what": mine["what"],
    }  # fmt: skip
    if theirs is None or "error" in theirs:
        return {**line, "llama_cpp": theirs}
    return {
        **line,
        "llama_tokens_per_s": theirs["tokens_per_s"],
        "speed_ratio": mine["tokens_per_s"] / theirs["tokens_per_s"],
        "llama_tokens_per_cpu_s": theirs["tokens_per_cpu_s"],
        "ours_tokens_per_cpu_s": mine["tokens_per_cpu_s"],
        "cpu_speed_ratio": mine["tokens_per_cpu_s"] / theirs["tokens_per_cpu_s"],
        "llama_perplexity": math.exp(theirs["nats_per_byte"]),
        "same_greedy_tokens": same_prefix(mine["tokens"], theirs["tokens"]),
        "llama_tokenizer_is_bytes": theirs["tokenizer_is_bytes"],
        "greedy_tokens": len(mine["tokens"]),
        "llama_repack": theirs["repack"],
        "llama_version": theirs["version"],
        "notes": theirs["notes"],
    }


def table(rows: list[dict]) -> str:
    """The side-by-side table, one line per bit width."""
    head = (
        f"{'llama.cpp':>9} {'ours':>9} | {'ours tok/s':>10} {'llama tok/s':>11} {'ratio':>6} "
        f"{'CPU-time ratio':>14} | "
        f"{'ours ppl':>9} {'llama ppl':>9} | {'same greedy':>11} | {'ours MB':>7} {'gguf MB':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        llama = "llama_tokens_per_s" in r
        lines.append(
            f"{r['gguf_type']:>9} {r['ours']:>9} | {r['ours_tokens_per_s']:10.1f} "
            + (f"{r['llama_tokens_per_s']:11.1f} {r['speed_ratio']:5.2f}x {r['cpu_speed_ratio']:13.2f}x | " if llama else f"{'-':>11} {'-':>6} {'-':>14} | ")
            + f"{r['ours_perplexity']:9.4f} "
            + (f"{r['llama_perplexity']:9.4f} | " if llama else f"{'-':>9} | ")
            + (f"{r['same_greedy_tokens']:>5}/{r['greedy_tokens']:<5} | " if llama else f"{'-':>11} | ")
            + f"{r['ours_bytes'] / 1e6:7.2f} {r['gguf_bytes'] / 1e6:7.2f}"
        )  # fmt: skip
    return "\n".join(lines)


def divergence_table(rows: list[dict]) -> str:
    """KLD against our fp32 model of each side, llama-perplexity --kl-divergence's figures."""
    head = (f"\nagainst our fp32 model: {'llama.cpp':>9} {'ours':>24} | {'KLD mean':>9} "
            f"{'median':>9} {'max':>7} {'top p %':>7} | llama.cpp: {'KLD mean':>9} "
            f"{'median':>9} {'max':>7} {'top p %':>7}")  # fmt: skip
    lines = [head]
    for r in rows:
        cells = []
        for side in ("ours_divergence", "llama_divergence"):
            d = r.get(side)
            cells.append(
                f"{d['kld_mean']:9.6f} {d['kld_median']:9.6f} {d['kld_max']:7.4f} "
                f"{100 * d['same_top_p']:7.2f}"
                if d
                else f"{'-':>9} {'-':>9} {'-':>7} {'-':>7}"
            )
        lines.append(f"{'':>23} {r['gguf_type']:>9} {r['ours']:>24} | {cells[0]} | "
                     f"{'':>10} {cells[1]}")  # fmt: skip
    return "\n".join(lines)


def print_report(report: dict, windows: int) -> None:
    """The heading line, the table and each row's notes."""
    print(
        f"\n1 thread, greedy, {report['new_tokens']} new tokens from {report['prompt']!r}; "
        f"perplexity over {report['scored_bytes']:,} bytes of {Path(report['data']).name} "
        f"(h2q-tui eval --windows {windows})"
    )
    print(table(report["rows"]))
    print(divergence_table(report["rows"]))
    for r in report["rows"]:
        for note in r.get("notes") or []:
            print(f"note ({r['gguf_type']}): {note}")
        if "llama_tokenizer_is_bytes" in r:
            same = "yes" if r["llama_tokenizer_is_bytes"] else "NO"
            print(
                f"llama.cpp's tokenizer: token = byte on the scored text ({r['gguf_type']}): {same}"
            )
        if isinstance(r.get("llama_cpp"), dict):
            print(f"llama.cpp {r['gguf_type']}: {r['llama_cpp']['error']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DATA, help="held-out text (eval's bytes)")
    parser.add_argument("--tokens", type=int, default=112, help="new tokens per greedy run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (median)")
    parser.add_argument("--windows", type=int, default=500, help="perplexity windows")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-llamacpp")
    parser.add_argument("--json", type=Path, default=None, help="default: OUT/llamacpp.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: the llama.cpp process
    parser.add_argument("--child-spec", help=argparse.SUPPRESS)
    parser.add_argument("--no-repack", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return llama_child(args)
    # the parent only (torch): see ours()
    import torch

    from h2q_tui import checkpoints
    from h2q_tui.system import hardware

    print(hardware.machine_line())
    checkpoint = args.checkpoint or default_checkpoint()
    for path, what in ((checkpoint, "checkpoint"), (args.data, "data file")):
        if not path.exists():
            print(f"skipped: {what} {path} is absent (benchmarks/cpu_presets.py writes gpt-cpu)")
            return 0
    torch.set_num_threads(1)
    context = checkpoints.read_info(checkpoint).config.model.context
    if len(args.prompt.encode()) + args.tokens > context:
        print(
            f"skipped: the prompt and --tokens {args.tokens} do not fit the {context}-byte context"
        )
        return 0
    data = scored_bytes(args.data.read_bytes(), context, args.windows)
    files = prepare(checkpoint, args.data, args.out)
    available = importlib.util.find_spec("llama_cpp") is not None
    if not available:
        print(INSTALL)
    spec_path, data_path = args.out / "child.json", args.out / "scored.bin"
    data_path.write_bytes(data)
    prompt = list(args.prompt.encode())
    spec = {"context": context, "prompt": prompt, "tokens": args.tokens,
            "repeats": args.repeats, "data": str(data_path), "logprobs": str(args.out)}  # fmt: skip
    spec_path.write_text(json.dumps(spec))
    rows, base = [], None
    for label, _, _, method in ROWS:
        print(f"measuring {method} beside llama.cpp {label} ...", file=sys.stderr)
        ours_path, gguf = files[label]

        def beside(gguf=gguf):
            return run_llama(gguf, spec_path) if available else None

        mine, theirs = ours(
            ours_path, args.prompt, args.tokens, args.repeats, data, beside, label in DEQUANTIZED
        )
        if not rows:  # the first row is our fp32 model: what every KLD is measured against
            base = mine["logprobs"]
        rows.append(row(label, method, mine, theirs, files))
        rows[-1]["ours_divergence"] = divergence(base, mine.pop("logprobs"))
        if theirs and "logprobs" in theirs:
            rows[-1]["llama_divergence"] = divergence(base, np.load(theirs["logprobs"]))
    versions = [r["llama_version"] for r in rows if "llama_version" in r]
    report = {
        "machine": hardware.machine_info(), "checkpoint": str(checkpoint), "data": str(args.data),
        "scored_bytes": (len(data) - 1) // context * context, "prompt": args.prompt,
        "new_tokens": args.tokens, "threads": 1,
        "llama_cpp": versions[0] if versions else ("failed" if available else None),
        "rows": rows,
    }  # fmt: skip
    print_report(report, args.windows)
    path = args.json or args.out / "llamacpp.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
