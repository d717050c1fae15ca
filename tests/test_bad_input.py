"""Bad input through the real CLI: exit 2, one stderr line naming the problem, no damage.

Every case runs the CLI's entry point inside the test's own tmp_path: in this process
(``cli_in_process``), and one case of each family (new run, eval, generate, resume, attach) also
as ``python -m h2q_tui`` in a subprocess. The checkpoint cases copy one real ``--preset tiny
--max-steps 3`` run (trained once per module) and check that the failed command left every
checkpoint file byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_cli import ENV, h2q, h2q_in_process
from test_tail import NOT_REGULAR_FILES

TIMEOUT = 120
# One torch thread: on a busy small machine, all-core OpenMP steps slow down a hundredfold.
DATA = "data.txt"
WORDS = (
    "the quick brown fox jumps over a lazy dog while small birds sing in old trees and "
    "rivers run past quiet towns where people read books drink tea and talk of rain"
).split()


def english_text(size: int = 20_000) -> bytes:
    rng = random.Random(1234)
    words = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
    return (" ".join(words) + "\n").encode()


TEXT = english_text()


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return h2q(*args, cwd=cwd, timeout=TIMEOUT)


def cli_in_process(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same entry point as the ``h2q-tui`` script, called in this process
    (:func:`run_cli.h2q_in_process`) so that the ~200 cases below do not each pay a torch
    import in a fresh interpreter. Each family of cases also runs one case through a real
    subprocess (``test_each_family_in_a_subprocess``).
    """
    return h2q_in_process(*args, cwd=cwd)


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2 and exactly one non-empty stderr line that contains every word."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), lines
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def checkpoint_hashes(run: Path) -> dict[str, str]:
    files = sorted(p for p in (run / "checkpoints").rglob("*") if p.is_file())
    assert files, f"no checkpoint files under {run}"
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def latest_checkpoint(run: Path) -> Path:
    root = run / "checkpoints"
    return root / (root / "latest").read_text(encoding="utf-8").strip()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """tmp_path with the training text and the bad inputs the cases name."""
    (tmp_path / DATA).write_bytes(TEXT)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.bin").write_bytes(random.Random(1).randbytes(4096) + b"\x00" * 16)
    (tmp_path / "bindir").mkdir()
    (tmp_path / "bindir" / "blob.bin").write_bytes(
        b"\x00\x01\x02" + random.Random(2).randbytes(4096)
    )
    (tmp_path / "short.txt").write_bytes(b"hello world\n")
    (tmp_path / "bad.toml").write_text(
        '[model]\nfamily = "microstream"\nwidth = 64\n', encoding="utf-8"
    )
    (tmp_path / "plainfile").write_text("not a directory\n", encoding="utf-8")
    (tmp_path / "emptyrun").mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    (root / DATA).write_bytes(TEXT)
    result = cli(
        root, "--no-ui", "--preset", "tiny", "--max-steps", "3", "--run-dir", "run", "--data", DATA
    )
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.fixture
def run_dir(trained_run: Path, workdir: Path) -> Path:
    """A private copy of the trained run; its run.json names DATA, which workdir holds too."""
    return Path(shutil.copytree(trained_run, workdir / "run"))


