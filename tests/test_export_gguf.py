"""``h2q-tui export gguf`` (issue 30 item 4): the GGUF file read back with ``gguf`` equals the
source, tensor by tensor and key by key, for each --type; a crystallized folder exports; every
bad input is one line and exit 2 with nothing left at --out.

One tiny GPT run (2 steps) and its int8 crystallized folder are made once per module; a GPT
whose rows are not a multiple of 32 is saved directly (no training) for the F16 fallback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import benchmark_module
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, quants
from test_bad_input import assert_user_error, cli_in_process, english_text

from h2q_tui import checkpoints
from h2q_tui.cli import main as cli
from h2q_tui.config import resolve
from h2q_tui.export import gguf_export
from h2q_tui.export.byte_vocab import byte_symbols
from h2q_tui.models import build_model

Q = GGMLQuantizationType
# largest |error| of one value, relative to its block's largest |value| (amax), with room for
# the fp16 scale's rounding: Q8_0 rounds to steps of amax/127 (half a step); Q4_0 to steps of
# amax/8 from -8 to +7, so values beyond 7.5 steps on the side opposite amax clip (one step)
BOUND = {Q.Q8_0: 0.5 / 127 + 1e-3, Q.Q4_0: 1 / 8 + 1e-3}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with data.txt, a tiny GPT run ``gpt``, its int8 folder ``crystal/int8`` and a
    microstream run ``ms`` (freshly initialised weights: the export does not care)."""
    root = tmp_path_factory.mktemp("export")
    (root / "data.txt").write_bytes(english_text())
    for name, family in (("gpt", "gpt"), ("ms", "microstream")):
        save_tiny(root / name, [f'model.family="{family}"'])
    code = cli.main(
        ["crystallize", str(root / "gpt"), "--method", "int8", "--windows", "1"]
        + ["--data", str(root / "data.txt"), "--out", str(root / "crystal")]
    )
    assert code == 0
    return root


def save_tiny(run: Path, overrides: list[str]) -> Path:
    """A checkpoint folder of the tiny preset with ``overrides``, seeded, untrained."""
    config = resolve("tiny", overrides)
    torch.manual_seed(0)
    return checkpoints.save_checkpoint(run, build_model(config.model), config, 1, run.name, {})


def export(cwd: Path, *args: str):
    return cli_in_process(cwd, "export", "gguf", *args)


