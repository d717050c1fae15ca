"""Thread counts side by side, on the machine as it is and beside a CPU hog we start.

Training (``--preset``, ``--steps`` steps of the Trainer, tokens/s over steps 2..N) and
batch-1 decoding (``--tokens`` new tokens with the KV cache, tokens/s, the median of three
generations in the process) in four settings:

- ``1``: one thread;
- ``N spin``: every usable core with ``OMP_WAIT_POLICY`` unset (libgomp's default: idle
  workers spin a while before they sleep), as h2q-tui ran before it set the policy;
- ``N passive``: every usable core with ``OMP_WAIT_POLICY=PASSIVE``;
- ``auto``: what h2q-tui chooses (``train.threads = 0``: steps timed at 1 and N, and the
  decoding rule), under the policy its entry points set.

Each setting runs in a fresh process (libgomp reads the policy when torch loads it), in a
rotated order over ``--trials``; medians are reported. The loaded condition starts one
bounded busy loop per usable core for its duration (ended at the end, Ctrl-C included).
The table gives tokens/s and auto against the best fixed setting; the JSON names the
machine, torch and the load average before each condition.

    python benchmarks/threads.py [--preset gpt-cpu] [--steps 40] [--tokens 128] [--trials 3]
    python benchmarks/threads.py --quick      # a smoke run of a few seconds (tests use it)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("1", "N spin", "N passive", "auto")
DECODE_REPEATS = 3
HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- one setting
def train_rate(preset: str, steps: int, threads: int, run_dir: Path, extra: list[str]) -> dict:
    """tokens/s of ``steps`` Trainer steps (steps 2..N), and the threads it ended on."""
    from h2q_tui.config import resolve
    from h2q_tui.data.sources import default_corpus_bytes, load_corpus
    from h2q_tui.training import events
    from h2q_tui.training.trainer import Trainer

    corpus_file = run_dir / "corpus.txt"
    corpus_file.write_bytes(default_corpus_bytes()[:200_000])
    overrides = [f"train.max_steps={steps}", f"train.threads={threads}", *extra]
    overrides += ["eval.heldout_interval=0", "log.sample_interval=0", "log.checkpoint_interval=0"]
    config = resolve(preset, overrides)
    log: list = []
    trainer = Trainer(
        config, load_corpus(str(corpus_file), heldout_fraction=0.1), run_dir / "run", log.append
    )
    trainer.run()
    steps_done = [e for e in log if isinstance(e, events.StepCompleted)]
    first, last = steps_done[0], steps_done[-1]
    rate = (last.tokens - first.tokens) / max(last.time - first.time, 1e-9)
    chosen = [e.reason for e in log if isinstance(e, events.ThreadsChosen)]
    return {"tokens_per_s": rate, "threads": trainer.threads, "reason": chosen[-1:] or [""]}


def decode_rate(preset: str, tokens: int, threads: int | None) -> dict:
    """tokens/s of one batch-1 generation (KV cache) of an untrained model of the preset."""
    import torch

    from h2q_tui.config import resolve
    from h2q_tui.generation.generate import Generation, use_decoding_threads
    from h2q_tui.generation.sampling import SamplingConfig
    from h2q_tui.generation.text import Codec
    from h2q_tui.models import build_model

    choice = use_decoding_threads(threads)
    torch.manual_seed(0)
    model = build_model(resolve(preset).model).eval()
    sampling = SamplingConfig(max_new_tokens=tokens, seed=0)
    list(Generation(model, Codec(), "Once upon a time", SamplingConfig(max_new_tokens=4)))
    rates = []
    for _ in range(DECODE_REPEATS):  # the median of a few generations: one is a noisy sample
        started = time.perf_counter()
        produced = len(list(Generation(model, Codec(), "Once upon a time", sampling)))
        rates.append(produced / max(time.perf_counter() - started, 1e-9))
    return {"tokens_per_s": statistics.median(rates), "threads": choice.threads}


def run_one(args: argparse.Namespace) -> None:
    """The child: one setting, printed as one JSON line."""
    if args.one == "auto":
        from h2q_tui.system.openmp import prefer_passive_waiting

        prefer_passive_waiting()  # as the entry points do, before torch loads
    threads = {"1": 1, "auto": 0}.get(args.one, usable_cores())
    with tempfile.TemporaryDirectory(prefix="h2q-threads-") as folder:
        training = train_rate(args.preset, args.steps, threads, Path(folder), args.set)
    decoding = decode_rate(args.preset, args.tokens, threads or None)
    from h2q_tui.system.openmp import wait_policy

    line = {"training": training, "decoding": decoding, "policy": wait_policy().value}
    print(json.dumps(line), flush=True)


def in_fresh_process(setting: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if setting in ("1", "N passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [sys.executable, __file__, "--one", setting, "--preset", args.preset]
    command += ["--steps", str(args.steps), "--tokens", str(args.tokens)]
    for override in args.set:
        command += ["--set", override]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"setting {setting!r} failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the hog
class CpuHog:
    """One busy-loop process per core, each ending by itself after ``seconds`` at the latest,
    and ended on leaving the ``with`` block (an error or Ctrl-C included)."""

    def __init__(self, cores: int, seconds: float) -> None:
        self.cores, self.seconds = cores, seconds
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> CpuHog:
        code = HOG.format(seconds=self.seconds)
        for _ in range(self.cores):
            self.processes.append(subprocess.Popen([sys.executable, "-c", code]))
        time.sleep(0.5)  # let the scheduler see them
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()

    def alive(self) -> int:
        return sum(process.poll() is None for process in self.processes)


# ----------------------------------------------------------------------------- the table
def rotated(items: tuple[str, ...], trial: int) -> list[str]:
    shift = trial % len(items)
    return list(items[shift:] + items[:shift])


def measure(args: argparse.Namespace) -> dict:
    """Every setting ``trials`` times in fresh processes: medians per setting and what."""
    settings = tuple(s for s in SETTINGS if s in args.settings)
    samples: dict[str, list[dict]] = {s: [] for s in settings}
    for trial in range(args.trials):
        for setting in rotated(settings, trial):
            samples[setting].append(in_fresh_process(setting, args))
    rows = {}
    for setting, runs in samples.items():
        rows[setting] = {
            "training_tokens_per_s": statistics.median(r["training"]["tokens_per_s"] for r in runs),
            "decoding_tokens_per_s": statistics.median(r["decoding"]["tokens_per_s"] for r in runs),
            "training_threads": [r["training"]["threads"] for r in runs],
            "training_reasons": [r["training"]["reason"][0] for r in runs],
            "decoding_threads": runs[0]["decoding"]["threads"],
            "policy": runs[0]["policy"],
        }
    fixed = [s for s in settings if s != "auto"]
    for what in ("training", "decoding"):
        key = f"{what}_tokens_per_s"
        if "auto" in rows and fixed:
            best = max(rows[s][key] for s in fixed)
            rows["auto"][f"{what}_vs_best_fixed"] = rows["auto"][key] / best
    return rows


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def print_table(condition: str, load: list[float], rows: dict, cores: int) -> None:
    print(f"\n{condition} (load average before: {' '.join(map(str, load)) or 'n/a'}), N = {cores}")
    print("| setting | training tok/s | decoding tok/s | training threads | OMP_WAIT_POLICY |")
    print("|---|---:|---:|---|---|")
    for setting, r in rows.items():
        print(
            f"| {setting} | {r['training_tokens_per_s']:,.0f} | {r['decoding_tokens_per_s']:,.0f} "
            f"| {', '.join(map(str, r['training_threads']))} | {r['policy'] or 'unset'} |"
        )
    auto = rows.get("auto", {})
    for reason in auto.get("training_reasons", []):
        print(f"auto training: {reason or 'no choice made within the run'}")
    if "training_vs_best_fixed" in auto:
        print(
            f"auto / best fixed: training {auto['training_vs_best_fixed']:.2f}x, "
            f"decoding {auto['decoding_vs_best_fixed']:.2f}x"
        )


def machine() -> dict:
    import torch

    from h2q_tui.system import hardware

    return {**hardware.machine_info(), "line": hardware.machine_line(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="gpt-cpu")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per decode")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="a config override")
    parser.add_argument(
        "--conditions", nargs="+", default=["quiet", "loaded"], choices=["quiet", "loaded"]
    )
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--quick", action="store_true", help="tiny preset, a few steps, 1 trial")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-threads.json")
    parser.add_argument("--one", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.steps, args.tokens, args.trials = "tiny", 10, 16, 1
    if args.one:
        return run_one(args)
    cores = usable_cores()
    document = {"machine": machine(), "usable_cores": cores, "settings": args.settings}
    document |= {"preset": args.preset, "steps": args.steps, "tokens": args.tokens}
    document |= {"trials": args.trials, "overrides": args.set, "conditions": {}}
    print(f"machine: {document['machine']['line']}")
    print(
        f"{args.preset}: {args.steps} training steps, {args.tokens} decoded tokens, "
        f"median of {args.trials} fresh process(es) per setting"
    )
    for condition in args.conditions:
        load = load_average()
        if condition == "loaded":
            budget_s = 7200.0  # a bound only: the hog is ended when the condition ends
            with CpuHog(cores, budget_s) as hog:
                rows = measure(args)
                hogs = hog.alive()  # all of them, unless one ended early (then it says so)
            if hogs < cores:
                print(f"warning: only {hogs} of {cores} busy loops ran to the end")
        else:
            rows, hogs = measure(args), 0
        document["conditions"][condition] = {
            "load_average_before": load,
            "hogs": hogs,
            "rows": rows,
        }
        print_table(condition + (f", {hogs} busy loops" if hogs else ""), load, rows, cores)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