NEW_RUN = ("--no-ui", "--max-steps", "3", "--run-dir", "new-run")
TINY = ("--preset", "tiny", "--data", DATA)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(
            ("--preset", "tiny", "--data", "missing.txt"),
            ["missing.txt", "not found"],
            id="missing-data",
        ),
        pytest.param(
            ("--preset", "tiny", "--data", "empty.txt"), ["empty.txt", "empty"], id="empty-data"
        ),
        pytest.param(
            ("--preset", "tiny", "--data", "bindir"),
            ["bindir", "no text files"],
            id="dir-without-text",
        ),
        pytest.param(
            ("--preset", "tiny", "--data", "binary.bin"), ["binary.bin", "binary"], id="binary-data"
        ),
        pytest.param(
            (*TINY, "--heldout", "missing-heldout.txt"),
            ["missing-heldout.txt", "not found"],
            id="missing-heldout",
        ),
        pytest.param(
            ("--preset", "tiny", "--data", "short.txt"), ["short.txt", "bytes"], id="data-too-short"
        ),
        pytest.param(
            (*TINY, "--heldout", "short.txt"), ["short.txt", "held-out"], id="heldout-too-short"
        ),
        pytest.param(
            ("--preset", "no-such-preset", "--data", DATA), ["no-such-preset"], id="unknown-preset"
        ),
        pytest.param((*TINY, "--set", "model.nonsense=1"), ["model.nonsense"], id="unknown-key"),
        pytest.param((*TINY, "--set", "foo.bar=1"), ["[foo]", "section"], id="unknown-section"),
        pytest.param(
            (*TINY, "--set", "train.batch_size=abc"), ["train.batch_size", "int"], id="int-not-int"
        ),
        pytest.param(
            (*TINY, "--set", 'train.lr="fast"'), ["train.lr", "float"], id="float-not-float"
        ),
        pytest.param(
            ("--preset", "bad.toml", "--data", DATA),
            ["bad.toml", "model.width"],
            id="preset-file-unknown-key",
        ),
        pytest.param((*TINY, "--set", "train.lr"), ["--set", "train.lr"], id="set-without-equals"),
        pytest.param((*TINY, "--bogus-flag"), ["--bogus-flag"], id="unknown-flag"),
    ],
)
def test_new_run_bad_input(workdir: Path, args: tuple[str, ...], words: list[str]) -> None:
    assert_user_error(cli_in_process(workdir, *NEW_RUN, *args), *words)
    assert not (workdir / "new-run").exists(), "a rejected run must not leave a run dir behind"
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    "run_dir_arg", ["plainfile/run", "plainfile"], ids=["parent-is-file", "is-file"]
)
def test_unwritable_run_dir(workdir: Path, run_dir_arg: str) -> None:
    result = cli_in_process(workdir, "--no-ui", *TINY, "--max-steps", "3", "--run-dir", run_dir_arg)
    assert_user_error(result, "run dir", run_dir_arg)
    assert (workdir / "plainfile").read_text(encoding="utf-8") == "not a directory\n"


def test_eval_missing_checkpoint(workdir: Path) -> None:
    assert_user_error(
        cli_in_process(workdir, "eval", "no-such-run", "--data", DATA), "no-such-run", "not found"
    )


def test_resume_dir_without_checkpoint(workdir: Path) -> None:
    result = cli_in_process(workdir, "--no-ui", "--resume", "emptyrun")
    assert_user_error(result, "emptyrun", "no checkpoint")
    assert list((workdir / "emptyrun").iterdir()) == []


def garbage(path: Path) -> None:
    path.write_bytes(random.Random(3).randbytes(4096))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


EVAL = ("eval", "run", "--data", DATA)
RESUME = ("--no-ui", "--resume", "run", "--max-steps", "6")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("file", "damage", "args", "words"),
    [
        pytest.param(
            "model.safetensors",
            garbage,
            EVAL,
            ["step_00000003", "corrupt"],
            id="garbage-weights-eval",
        ),
        pytest.param(
            "model.safetensors",
            garbage,
            RESUME,
            ["step_00000003", "corrupt"],
            id="garbage-weights-resume",
        ),
        pytest.param(
            "model.safetensors",
            truncate,
            EVAL,
            ["step_00000003", "truncated"],
            id="truncated-weights-eval",
        ),
        pytest.param(
            "state.pt", garbage, RESUME, ["state.pt", "damaged"], id="garbage-state-resume"
        ),
        pytest.param(
            None,
            None,
            ("eval", "run", "--data", "missing.txt"),
            ["missing.txt", "not found"],
            id="eval-missing-data",
        ),
    ],
)
def test_checkpoint_bad_input(
    run_dir: Path, file, damage, args: tuple[str, ...], words: list[str]
) -> None:
    if damage is not None:
        damage(latest_checkpoint(run_dir) / file)
    before = checkpoint_hashes(run_dir)
    assert_user_error(cli(run_dir.parent, *args), *words)
    assert checkpoint_hashes(run_dir) == before


