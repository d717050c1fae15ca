"""Shared fixtures: small text corpora written by the tests themselves, and the shared/data path."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """About 40 KB of English-like text (the standard library's docs), written to a temp file."""
    from h2q_tui.data.sources import default_corpus_bytes

    path = tmp_path / "corpus.txt"
    path.write_bytes(default_corpus_bytes()[:40_000])
    return path


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def engine(tmp_path: Path):
    """A scripted fake engine with an empty run dir (the app tests' default; a module may
    define its own, e.g. with a real model)."""
    from fake_engine import FakeEngine

    fake = FakeEngine(tmp_path / "fake-run")
    fake.run_dir.mkdir()
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def tiny_20_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--preset tiny`` run of 20 steps on the embedded corpus, checkpoints at steps 10 and
    20, trained once per session in this process; tests copy it before changing it."""
    from run_cli import h2q_in_process

    root = tmp_path_factory.mktemp("tiny20")
    result = h2q_in_process(
        "--no-ui", "--preset", "tiny", "--max-steps", "20", "--run-dir", "run",
        "--set", "log.checkpoint_interval=10", cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root / "run"
