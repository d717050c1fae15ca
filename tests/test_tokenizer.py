"""--tokenizer: a BPE tokenizer.json trained here on a local file (nothing fetched); the CLI's
entry point runs in this process (test_bad_input runs each family of commands as a subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_cli import h2q_in_process

SMALL = [
    "--set",
    "model.d_model=64",
    "--set",
    "model.n_layers=1",
    "--set",
    "model.n_heads=2",
    "--set",
    "model.context=32",
    "--set",
    "train.batch_size=2",
    "--set",
    "eval.heldout_bytes=2000",
    "--set",
    "log.sample_interval=2",
    "--set",
    "log.sample_bytes=8",
    "--set",
    "train.warmup_steps=0",
]


@pytest.fixture
def tokenizer_file(tmp_path: Path, text_file: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train([str(text_file)], trainer)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_bpe_model_trains_evaluates_and_keeps_its_tokenizer(tmp_path, text_file, tokenizer_file):
    from h2q_tui.data.tokenizer import BpeTokenizer

    tokenizer = BpeTokenizer(tokenizer_file)
    sample = text_file.read_bytes()[:2000]
    assert (
        tokenizer.decode(tokenizer.encode(sample).tolist()) == sample
    )  # byte-level BPE is lossless
    assert tokenizer.encode(sample).numel() < len(sample)
    trained = h2q_in_process(
        "--no-ui",
        "--preset",
        "hamiltonian-llm",
        "--data",
        str(text_file),
        "--tokenizer",
        str(tokenizer_file),
        "--set",
        f"model.vocab_size={tokenizer.vocab_size}",
        *SMALL,
        "--max-steps",
        "4",
        "--run-dir",
        "run",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    assert list((tmp_path / "run" / "checkpoints").glob("step_*/tokenizer.json"))
    result = h2q_in_process(
        "eval", "run", "--data", str(text_file), "--windows", "10", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "windows of 32 tokens" in result.stdout
    assert 0 < float(result.stdout.strip().splitlines()[-1].removeprefix("bpb=")) < 12


@pytest.mark.parametrize("case", ["missing", "too-small-vocab", "not-json"])
def test_bad_tokenizer_is_one_line_exit_2(tmp_path, text_file, tokenizer_file, case):
    path = {
        "missing": tmp_path / "nope.json",
        "too-small-vocab": tokenizer_file,
        "not-json": text_file,
    }[case]
    result = h2q_in_process(
        "--no-ui",
        "--preset",
        "hamiltonian-llm",
        "--data",
        str(text_file),
        "--tokenizer",
        str(path),
        "--max-steps",
        "1",
        "--run-dir",
        "run",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_each_id_of_a_byte_level_bpe_maps_to_its_exact_bytes(tokenizer_file):
    from h2q_tui.data.tokenizer import BpeTokenizer
    from h2q_tui.generation.text import Codec

    tokenizer = BpeTokenizer(tokenizer_file)
    vocabulary = Codec(tokenizer).vocabulary(tokenizer.vocab_size)
    assert len(set(vocabulary)) == len(vocabulary)  # no two ids collapse into U+FFFD
    sample = 'héllo → {"naïve": [1, 2]}'
    ids = tokenizer.encode(sample.encode()).tolist()
    assert b"".join(vocabulary[i] for i in ids) == sample.encode()