def wait_for_step(metrics: Path, proc: subprocess.Popen) -> None:
    """Poll metrics.jsonl until it holds a complete "step" record, or fail."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training exited with {proc.returncode} before its first step")
        text = metrics.read_text(encoding="utf-8") if metrics.is_file() else ""
        if any(json.loads(line).get("event") == "step" for line in text.split("\n")[:-1] if line):
            return
        time.sleep(0.1)
    pytest.fail(f"no step record in {metrics} after {TIMEOUT} s")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_a_loadable_checkpoint(workdir: Path) -> None:
    command = [sys.executable, "-m", "h2q_tui", "--no-ui", *TINY, "--run-dir", "run"]
    with open(workdir / "stdout.txt", "w") as out, open(workdir / "stderr.txt", "w") as err:
        proc = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=err, env=ENV)
        try:
            wait_for_step(workdir / "run" / "metrics.jsonl", proc)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = (workdir / "stderr.txt").read_text(encoding="utf-8")
    assert code == 130, stderr
    assert "Traceback" not in stderr
    result = cli(workdir, "eval", "run", "--data", DATA)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("bpb="), result.stdout


# ----------------------------------------------------------------------------- issue 11 item 6
# Every config key has a range (h2q_tui/config/ranges.py RANGES); these go through the real CLI,
# tests/test_config_fuzz.py covers every key in-process.
def sets(*overrides: str) -> tuple[str, ...]:
    return tuple(arg for override in overrides for arg in ("--set", override))


def family(name: str, *overrides: str) -> tuple[str, ...]:
    return sets(f'model.family="{name}"', *overrides)


CONFIG_CASES = [
    # the values the issue found
    (sets("train.lr=-1"), ["train.lr", "> 0"], "lr-negative"),
    (sets("train.lr=nan"), ["train.lr", "finite"], "lr-nan"),
    (sets("train.lr=inf"), ["train.lr", "finite"], "lr-inf"),
    (sets("train.lr=-inf"), ["train.lr", "finite"], "lr-minus-inf"),
    (sets("train.grad_accum=0"), ["train.grad_accum"], "grad-accum-0"),
    (sets("model.factor_size=0"), ["model.factor_size"], "factor-size-0"),
    (sets("model.factor_size=3"), ["model.factor_size", "multiple"], "factor-size-no-fit"),
    (sets("train.threads=-1"), ["train.threads"], "threads-negative"),
    (sets("model.dropout=2.0"), ["model.dropout", "< 1"], "dropout-2"),
    (sets("model.dropout=-0.1"), ["model.dropout"], "dropout-negative"),
    (sets("model.vocab_size=100"), ["model.vocab_size", "256"], "vocab-100-bytes"),
    # n_heads must divide the width each family splits into heads
    (sets("model.n_heads=3"), ["model.n_heads", "d_model/2"], "heads-microstream"),
    (family("h2q-transformer", "model.n_heads=3"), ["model.n_heads", "d_model/2"], "heads-h2q"),
    (family("qrlm", "model.n_heads=3"), ["model.n_heads", "model.d_model"], "heads-qrlm"),
    (family("gpt", "model.n_heads=3"), ["model.n_heads", "model.d_model"], "heads-gpt"),
    (family("hamiltonian-llm", "model.n_heads=3"), ["model.n_heads"], "heads-hllm"),
    (family("hamiltonian-llm", "model.n_heads=128"), ["even"], "head-size-odd-hllm"),
    (family("qrlm", "model.factor_size=48"), ["qrlm", "model.factor_size"], "factor-qrlm"),
    # negative sizes
    *[
        (sets(f"{key}=-1"), [key], f"negative-{key}")
        for key in (
            "model.d_model",
            "model.n_layers",
            "model.n_heads",
            "model.context",
            "model.vocab_size",
            "model.rank",
            "model.mlp_ratio",
            "model.reflex_kernel",
            "model.gravity_max_distance",
            "train.batch_size",
            "train.chunk_bytes",
            "eval.heldout_bytes",
            "log.sample_bytes",
        )
    ],
    (sets("train.batch_size=0"), ["train.batch_size"], "batch-0"),
    (sets("train.weight_decay=-0.1"), ["train.weight_decay"], "weight-decay-negative"),
    (sets("train.grad_clip=-1"), ["train.grad_clip"], "grad-clip-negative"),
    (sets("train.grad_clip=0"), ["train.grad_clip", "1e9"], "grad-clip-0-would-zero-grads"),
    (sets("train.beta1=1.0"), ["train.beta1", "< 1"], "beta1-1"),
    (sets("train.beta2=-0.5"), ["train.beta2"], "beta2-negative"),
    (sets("train.beta2=1.5"), ["train.beta2"], "beta2-1.5"),
    (sets('train.schedule="cosine"', "train.min_lr=1"), ["train.min_lr", "train.lr"], "min-lr"),
    (sets("train.warmup_steps=-1"), ["train.warmup_steps"], "warmup-negative"),
    (sets("train.axiom_lambda=-1"), ["train.axiom_lambda"], "axiom-lambda-negative"),
    (sets("train.seed=-1"), ["train.seed"], "seed-negative"),
    (sets("eval.heldout_interval=-1"), ["eval.heldout_interval"], "heldout-interval"),
    (sets("eval.random_val_interval=-1"), ["eval.random_val_interval"], "random-val-interval"),
    (sets("eval.heldout_fraction=0"), ["eval.heldout_fraction"], "heldout-fraction-0"),
    (sets("eval.heldout_fraction=1.5"), ["eval.heldout_fraction"], "heldout-fraction-1.5"),
    (sets("eval.horizon_val_fraction=0"), ["eval.horizon_val_fraction"], "horizon-fraction-0"),
    (sets("eval.heldout_bytes=10"), ["eval.heldout_bytes", "model.context"], "heldout-bytes"),
    (sets("log.log_interval=-1"), ["log.log_interval"], "log-interval"),
    (sets("log.log_interval=0"), ["log.log_interval", "between 1 and"], "log-interval-0"),
    (sets("log.sample_interval=-1"), ["log.sample_interval"], "sample-interval"),
    (sets("log.checkpoint_interval=-1"), ["log.checkpoint_interval"], "checkpoint-interval"),
    (sets("log.keep_checkpoints=0"), ["log.keep_checkpoints"], "keep-checkpoints-0"),
    (sets("log.sample_temperature=0"), ["log.sample_temperature", "> 0"], "temperature-0"),
    (sets("log.sample_temperature=-1"), ["log.sample_temperature"], "temperature-negative"),
    (sets("model.rank=0"), ["model.rank"], "rank-0"),
    (sets("model.momentum_beta=1.5"), ["model.momentum_beta"], "momentum-beta"),
    (sets("model.separator_damping=-1"), ["model.separator_damping"], "separator-damping"),
    (sets("model.separator_token=300"), ["model.separator_token"], "separator-token"),
    (sets("model.gravity_strength=-1"), ["model.gravity_strength"], "gravity-strength"),
    (sets("model.rope_base=0.5"), ["model.rope_base"], "rope-base"),
    # QRLM rank growth
    (sets("train.growth_interval=0"), ["train.growth_interval"], "growth-interval-0"),
    (sets("train.growth_window=0"), ["train.growth_window"], "growth-window-0"),
    (
        sets("train.growth_window=10", "train.growth_lookback=5"),
        ["train.growth_lookback", "train.growth_window"],
        "growth-lookback-short",
    ),
    (sets("train.growth_lr_factor=0"), ["train.growth_lr_factor"], "growth-lr-factor-0"),
    (sets("train.growth_threshold=-1"), ["train.growth_threshold"], "growth-threshold"),
    (sets("train.growth_max_rank=0"), ["train.growth_max_rank"], "growth-max-rank-0"),
    (sets("train.growth_start_step=-5"), ["train.growth_start_step"], "growth-start"),
    # flags that become train.* overrides
    (("--max-steps", "-1"), ["train.max_steps", "--max-steps"], "max-steps-negative"),
    (("--max-seconds", "-5"), ["train.max_seconds", "--max-seconds"], "max-seconds-negative"),
    (("--max-seconds", "nan"), ["train.max_seconds", "finite"], "max-seconds-nan"),
    (("--seed", "-3"), ["train.seed", "--seed"], "seed-flag-negative"),
]


@pytest.mark.parametrize(("args", "words"), [pytest.param(a, w, id=i) for a, w, i in CONFIG_CASES])
def test_config_value_out_of_range(workdir: Path, args: tuple[str, ...], words: list[str]) -> None:
    result = cli_in_process(
        workdir, "--no-ui", *TINY, "--max-steps", "1", "--run-dir", "new-run", *args
    )
    assert_user_error(result, *words)
    assert not (workdir / "new-run").exists(), "a rejected run must not leave a run dir behind"


def test_model_too_large_for_memory_is_refused_before_allocating(workdir: Path) -> None:
    started = time.monotonic()
    result = cli(
        workdir,
        *("--no-ui", "--preset", "gpt", "--data", DATA, "--run-dir", "new-run"),
        *sets("model.d_model=65536", "model.n_layers=64"),
    )
    assert_user_error(result, "model needs ~", "to train", "parameters", "available")
    assert time.monotonic() - started < 60, "the check must not allocate the model"
    assert not (workdir / "new-run").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(("--data", "empty.txt"), ["empty.txt", "empty"], id="empty-data"),
        pytest.param(("--data", "short.txt"), ["short.txt", "at least"], id="data-short"),
        pytest.param(("--data", DATA, "--batch", "0"), ["--batch"], id="batch-0"),
        pytest.param(("--data", DATA, "--windows", "-1"), ["--windows"], id="windows-negative"),
        pytest.param(("--data", DATA, "--windows", "0"), ["--windows", ">= 1"], id="windows-0"),
    ],
)
def test_eval_bad_flags(run_dir: Path, args: tuple[str, ...], words: list[str]) -> None:
    before = checkpoint_hashes(run_dir)
    assert_user_error(cli_in_process(run_dir.parent, "eval", "run", *args), *words)
    assert checkpoint_hashes(run_dir) == before


GENERATE = ("generate", "run", "--prompt", "the", "--max-new-tokens", "4")
STEER_EVAL = ("steer-eval", "run", "--samples", "1", "--max-new-tokens", "4")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param((*GENERATE, "--strength", "1"), ["--strength", "--steer"], id="strength"),
        pytest.param((*GENERATE, "--steer", ""), ["--steer", "empty"], id="steer-empty"),
        pytest.param((*GENERATE, "--steer", "  "), ["--steer", "empty"], id="steer-blank"),
        pytest.param((*GENERATE, "--max-new-tokens", "0"), ["--max-new-tokens"], id="tokens-0"),
        pytest.param((*GENERATE, "--max-new-tokens", "-3"), ["--max-new-tokens"], id="tokens-neg"),
        pytest.param((*GENERATE, "--temperature", "-1"), ["--temperature"], id="temperature"),
        pytest.param((*GENERATE, "--temperature", "nan"), ["--temperature", "finite"], id="t-nan"),
        pytest.param((*GENERATE, "--top-p", "0"), ["--top-p"], id="top-p-0"),
        pytest.param((*GENERATE, "--top-p", "1.5"), ["--top-p"], id="top-p-1.5"),
        pytest.param((*GENERATE, "--top-k", "-1"), ["--top-k"], id="top-k"),
        pytest.param((*GENERATE, "--repetition-penalty", "0"), ["--repetition-penalty"], id="rep"),
        pytest.param((*GENERATE, "--layer", "2"), ["--layer", "0..1"], id="layer-past-end"),
        pytest.param((*GENERATE, "--layer", "-1"), ["--layer"], id="layer-negative"),
        pytest.param((*GENERATE, "--stop", ""), ["--stop"], id="stop-empty"),
        pytest.param((*GENERATE, "--lookahead", "-1"), ["--lookahead"], id="lookahead"),
        pytest.param((*STEER_EVAL, "--word", ""), ["--word", "empty"], id="word-empty"),
        pytest.param((*STEER_EVAL, "--word", "cat", "--layer", "5"), ["--layer"], id="se-layer"),
        pytest.param(
            (*STEER_EVAL, "--word", "cat", "--strengths", "1,nan"), ["--strengths"], id="se-nan"
        ),
        pytest.param((*STEER_EVAL, "--word", "cat", "--top-p", "2"), ["--top-p"], id="se-top-p"),
    ],
)
def test_generation_bad_flags(run_dir: Path, args: tuple[str, ...], words: list[str]) -> None:
    before = checkpoint_hashes(run_dir)
    assert_user_error(cli_in_process(run_dir.parent, *args), *words)
    assert checkpoint_hashes(run_dir) == before


def rewrite_metadata(weights: Path, **changes: str | None) -> None:
    """Re-save the same tensors with changed safetensors metadata (None removes a key)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(weights), framework="pt") as handle:
        metadata = dict(handle.metadata())
    for key, value in changes.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    save_file(load_file(str(weights)), str(weights), metadata=metadata)


