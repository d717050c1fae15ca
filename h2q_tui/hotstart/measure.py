"""Measuring load → first token, by phase, cold and warm (``h2q-tui hotstart``, the panel).

Each repeat of the fresh-process figure runs ``python -m h2q_tui.hotstart.probe`` as a user
starts ``h2q-tui generate``: the process start, ``import torch``, the h2q-tui imports, then
the load phases (:mod:`h2q_tui.hotstart.phases`) up to the first token, then tokens/s over
64 tokens. Beside it the same load in this process (torch already imported: what the
Generate pane or ``serve`` pays), and the naive path as the anchor (the model built and
initialised on the CPU, a pickle ``torch.load`` of its state_dict, ``load_state_dict``).

``--cold`` drops the file's pages before every repeat and checks with mincore that they are
gone (:mod:`h2q_tui.checkpoints.page_cache`); where they stay (tmpfs, a mapping held elsewhere) it
says "cold unavailable (why)" and labels the figures warm.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from h2q_tui.errors import UserError
from h2q_tui.generation.text import DEFAULT_PROMPT
from h2q_tui.system.thread_choice import DECODE_THREADS, decoding_choice

PHASE_ORDER = (
    "start",
    "python",
    "import_torch",
    "import_h2q",
    "info",
    "read",
    "build",
    "assign",
    "first_forward",
    "first_token",
    "verify_wait",
    "rest",
)
OVERLAPPED_ORDER = ("verify",)  # ran on another thread beside the phases: not in the total
PHASE_HELP = {
    "start": "process start (spawn → interpreter → probe)",
    "python": "probe's own imports",
    "import_torch": "import torch",
    "import_h2q": "import h2q-tui, safetensors",
    "info": "find checkpoint, read metadata (naive: and verify checksums)",
    "read": "read the weights",
    "build": "build the model",
    "assign": "weights into the model",
    "first_forward": "first forward (prompt)",
    "first_token": "sample the first token",
    "verify_wait": "wait for the checksum pass (fast path)",
    "rest": "the rest",
    "verify": "checksum pass, on its own thread beside the phases (not in the total)",
}
# (key, heading, fresh process?, method)
COLUMNS = (
    ("fresh", "fresh process", True, "fast"),
    ("in_process", "in-process", False, "fast"),
    ("naive_in_process", "naive in-process", False, "naive"),
    ("naive_fresh", "naive fresh", True, "naive"),
)
PROBE_TIMEOUT_S = 600.0


@dataclass
class Request:
    """What to measure (the command's flags)."""

    checkpoint: str
    repeats: int = 3
    cold: bool = False
    prompt: str = DEFAULT_PROMPT
    json: str | None = None
    rate_tokens: int = 64
    columns: tuple[str, ...] = tuple(key for key, *_ in COLUMNS)
    threads: int = 1


def check_request(request: Request) -> None:
    """Bad flags as one-line UserErrors, before anything is loaded."""
    if request.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {request.repeats}")
    if request.threads < 1:
        raise UserError(f"--threads must be at least 1, got {request.threads}")
    if not request.prompt:
        raise UserError("--prompt needs some text to continue")
    if request.json:
        parent = Path(request.json).expanduser().resolve().parent
        if not parent.is_dir():
            raise UserError(f"--json {request.json}: folder {parent} does not exist")


def warm_up(path: Path) -> None:
    """Read the whole file once, so that its pages are in the page cache."""
    with open(path, "rb") as handle:
        while handle.read(1 << 22):
            pass


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _summary(samples: list[dict]) -> dict[str, object]:
    names = [name for name in PHASE_ORDER if any(name in s["phases"] for s in samples)]
    beside = [n for n in OVERLAPPED_ORDER if any(n in s.get("overlapped", {}) for s in samples)]
    return {
        "phases": {
            name: summarise([s["phases"].get(name, 0.0) for s in samples]) for name in names
        },
        "overlapped": {
            name: summarise([s.get("overlapped", {}).get(name, 0.0) for s in samples])
            for name in beside
        },
        "total_s": summarise([s["total_s"] for s in samples]),
        "tokens_per_s": summarise([s["tokens_per_s"] for s in samples]),
        "cold": all(s["cold"] for s in samples),
        "samples": samples,
    }


def run_probe(
    checkpoint: Path,
    method: str,
    pickle_path: Path | None,
    prompt: str,
    rate_tokens: int,
    threads: int,
) -> dict[str, object]:
    """One fresh process up to its first token (then its tokens/s): phases and total.

    ``start`` is the time from just before the spawn to the probe's first line, on the
    system-wide monotonic clock both processes share; ``rest`` the time from the probe's
    first token to its report arriving here. The phases add up to ``total_s``.
    """
    command = [sys.executable, "-m", "h2q_tui.hotstart.probe", str(checkpoint)]
    command += ["--method", method, "--prompt", prompt, "--rate-tokens", str(rate_tokens)]
    command += ["--threads", str(threads)]
    if pickle_path is not None:
        command += ["--pickle", str(pickle_path)]
    env = {**os.environ, "H2Q_HOTSTART_SPAWN_WALL": repr(time.time())}
    spawn_wall = float(env["H2Q_HOTSTART_SPAWN_WALL"])
    began = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        first = process.stdout.readline()
        arrived = time.perf_counter()
        second = process.stdout.readline()
        _, errors = process.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise UserError(f"the fresh-process probe took over {PROBE_TIMEOUT_S:.0f} s") from None
    if process.returncode != 0 or not first.strip():
        lines = [line for line in (errors or "").strip().splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {process.returncode}"
        raise UserError(f"the fresh-process probe failed: {why.removeprefix('error: ')}")
    head, tail = json.loads(first), json.loads(second or "{}")
    child = dict(head["phases"])
    if _shared_monotonic_clock():
        start = head["started_perf"] - began
    else:
        start = head["started_wall"] - spawn_wall
    total = arrived - began
    start = min(max(start, 0.0), max(total - head["span_s"], 0.0))
    rest = max(total - start - sum(child.values()), 0.0)
    child_rest = child.pop("rest", 0.0)
    phases = {"start": start, **child, "rest": rest + child_rest}
    return {
        "phases": phases,
        "overlapped": dict(head.get("overlapped", {})),
        "total_s": sum(phases.values()),
        "tokens_per_s": float(tail.get("tokens_per_s", 0.0)),
        "rate_tokens": int(tail.get("rate_tokens", 0)),
    }


def _shared_monotonic_clock() -> bool:
    """perf_counter is CLOCK_MONOTONIC (one clock for every process) on Linux."""
    return "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation


def run_in_process(
    checkpoint: Path, method: str, pickle_path: Path | None, prompt: str, rate_tokens: int
) -> dict[str, object]:
    """One load up to its first token in this process (torch already imported)."""
    from h2q_tui.hotstart import phases  # torch: imported once the flags are read

    info, model, _, times = phases.load_for_first_token(
        checkpoint, prompt, method, pickle_path, rate_tokens
    )
    del model
    gc.collect()  # drops the file's mappings, so that the next cold drop can work
    return {**times.to_dict(), "what": info.describe(), "step": info.step}


def _pickle_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder for the naive path's pickle, on a disk when one is at hand."""
    from h2q_tui.checkpoints import page_cache as cold  # torch: imported once flags are read

    default = tempfile.TemporaryDirectory(prefix="h2q-hotstart-")
    if not cold.in_memory_filesystem(default.name):
        return default
    for candidate in ("/var/tmp", str(Path.home())):
        if Path(candidate).is_dir() and not cold.in_memory_filesystem(candidate):
            try:
                alternative = tempfile.TemporaryDirectory(prefix="h2q-hotstart-", dir=candidate)
            except OSError:
                continue
            default.cleanup()
            return alternative
    return default


def measure(request: Request) -> dict[str, object]:
    """Every figure the request asks for, as a JSON-ready report; the in-process load and
    decode run on ``request.threads`` torch threads, as the fresh processes do."""
    import torch  # lazy: imported once the flags are read

    check_request(request)
    previous = torch.get_num_threads()
    torch.set_num_threads(request.threads)  # this thread's count: the one the report states
    try:
        return _measure(request)
    finally:
        torch.set_num_threads(previous)


def _measure(request: Request) -> dict[str, object]:
    from h2q_tui import checkpoints  # torch: imported once the flags are read
    from h2q_tui.checkpoints import page_cache
    from h2q_tui.hotstart.phases import write_pickle_state

    info = checkpoints.read_info(request.checkpoint)
    checkpoints.load_checkpoint(info)  # a damaged file fails here, in one line, not in a probe
    gc.collect()
    unavailable = page_cache.drop_file_cache(info.weights) if request.cold else None
    report = _report_head(request, info, unavailable)
    folder = _pickle_folder() if any("naive" in key for key in request.columns) else None
    try:
        pickle_path = write_pickle_state(info, folder.name) if folder else None
        gc.collect()
        for key, heading, fresh, method in COLUMNS:
            if key in request.columns:
                samples = _samples(request, info, report["cold"], fresh, method, pickle_path)
                report["columns"][key] = {"heading": heading, "method": method, **samples}
    finally:
        if folder is not None:
            folder.cleanup()
    return report


def _report_head(request: Request, info, unavailable: str | None) -> dict[str, object]:
    """The report's checkpoint, machine and cache facts, its columns still empty."""
    from h2q_tui.system import hardware  # torch: imported once the flags are read

    weights = info.weights
    return {
        "checkpoint": str(weights),
        "what": info.describe(),
        "family": info.config.model.family,
        "step": info.step,
        "file_bytes": weights.stat().st_size,
        "machine": hardware.cpu_model(),
        "machine_info": hardware.machine_info(),
        "machine_line": hardware.machine_line(),
        "repeats": request.repeats,
        "prompt": request.prompt,
        "rate_tokens": request.rate_tokens,
        "threads": request.threads,
        "threads_reason": decoding_choice(
            None if request.threads == DECODE_THREADS else request.threads
        ).reason,
        "cold_requested": request.cold,
        "cold": request.cold and unavailable is None,
        "cold_unavailable": unavailable,
        "cache": cache_label(request.cold, unavailable),
        "columns": {},
    }


def _samples(
    request: Request, info, is_cold: bool, fresh: bool, method: str, pickle_path: Path | None
) -> dict[str, object]:
    """One column's repeats, summarised; each in-process load is recorded in the timeline."""
    from h2q_tui.checkpoints import timing  # torch: imported once the flags are read

    weights = info.weights
    pickle_path = pickle_path if method == "naive" else None
    # the naive path reads the safetensors metadata too: both files go cold
    targets = [weights, pickle_path] if method == "naive" else [weights]
    samples = []
    for _ in range(request.repeats):
        sample_cold = all([_prepare_cache(path, is_cold) for path in targets])
        if fresh:
            sample = run_probe(
                weights, method, pickle_path, request.prompt, request.rate_tokens, request.threads
            )
        else:
            sample = run_in_process(
                weights, method, pickle_path, request.prompt, request.rate_tokens
            )
            timing.record(
                timing.LoadEvent(
                    kind="load",
                    what=info.describe(),
                    path=str(weights),
                    step=info.step,
                    total_s=sample["total_s"],
                    phases=dict(sample["phases"]),
                    overlapped=dict(sample.get("overlapped", {})),
                    cold=sample_cold,
                    consumer="hotstart",
                    note=f"{method} path, in-process",
                )
            )
        sample["cold"] = sample_cold
        samples.append(sample)
    return _summary(samples)


def _prepare_cache(path: Path, cold_wanted: bool) -> bool:
    """Drop ``path``'s pages (cold) or read it in (warm); True when it is now cold."""
    from h2q_tui.checkpoints import page_cache as cold  # torch: imported once flags are read

    if cold_wanted:
        return cold.drop_file_cache(path) is None
    warm_up(path)
    return False


def cache_label(requested: bool, unavailable: str | None) -> str:
    if not requested:
        return "warm (the file in the page cache)"
    if unavailable:
        return f"cold unavailable ({unavailable}): the figures are warm"
    return "cold (the file's pages dropped before every repeat, checked with mincore)"
