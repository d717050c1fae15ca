"""Bad input through the real CLI: exit 2, one stderr line naming the problem, no damage.

Every case runs ``python -m h2q_tui`` in a subprocess inside the test's own tmp_path. The
checkpoint cases copy one real ``--preset tiny --max-steps 3`` run (trained once per module)
and check that the failed command left every checkpoint file byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_cli import ENV, h2q

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
    assert_user_error(cli(workdir, *NEW_RUN, *args), *words)
    assert not (workdir / "new-run").exists(), "a rejected run must not leave a run dir behind"
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    "run_dir_arg", ["plainfile/run", "plainfile"], ids=["parent-is-file", "is-file"]
)
def test_unwritable_run_dir(workdir: Path, run_dir_arg: str) -> None:
    result = cli(workdir, "--no-ui", *TINY, "--max-steps", "3", "--run-dir", run_dir_arg)
    assert_user_error(result, "run dir", run_dir_arg)
    assert (workdir / "plainfile").read_text(encoding="utf-8") == "not a directory\n"


def test_eval_missing_checkpoint(workdir: Path) -> None:
    assert_user_error(
        cli(workdir, "eval", "no-such-run", "--data", DATA), "no-such-run", "not found"
    )


def test_resume_dir_without_checkpoint(workdir: Path) -> None:
    assert_user_error(cli(workdir, "--no-ui", "--resume", "emptyrun"), "emptyrun", "no checkpoint")
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
            ["model.safetensors", "corrupt"],
            id="garbage-weights-eval",
        ),
        pytest.param(
            "model.safetensors",
            garbage,
            RESUME,
            ["model.safetensors", "corrupt"],
            id="garbage-weights-resume",
        ),
        pytest.param(
            "model.safetensors",
            truncate,
            EVAL,
            ["model.safetensors", "truncated"],
            id="truncated-weights-eval",
        ),
        pytest.param(
            "state.pt", garbage, RESUME, ["state.pt", "corrupt"], id="garbage-state-resume"
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