def edit_config(weights: Path, **model_keys) -> None:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
    config["model"].update(model_keys)
    rewrite_metadata(weights, config=json.dumps(config))


def replace_state(weights: Path, state) -> None:
    """A state.pt of our own (its checksum entry dropped, so the structure check is reached)."""
    import torch

    torch.save(state, weights.with_name("state.pt"))
    rewrite_metadata(weights, state_crc32=None)


BOTH = (EVAL, RESUME)


@pytest.mark.parametrize(
    ("damage", "commands", "words"),
    [
        pytest.param(
            lambda w: rewrite_metadata(w, config="[1, 2]"), BOTH, ["config", "list"], id="list"
        ),
        pytest.param(
            lambda w: rewrite_metadata(w, config="42"), BOTH, ["config", "int"], id="number"
        ),
        pytest.param(
            lambda w: rewrite_metadata(w, config='"hello"'), BOTH, ["config", "str"], id="string"
        ),
        pytest.param(
            lambda w: rewrite_metadata(w, step="sixty"), BOTH, ["step", "'sixty'"], id="step"
        ),
        pytest.param(
            lambda w: rewrite_metadata(w, step="-4"), BOTH, ["step", "'-4'"], id="step-negative"
        ),
        pytest.param(
            lambda w: rewrite_metadata(w, rank_growths="x"),
            BOTH,
            ["rank_growths", "'x'"],
            id="rank-growths-x",
        ),
        pytest.param(
            lambda w: rewrite_metadata(w, rank_growths="2"),
            BOTH,
            ["rank_growths", "does not match"],
            id="rank-growths-not-qrlm",
        ),
        pytest.param(
            lambda w: edit_config(w, family="gpt"), BOTH, ["does not match"], id="family-gpt"
        ),
        pytest.param(
            lambda w: edit_config(w, family="qrlm"), BOTH, ["does not match"], id="family-qrlm"
        ),
        pytest.param(
            lambda w: edit_config(w, family="hamiltonian-llm"),
            BOTH,
            ["does not match"],
            id="family-hamiltonian-llm",
        ),
        pytest.param(
            lambda w: edit_config(w, factor_size=48),
            BOTH,
            ["does not match", "model.factor_size"],
            id="config-cannot-build",
        ),
        pytest.param(
            lambda w: edit_config(w, d_model=256),
            BOTH,
            ["does not match", "in the file"],
            id="wider-than-its-weights",
        ),
        pytest.param(
            lambda w: edit_config(w, d_model="wide"), BOTH, ["model.d_model", "int"], id="type"
        ),
        pytest.param(
            lambda w: edit_config(w, d_model=65536, vocab_size=2**24),
            (EVAL,),
            ["needs ~", "weights", "available"],
            id="too-large-to-load",
        ),
        pytest.param(
            lambda w: replace_state(w, {"step": 3}), (RESUME,), ["state.pt", "lacks"], id="state"
        ),
        pytest.param(
            lambda w: replace_state(w, [1, 2]), (RESUME,), ["state.pt", "list"], id="state-list"
        ),
    ],
)
def test_malformed_checkpoint(run_dir: Path, damage, commands, words: list[str]) -> None:
    damage(latest_checkpoint(run_dir) / "model.safetensors")
    before = checkpoint_hashes(run_dir)
    for command in commands:
        assert_user_error(cli_in_process(run_dir.parent, *command), *words)
    assert checkpoint_hashes(run_dir) == before


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param("[1, 2]", ["run.json", "list"], id="list"),
        pytest.param('"runs/x"', ["run.json", "str"], id="string"),
        pytest.param('{"data": 5}', ["run.json", "'data'"], id="wrong-field-type"),
        pytest.param(b"\xff\xfe{", ["run.json", "unreadable"], id="not-utf8"),
    ],
)
def test_malformed_run_json_on_resume(run_dir: Path, content, words: list[str]) -> None:
    path = run_dir / "run.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = checkpoint_hashes(run_dir)
    assert_user_error(cli_in_process(run_dir.parent, *RESUME), *words)
    assert checkpoint_hashes(run_dir) == before