def source_tensors(path: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors under their GGUF names, as the one loader decodes them to float."""
    model = checkpoints.load_model_from(checkpoints.read_info(path), dequantize=True)
    return gguf_export.gpt2_tensors(model)


def read_back(path: Path) -> tuple[GGUFReader, dict[str, np.ndarray], dict[str, Q]]:
    """(reader, each tensor dequantized to float32 in its original shape, each tensor's type)."""
    reader = GGUFReader(path)
    values, types = {}, {}
    for tensor in reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions inner first
        data = quants.dequantize(tensor.data, tensor.tensor_type)
        values[tensor.name] = np.asarray(data, dtype=np.float32).reshape(shape)
        types[tensor.name] = tensor.tensor_type
    return reader, values, types


def field_value(reader: GGUFReader, key: str):
    field = reader.fields[key]
    if field.types[0] == GGUFValueType.ARRAY:
        return [field.contents(i) for i in range(len(field.data))]
    return field.contents()


def assert_matches(source: dict[str, np.ndarray], values: dict, types: dict) -> None:
    """Every tensor is there in its source's shape and within its type's bound of it."""
    assert set(values) == set(source)
    for name, want in source.items():
        got, qtype = values[name], types[name]
        assert got.shape == want.shape, name
        if qtype == Q.F32:
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif qtype == Q.F16:
            np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
        else:
            blocks = want.reshape(-1, gguf_export.BLOCK)
            error = np.abs(got.reshape(blocks.shape) - blocks).max(axis=1)
            assert (error <= BOUND[qtype] * np.abs(blocks).max(axis=1) + 1e-12).all(), name


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0", "q4_0"])
def test_each_type_reads_back_as_the_source(runs: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "model.gguf"
    result = export(tmp_path, str(runs / "gpt"), "--out", str(out), "--type", kind)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} | gguf gpt2 {kind}")
    reader, values, types = read_back(out)
    assert_matches(source_tensors(runs / "gpt"), values, types)
    wanted = gguf_export.TYPES[kind][0]
    embedding = "token_embd.weight"  # tied: it is also the output matrix
    assert types[embedding] == (Q.Q8_0 if kind == "q4_0" else wanted)
    assert types["blk.0.attn_qkv.weight"] == wanted
    assert types["position_embd.weight"] == types["blk.0.attn_qkv.bias"] == Q.F32
    assert "output.weight" not in values  # tied: llama.cpp reads the embedding


def test_metadata_is_what_llama_cpp_reads(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.gguf"
    assert export(tmp_path, str(runs / "gpt"), "--out", str(out)).returncode == 0
    reader = GGUFReader(out)
    model = resolve("tiny", [('model.family="gpt"')]).model
    expected = {
        "general.architecture": "gpt2",
        "gpt2.context_length": model.context,
        "gpt2.embedding_length": model.d_model,
        "gpt2.feed_forward_length": model.mlp_ratio * model.d_model,
        "gpt2.attention.head_count": model.n_heads,
        "gpt2.block_count": model.n_layers,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.add_bos_token": False,
    }
    for key, value in expected.items():
        assert field_value(reader, key) == value, key
    assert field_value(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    assert field_value(reader, "tokenizer.ggml.tokens") == byte_symbols()
    assert len(set(byte_symbols())) == 256
    assert field_value(reader, "general.file_type") == 0


def test_a_crystallized_folder_exports_its_decoded_weights(runs: Path, tmp_path: Path) -> None:
    crystal = runs / "crystal" / "int8"
    out = tmp_path / "int8.gguf"
    result = export(tmp_path, str(crystal), "--out", str(out), "--type", "f32")
    assert result.returncode == 0, result.stderr
    _, values, types = read_back(out)
    source = source_tensors(crystal)
    assert_matches(source, values, types)
    plain = source_tensors(runs / "gpt")["blk.0.attn_qkv.weight"]
    assert not np.array_equal(source["blk.0.attn_qkv.weight"], plain)  # the int8 rounding


def test_rows_not_a_multiple_of_32_stay_f16(tmp_path: Path, capsys) -> None:
    folder = save_tiny(tmp_path / "run", ['model.family="gpt"', "model.d_model=48"])
    out = tmp_path / "odd.gguf"
    assert cli.main(["export", "gguf", str(folder), "--out", str(out), "--type", "q4_0"]) == 0
    assert "kept at F16" in capsys.readouterr().out
    _, values, types = read_back(out)
    assert types["blk.0.attn_qkv.weight"] == Q.F16  # rows of 48
    assert types["blk.0.ffn_down.weight"] == Q.Q4_0  # rows of 192
    assert_matches(source_tensors(folder), values, types)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda r, t: [str(t / "nowhere"), "--out", str(t / "m.gguf")], ("nowhere",)),
        (lambda r, t: [str(r / "ms"), "--out", str(t / "m.gguf")], ("microstream", "llama.cpp")),
        (lambda r, t: [str(r / "gpt"), "--out", str(t / "no" / "m.gguf")], ("does not exist",)),
        (lambda r, t: [str(r / "gpt"), "--out", str(t)], ("is a folder",)),
        (lambda r, t: [str(r / "gpt"), "--out", str(t / "m.gguf"), "--type", "q2_k"], ("q2_k",)),
        (lambda r, t: [str(r / "gpt"), "--out", str(t / "m.gguf"), "--type"], ("--type",)),
    ],
    ids=["missing", "family", "out-folder", "out-is-dir", "bad-type", "type-missing"],
)
def test_bad_input_is_one_line(runs: Path, tmp_path: Path, make, words) -> None:
    assert_user_error(export(tmp_path, *make(runs, tmp_path)), *words)
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_is_refused(runs: Path, tmp_path: Path, damage: str) -> None:
    weights = tmp_path / "model.safetensors"
    source = checkpoints.read_info(runs / "gpt").weights.read_bytes()
    weights.write_bytes(source[: len(source) // 2] if damage == "truncated" else b"\x07" * 4096)
    out = tmp_path / "m.gguf"
    assert_user_error(export(tmp_path, str(weights), "--out", str(out)), "corrupt or truncated")
    assert not out.exists()


def test_a_full_disk_leaves_nothing_at_out(runs, tmp_path: Path, monkeypatch) -> None:
    """ENOSPC while the tensors are written: one line, exit 2, no file and no temporary file,
    and an older file at --out is left as it was."""
    out = tmp_path / "m.gguf"
    out.write_bytes(b"the previous export")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gguf_export.GGUFWriter, "write_tensors_to_file", full)
    assert_user_error(export(tmp_path, str(runs / "gpt"), "--out", str(out)), "No space left")
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_an_unwritable_folder_is_one_line(runs: Path, tmp_path: Path) -> None:
    """A folder this user cannot write to (as root, where permissions do not stop it: /proc)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:
        folder = Path("/proc")
    try:
        result = export(tmp_path, str(runs / "gpt"), "--out", str(folder / "h2q-export.gguf"))
        assert_user_error(result, "cannot write")
        assert not (folder / "h2q-export.gguf").exists()
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_the_llamacpp_benchmark_says_when_llama_cpp_is_absent(runs, tmp_path, monkeypatch, capsys):
    """benchmarks/llamacpp.py on the tiny GPT with llama_cpp hidden: our side measured, the
    install line printed, ``"llama_cpp": null`` in the JSON, exit 0."""
    bench = benchmark_module.load("llamacpp")
    real_find_spec = bench.importlib.util.find_spec
    monkeypatch.setattr(
        bench.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real_find_spec(name, *a),
    )
    args = [str(runs / "gpt"), "--data", str(runs / "data.txt"), "--tokens", "8"]
    args += ["--windows", "4", "--repeats", "1", "--out", str(tmp_path / "b")]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "pip install llama-cpp-python" in out
    report = json.loads((tmp_path / "b" / "llamacpp.json").read_text())
    assert report["llama_cpp"] is None and report["scored_bytes"] == 4 * 32
    assert [r["gguf_type"] for r in report["rows"]] == [row[0] for row in bench.ROWS]
    assert all(r["ours_perplexity"] > 1 and r["llama_cpp"] is None for r in report["rows"])


def test_a_llama_child_killed_by_a_signal_is_run_again_without_repacking(tmp_path, monkeypatch):
    bench = benchmark_module.load("llamacpp")
    calls = []
    answer = {"tokens": [1], "tokens_per_s": 1.0, "nats_per_byte": 1.0, "scored_bytes": 1,
              "tokenizer_is_bytes": True, "version": "x"}  # fmt: skip

    def fake_run(command, **kwargs):
        calls.append(command)
        if "--no-repack" not in command:
            return subprocess.CompletedProcess(command, -signal.SIGILL, "", "")
        return subprocess.CompletedProcess(command, 0, json.dumps(answer) + "\n", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    result = bench.run_llama(tmp_path / "m.gguf", tmp_path / "spec.json")
    assert len(calls) == 2 and result["repack"] is False
    assert result["notes"] == ["llama.cpp with repacking died: SIGILL"]


def test_benchmark_windows_are_the_ones_eval_scores() -> None:
    bench = benchmark_module.load("llamacpp")
    data = bench.scored_bytes(bytes(range(100)), 10, 3)
    assert data == bytes(range(31))
    assert bench.windows_of(data, 10) == [bytes(range(i, i + 11)) for i in (0, 10, 20)]
    assert bench.same_prefix([1, 2, 3], [1, 2, 4]) == 2 and bench.same_prefix([1], [1]) == 1


def test_an_untied_model_without_biases_gets_its_head_and_zero_biases(tmp_path: Path) -> None:
    overrides = ['model.family="gpt"', "model.tie_weights=false", "model.bias=false"]
    folder = save_tiny(tmp_path / "run", overrides)
    out = tmp_path / "untied.gguf"
    assert cli.main(["export", "gguf", str(folder), "--out", str(out), "--type", "q4_0"]) == 0
    _, values, types = read_back(out)
    assert types["output.weight"] == Q.Q8_0 and types["token_embd.weight"] == Q.Q4_0
    assert not values["blk.1.ffn_up.bias"].any() and values["blk.1.ffn_up.bias"].shape == (512,)
    assert_matches(source_tensors(folder), values, types)


@pytest.mark.slow
def test_llama_cpp_runs_the_export_as_we_do(runs: Path, tmp_path: Path) -> None:
    """Where llama-cpp-python is installed: the F32 file (and our int8 folder exported as F32)
    give our greedy tokens and our perplexity, and its tokenizer reads text as our bytes."""
    pytest.importorskip("llama_cpp")
    bench = benchmark_module.load("llamacpp")
    args = [str(runs / "gpt"), "--data", str(runs / "data.txt"), "--tokens", "16"]
    assert bench.main([*args, "--windows", "8", "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "llamacpp.json").read_text())
    assert report["llama_cpp"] not in (None, "failed")
    rows = {r["gguf_type"]: r for r in report["rows"]}
    for label in ("f32", "int8→f32"):  # the same weights on both sides
        assert rows[label]["same_greedy_tokens"] == rows[label]["greedy_tokens"] == 16
        assert rows[label]["llama_perplexity"] == pytest.approx(
            rows[label]["ours_perplexity"], rel=1e-4
        )
    assert all(r["llama_tokenizer_is_bytes"] for r in rows.values())
    for label in ("q8_0", "q4_0"):  # other rounding: close, not equal
        assert rows[label]["llama_perplexity"] == pytest.approx(
            rows[label]["ours_perplexity"], rel=0.02
        )