def test_resume_cannot_change_the_loop(run_dir: Path) -> None:
    result = cli_in_process(run_dir.parent, *RESUME, "--set", 'train.loop="random"')
    assert_user_error(result, "train.loop", "--resume")


def test_build_failure_is_one_line(trained_run: Path, monkeypatch) -> None:
    """A builder that raises (a config the validation let through) is a 'does not match' line."""
    from h2q_tui import checkpoints
    from h2q_tui.checkpoints import load
    from h2q_tui.errors import UserError

    info = checkpoints.read_info(trained_run)

    def broken(config):
        raise ValueError("width 96 is not a multiple of 4 x factor_size 32\nsecond line")

    monkeypatch.setattr(load, "build_model", broken)
    with pytest.raises(UserError, match="does not match") as caught:
        checkpoints.load_model_from(info)
    assert "\n" not in str(caught.value)


def test_heldout_equal_to_data_warns_and_trains(workdir: Path) -> None:
    (workdir / "link.txt").symlink_to(workdir / DATA)
    result = cli_in_process(
        workdir, "--no-ui", *TINY, "--heldout", "link.txt", "--max-steps", "1", "--run-dir", "run"
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "h2q-tui: warning: --heldout is the training file: the held-out loss measures "
        "memorisation, not generalisation"
    ], result.stderr
    assert (workdir / "run" / "checkpoints" / "latest").is_file()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(("--no-ui", *TINY, "--max-steps", "1", *sets("train.lr=nan")), ["train.lr", "finite"], id="config"),
        pytest.param(("eval", "run", "--data", DATA, "--batch", "0"), ["--batch"], id="eval"),
        pytest.param((*GENERATE, "--strength", "1"), ["--strength", "--steer"], id="generate"),
        pytest.param((*RESUME, "--set", 'train.loop="random"'), ["train.loop", "--resume"], id="resume"),
    ],
)  # fmt: skip
def test_each_family_in_a_subprocess(
    run_dir: Path, args: tuple[str, ...], words: list[str]
) -> None:
    """The in-process runner above and the real script agree: one line, exit 2."""
    assert_user_error(cli(run_dir.parent, *args), *words)


# ---------------------------------------------------------------------------- attach
def metrics_of(run: Path, records: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    (run / "metrics.jsonl").write_text(text, encoding="utf-8")
    return run


def started_record(max_steps: int = 100) -> dict:
    config = {"model": {}, "train": {"max_steps": max_steps}, "eval": {}, "log": {}}
    return {"event": "run_started", "run_id": "r", "config": config}


def step_record(step: int, tokens: int | None = None, time_s: float | None = None) -> dict:
    tokens = step * 10 if tokens is None else tokens
    time_s = step * 0.5 if time_s is None else time_s
    return {"event": "step", "step": step, "tokens": tokens, "time": time_s, "train_loss_nats": 2.0}


@NOT_REGULAR_FILES
def test_attach_refuses_a_fifo_or_a_device_in_one_line(tmp_path: Path, make, kind) -> None:
    run = tmp_path / "run"
    run.mkdir()
    make(run / "metrics.jsonl")
    if kind == "a FIFO":  # the family's case through a real process
        result = h2q("attach", "run", cwd=tmp_path, timeout=60)
    else:
        result = cli_in_process(tmp_path, "attach", "run")
    assert_user_error(result, "metrics.jsonl", kind, "regular file")


async def test_attach_keeps_running_on_numbers_no_chart_can_draw(tmp_path: Path) -> None:
    from pilot_helpers import wait_until

    from h2q_tui.app import make_app
    from h2q_tui.training.records import MAX_COUNT

    far = metrics_of(tmp_path / "far", [started_record(), step_record(MAX_COUNT, MAX_COUNT, 1e12)])
    bad = [step_record(2**62), step_record(10**30), step_record(4, tokens=10**30)]
    huge = metrics_of(tmp_path / "huge", [started_record(), *map(step_record, (1, 2, 3)), *bad])
    for run, bad_count in ((huge, 3), (far, 0)):
        app = make_app(attach=[run], monitor=False, refresh_s=0.05)
        async with app.run_test(size=(160, 48)) as pilot:
            history = app.runs.histories[run.name]
            await wait_until(pilot, lambda h=history: h.last_step is not None, "the steps")
            for key in ("a", "a", "u", "a"):  # every x axis, both units
                await pilot.press(key)
                app.redraw_chart()
                await pilot.pause(0.05)
            assert app.is_running and app.return_code is None
            assert history.bad_records == bad_count, history.last_problem


async def test_attach_loads_a_long_log_in_slices_and_answers_keys_meanwhile(
    tmp_path: Path, monkeypatch
) -> None:
    from pilot_helpers import wait_until

    from h2q_tui.app import make_app, runs, shell
    from h2q_tui.app.panes.icu import IcuPane

    monkeypatch.setattr(runs, "POLL_SLICE_BYTES", 1024)
    monkeypatch.setattr(runs, "POLL_SLICE_S", 0.0)
    monkeypatch.setattr(shell, "CATCH_UP_S", 0.02)  # a load of 180 slices: seconds
    last = 2000
    run = metrics_of(
        tmp_path / "long", [started_record(last), *map(step_record, range(1, last + 1))]
    )
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        history = app.runs.histories["long"]
        await pilot.press("u")
        assert app.query_one(IcuPane).units == "bpb"  # answered...
        assert (history.last_step or {}).get("step", 0) < last  # ...while the log loads
        await wait_until(pilot, lambda: (history.last_step or {}).get("step") == last, "all")
        assert history.records == last + 1 and history.bad_records == 0


async def test_attach_says_so_when_the_log_turns_into_a_fifo(tmp_path: Path) -> None:
    from pilot_helpers import text_of, wait_until
    from textual.widgets import Static

    from h2q_tui.app import make_app
    from h2q_tui.app.panes.icu import IcuPane

    run = metrics_of(tmp_path / "run", [started_record(), step_record(1)])
    app = make_app(attach=[run], monitor=False, refresh_s=0.05)
    async with app.run_test(size=(160, 48)) as pilot:
        history = app.runs.histories["run"]
        await wait_until(pilot, lambda: history.last_step is not None, "the first step")
        (run / "metrics.jsonl").unlink()
        os.mkfifo(run / "metrics.jsonl")
        status = app.query_one("#status-line", Static)
        await wait_until(pilot, lambda: "is a FIFO, not a regular file" in text_of(status))
        await pilot.press("u")
        assert app.is_running and app.query_one(IcuPane).units == "bpb"
