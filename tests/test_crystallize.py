"""``h2q-tui crystallize`` (issue 12): measurement, crystallized folders every command loads,
--tensors-only on any safetensors file, and bad input through the real CLI.

One tiny microstream and one tiny GPT are trained once per module (3 steps, in-process); the
cases that must go through the real CLI run ``python -m h2q_tui`` with one torch thread.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from run_cli import h2q
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_bad_input import assert_user_error, checkpoint_hashes, cli_in_process, english_text

from h2q_tui import checkpoints
from h2q_tui.cli import main as cli
from h2q_tui.codecs import stored
from h2q_tui.crystal import measure
from h2q_tui.crystal.folders import slug
from h2q_tui.crystal.sweep import mark_pareto
from h2q_tui.errors import UserError
from h2q_tui.training.evaluate import heldout_cross_entropy
from h2q_tui.training.events import bits_per_byte

DATA = "data.txt"
WINDOWS = "24"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with DATA, a tiny microstream run ``ms`` and a tiny GPT run ``gpt``."""
    root = tmp_path_factory.mktemp("crystal")
    (root / DATA).write_bytes(english_text())
    for name, extra in (("ms", ()), ("gpt", ("--set", 'model.family="gpt"'))):
        code = cli.main(
            [
                "--no-ui",
                "--preset",
                "tiny",
                *extra,
                "--max-steps",
                "3",
                "--run-dir",
                str(root / name),
                "--data",
                str(root / DATA),
            ]
        )
        assert code == 0
    return root


@pytest.fixture
def work(trained: Path, tmp_path: Path) -> Path:
    """A private copy of both runs and DATA."""
    for name in ("ms", "gpt"):
        shutil.copytree(trained / name, tmp_path / name)
    shutil.copyfile(trained / DATA, tmp_path / DATA)
    return tmp_path


def in_process(*args: str, cwd: Path):
    """``h2q(*args, cwd=...)`` through the CLI entry point in this process (no torch start-up)."""
    return cli_in_process(cwd, *args)


def crystallize(work: Path, capsys, *args: str) -> tuple[dict, str, str]:
    """In-process ``h2q-tui crystallize``: (its JSON, stdout, stderr)."""
    json_path = work / "out.json"
    code = cli.main(["crystallize", *args, "--json", str(json_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(json_path.read_text()), captured.out, captured.err


# ----------------------------------------------------------------------------- measure
def test_a_checkpoint_against_itself_gives_kld_0_and_top1_100(trained: Path) -> None:
    info = checkpoints.read_info(trained / "ms")
    base, same = checkpoints.load_model_from(info), checkpoints.load_model_from(info)
    heldout = measure.load_heldout(trained / DATA, info.config.model.context, windows=20)
    calls = []
    result = measure.compare(
        base, same, heldout, batch=8, progress=lambda d, t: calls.append((d, t))
    )
    assert result.mean_kld == 0 and result.kld_p99 == 0
    assert result.delta_bits_per_byte == 0 and result.delta_std_error == 0
    assert result.rms_delta_p == 0 and result.same_top1 == 1.0
    assert result.windows == 20 and result.positions == 20 * info.config.model.context
    assert calls == [(1, 3), (2, 3), (3, 3)]
    # the base's bits/byte is h2q-tui eval's (same windows, same batches)
    nats = heldout_cross_entropy(
        base, heldout.tokens, heldout.context, torch.device("cpu"), heldout.max_tokens, batch=8
    )
    assert result.base_bits_per_byte == bits_per_byte(nats)


def test_a_perturbed_model_shows_a_cost(trained: Path) -> None:
    info = checkpoints.read_info(trained / "gpt")
    base, noisy = checkpoints.load_model_from(info), checkpoints.load_model_from(info)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    heldout = measure.load_heldout(trained / DATA, info.config.model.context, windows=16)
    result = measure.compare(base, noisy, heldout, batch=8)
    assert result.mean_kld > 0 and result.kld_p99 >= result.mean_kld * 0.5
    assert 0 < result.rms_delta_p < 1 and 0 <= result.same_top1 < 1
    assert result.delta_std_error > 0
    assert math.isclose(
        result.bits_per_byte - result.base_bits_per_byte, result.delta_bits_per_byte
    )


def test_default_heldout_is_the_embedded_corpus_tail() -> None:
    heldout = measure.load_heldout(None, 32)
    assert "embedded corpus" in heldout.source and heldout.windows > 10


# ----------------------------------------------------------------------------- crystallize
def test_sweep_writes_loadable_folders_whose_bytes_are_the_table(work: Path, capsys) -> None:
    document, out, err = crystallize(
        work,
        capsys,
        str(work / "ms"),
        "--method",
        "sweep",
        "--data",
        str(work / DATA),
        "--windows",
        WINDOWS,
    )
    rows = {row["method"]: row for row in document["rows"]}
    assert {"original", "bf16", "int8", "int4-g128", "int4-g32", "rank:1", "rank-shared:1"} <= set(
        rows
    )
    assert "svd ladder skipped" in err and "no dense" in err
    assert "Pareto front" in out
    assert any(row["pareto"] for row in document["rows"])
    assert document["machine"]["cpu_cores"] and document["data"]["windows"] == int(WINDOWS)
    source = work / "ms" / "checkpoints" / "step_00000003"
    assert rows["original"]["bytes"] == (source / "model.safetensors").stat().st_size
    for method, row in rows.items():
        if method == "original":
            continue
        folder = Path(row["path"])
        assert folder == work / "ms" / "crystal" / slug(method)
        files = sorted(p.name for p in folder.iterdir())
        assert files == ["model.safetensors"], files  # no state.pt, no tokenizer (a byte model)
        assert row["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
        assert f"{row['bytes']:,}" in out
        assert checkpoints.checkpoint_problem(folder / "model.safetensors") is None
        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            meta = handle.metadata()
        assert {"format", "config", "step", "run_id", "checksums", stored.SOURCE_KEY} <= set(meta)
        assert "state_crc32" not in meta
        assert row["ratio"] == pytest.approx(rows["original"]["bytes"] / row["bytes"])
        assert f"{row['bits_per_byte']:.4f}" in out
    assert rows["int8"]["ratio"] > 3 and rows["int8"]["bits_per_weight"] < 9
    assert not list((work / "ms" / "crystal").glob(".tmp-*"))


def test_crystallized_gpt_loads_and_its_tied_head_stays_tied(work: Path, capsys) -> None:
    document, out, err = crystallize(
        work,
        capsys,
        str(work / "gpt"),
        "--method",
        "int8,svd:0.5+int8",
        "--data",
        str(work / DATA),
        "--windows",
        WINDOWS,
        "--out",
        str(work / "c"),
    )
    assert "rank" not in err  # an explicit list: no ladder notes
    folder = work / "c" / "svd-0.5+int8"
    info = checkpoints.read_info(folder)
    assert info.crystal.method == "svd:0.5+int8" and "smaller" in info.describe()
    model = checkpoints.load_model_from(info, dequantize=True)
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    on_codes = checkpoints.load_model_from(info)  # the head multiplies by the table's codes
    assert torch.equal(on_codes.lm_head.weight.decoded(), on_codes.wte.weight.detach())
    stored_names = load_file(folder / "model.safetensors")
    assert not any(name.startswith("lm_head") for name in stored_names)


def test_rank_truncation_loads_with_its_overrides(work: Path, capsys) -> None:
    crystallize(
        work,
        capsys,
        str(work / "ms"),
        "--method",
        "rank:1+int8",
        "--windows",
        "4",
        "--data",
        str(work / DATA),
    )
    info = checkpoints.read_info(work / "ms" / "crystal" / "rank-1+int8")
    assert info.config.model.rank == 1 and info.rank_growths == 0
    assert info.crystal.overrides["rank"] == 1
    model = checkpoints.load_model_from(info, dequantize=True)  # HamLinears as built
    banks = [t for name, t in model.state_dict().items() if name.endswith("bank.A")]
    assert banks and all(bank.shape[0] == 1 for bank in banks)


def test_crystallized_folder_loads_in_eval_generate_and_steer_eval(work: Path, capsys) -> None:
    """The acceptance case: eval gives the table's bits/byte on the same windows, and eval,
    generate and steer-eval say what they loaded."""
    document, _, _ = crystallize(
        work,
        capsys,
        str(work / "ms"),
        "--method",
        "int8,rank:1",
        "--data",
        str(work / DATA),
        "--windows",
        WINDOWS,
    )
    for row, run in zip(document["rows"][1:], (in_process, h2q), strict=True):
        folder = row["path"]  # rank:1 goes through a real subprocess, int8 in-process
        result = run("eval", folder, "--data", DATA, "--windows", WINDOWS, cwd=work)
        assert result.returncode == 0, result.stderr
        assert f"bpb={row['bits_per_byte']:.4f}" in result.stdout
        assert f"loaded {row['method']} of run " in result.stderr
        assert f"step 3, {row['ratio']:.1f}× smaller" in result.stderr
    folder = document["rows"][1]["path"]
    generated = h2q("generate", folder, "--prompt", "the", "--max-new-tokens", "8", cwd=work)
    assert generated.returncode == 0 and "loaded int8 of run" in generated.stderr
    assert generated.stdout.startswith("the")
    code = cli.main(  # in-process: the same loading path, without another torch start-up
        [
            "steer-eval",
            folder,
            "--word",
            "fox",
            "--samples",
            "1",
            "--strengths",
            "0",
            "--max-new-tokens",
            "4",
            "--json",
            str(work / "se.json"),
        ]
    )
    assert code == 0 and "loaded int8 of run" in capsys.readouterr().err


def test_a_flipped_bit_in_a_crystallized_file_is_caught(work: Path, capsys) -> None:
    crystallize(
        work,
        capsys,
        str(work / "ms"),
        "--method",
        "int8",
        "--windows",
        "2",
        "--data",
        str(work / DATA),
    )
    weights = work / "ms" / "crystal" / "int8" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    assert "does not match its checksum" in checkpoints.checkpoint_problem(weights)
    with pytest.raises(UserError, match="checksum"):
        checkpoints.read_info(weights.parent)


def test_a_crystallized_folder_cannot_be_resumed(work: Path, capsys) -> None:
    crystallize(
        work,
        capsys,
        str(work / "ms"),
        "--method",
        "bf16",
        "--windows",
        "2",
        "--data",
        str(work / DATA),
    )
    with pytest.raises(UserError, match="crystallized checkpoint .*cannot resume"):
        checkpoints.read_info(work / "ms" / "crystal" / "bf16", need_state=True)


def test_dequantize_decodes_once_at_load_into_a_plain_dense_model(
    work: Path, capsys, monkeypatch
) -> None:
    """With ``dequantize`` each encoded tensor is decoded once, at load, into the plain
    model's own dense tensors (the float reference the integer path is measured against)."""
    from h2q_tui.codecs import layout

    crystallize(
        work,
        capsys,
        str(work / "gpt"),
        "--method",
        "int4-g32",
        "--windows",
        "2",
        "--data",
        str(work / DATA),
    )
    decoded: list[str] = []
    real_decode = layout.decode_chain

    def counting_decode(stored, meta):
        decoded.append(meta["codec"])
        return real_decode(stored, meta)

    monkeypatch.setattr(layout, "decode_chain", counting_decode)
    info = checkpoints.read_info(work / "gpt" / "crystal" / "int4-g32")
    model = checkpoints.load_model_from(info, dequantize=True)
    with safe_open(str(info.weights), framework="pt") as handle:
        layout_doc = layout.read_layout(handle.metadata())
    encoded = [name for name, record in layout_doc["tensors"].items() if record is not None]
    assert encoded and len(decoded) == len(encoded)  # once per encoded tensor
    plain = checkpoints.load_model_from(checkpoints.read_info(work / "gpt"))
    assert {k: (v.shape, v.dtype, v.layout) for k, v in model.state_dict().items()} == {
        k: (v.shape, v.dtype, v.layout) for k, v in plain.state_dict().items()
    }
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    with torch.no_grad():
        model(torch.tensor([list(b"Once upon a time")]))
    assert len(decoded) == len(encoded)  # nothing decoded again while it runs


def test_the_sweep_yields_the_original_then_each_method_whatever_the_group(work: Path) -> None:
    """The command measures several methods per pass, the Crystal pane one: the same rows."""
    from h2q_tui.crystal.methods import resolve_methods
    from h2q_tui.crystal.sweep import Plan, load_source, sweep

    source = load_source(checkpoints.read_info(work / "ms"))
    methods, _ = resolve_methods("int8,bf16,rank:1", source.state_dict)
    heldout = source.heldout(str(work / DATA), 4)
    measured = {}
    for group in (1, 3):
        plan = Plan(source, methods, heldout, work / f"out-{group}", group=group, batch=2)
        passes: list[str] = []

        def progress(label: str, windows: int, batch: int, passes=passes) -> None:
            passes.append(label)  # no callback: the pass runs without progress

        rows = list(sweep(plan, source.original_row(), progress))
        assert [r.method for r in rows] == ["original", "int8", "bf16", "rank:1"]
        assert rows[0].comparison is None and all(r.comparison for r in rows[1:])
        assert len(passes) == 3 // group  # one pass over the windows per group
        measured[group] = [(r.method, r.bytes, r.bits_per_byte, r.delta) for r in rows]
    assert measured[1] == measured[3]


def test_pareto_front() -> None:
    from h2q_tui.crystal.sweep import Row

    def row(name, size, delta):
        comparison = None if name == "original" else {"delta_bits_per_byte": delta}
        return Row(name, "", size, {}, 1.0, 0.0, 0.0, 0.0, comparison)

    rows = [row("original", 100, 0), row("a", 50, 0.01), row("b", 60, 0.02), row("c", 20, 0.5)]
    mark_pareto(rows)
    assert [r.pareto for r in rows] == [False, True, False, True]


# ----------------------------------------------------------------------------- tensors-only
def test_tensors_only_on_any_safetensors_file(tmp_path: Path, capsys) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "model.embed_tokens.weight": torch.randn(100, 64, generator=generator),
        "model.layers.0.mlp.up_proj.weight": torch.randn(128, 64, generator=generator),
        "model.layers.0.input_layernorm.weight": torch.ones(64),
        "model.position_ids": torch.arange(16),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    document, out, _ = crystallize(
        tmp_path,
        capsys,
        str(tmp_path / "model.safetensors"),
        "--tensors-only",
        "--method",
        "int8,svd:0.5+int8",
    )
    int8, svd = document["methods"]
    rows = {row["name"]: row for row in int8["tensors"]}
    up = rows["model.layers.0.mlp.up_proj.weight"]
    assert up["steps"] == "int8" and up["bytes_before"] == 128 * 64 * 4
    assert up["bytes_after"] == 128 * 64 + 128 * 2  # int8 values + one fp16 scale per row
    assert 0 < up["relative_error"] < 0.01
    assert rows["model.layers.0.input_layernorm.weight"]["steps"] == ""  # 1-D: kept
    assert rows["model.position_ids"]["relative_error"] == 0  # int64: stored as is
    svd_rows = {row["name"]: row for row in svd["tensors"]}
    assert svd_rows["model.embed_tokens.weight"]["steps"] == "int8"  # no SVD of an embedding
    assert svd_rows["model.layers.0.mlp.up_proj.weight"]["steps"] == "svd:0.5+int8"
    assert int8["bytes_before"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert "model.layers.0.mlp.up_proj.weight" in out and "rel. error" in out
    assert list(tmp_path.iterdir()) == [tmp_path / "model.safetensors", tmp_path / "out.json"]


# ----------------------------------------------------------------------------- bad input
BAD_INPUT = [
    pytest.param("ms", ("--method", "int7"), ["int7", "unknown method"], id="unknown-method"),
    pytest.param("ms", ("--method", "rank:2"), ["rank:2", "R = 2"], id="k-out-of-range"),
    pytest.param("ms", ("--method", "rank:0"), ["rank:0", "at least 1"], id="k-zero"),
    pytest.param("gpt", ("--method", "rank:1"), ["rank:1", "HamLinear"], id="rank-on-gpt"),
    pytest.param("ms", ("--method", "svd:0.5"), ["svd:0.5", "dense"], id="svd-on-microstream"),
    pytest.param(
        "ms",
        ("--method", "int8", "--data", "missing.txt"),
        ["missing.txt", "not found"],
        id="missing-data",
    ),
    pytest.param(
        "ms",
        ("--method", "int8", "--out", "ms/checkpoints/step_00000003/c"),
        ["--out", "inside the source checkpoint"],
        id="out-inside-source",
    ),
    pytest.param("ms", ("--method", "int8,sweep"), ["sweep", "alone"], id="sweep-and-more"),
    pytest.param("ms", ("--method", "int8", "--windows", "-1"), ["--windows"], id="windows"),
    pytest.param(
        "ms", ("--method", "int8", "--windows", "0"), ["--windows", ">= 1"], id="windows-0"
    ),
    pytest.param("ms", ("--method", "int8", "--batch", "0"), ["--batch"], id="batch"),
    pytest.param("ms", ("--method", ""), ["empty method"], id="empty-method"),
    pytest.param(
        "gpt", ("--method", "int4-g32+cal"), ["int4-g32+cal", "--calibrate"], id="cal-no-flag"
    ),
    pytest.param(
        "gpt", ("--method", "int4-g32", "--calibrate", "4000"), ["+cal"], id="flag-no-cal"
    ),
    pytest.param(
        "gpt", ("--method", "int8+cal", "--calibrate", "0"), ["--calibrate"], id="calibrate-0"
    ),
    pytest.param(
        "gpt",
        ("--method", "int8+cal", "--calibrate", "10000000", "--data", DATA),
        ["--calibrate", "has only"],
        id="calibrate-beyond-data",
    ),
    pytest.param(
        "gpt", ("--method", "int8+cal", "--calibrate", "10"), ["one window"], id="calibrate-short"
    ),
    pytest.param(
        "gpt", ("--method", "int4-g32+head:bogus"), ["unknown method"], id="bad-head-method"
    ),
    pytest.param(
        "gpt",
        ("--method", "int8+cal", "--calibrate", "4000", "--tensors-only"),
        ["--tensors-only"],
        id="calibrate-tensors-only",
    ),
]


@pytest.mark.parametrize(("run", "args", "words"), BAD_INPUT)
def test_bad_input(work: Path, run: str, args: tuple[str, ...], words: list[str]) -> None:
    """Through the CLI entry point in-process (test_bad_input.cli_in_process); the cases in
    test_bad_input_in_a_subprocess run the installed way too."""
    before = checkpoint_hashes(work / run)
    assert_user_error(in_process("crystallize", run, *args, cwd=work), *words)
    assert checkpoint_hashes(work / run) == before
    assert not (work / run / "crystal").exists()


@pytest.mark.parametrize(
    ("run", "args", "words"),
    [case for case in BAD_INPUT if case.id in ("rank-on-gpt", "out-inside-source")],
)
def test_bad_input_in_a_subprocess(work: Path, run: str, args, words) -> None:
    before = checkpoint_hashes(work / run)
    assert_user_error(h2q("crystallize", run, *args, cwd=work), *words)
    assert checkpoint_hashes(work / run) == before
    assert not (work / run / "crystal").exists()


@pytest.mark.parametrize("kind", ["corrupt", "foreign"])
def test_corrupt_or_foreign_safetensors(work: Path, kind: str) -> None:
    path = work / "bad.safetensors"
    if kind == "corrupt":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    else:
        save_file({"w": torch.zeros(4, 4)}, str(path), metadata={"format": "pt"})
    before = path.read_bytes()
    words = ["bad.safetensors"] + (["corrupt"] if kind == "corrupt" else ["--tensors-only"])
    run = h2q if kind == "corrupt" else in_process
    result = run("crystallize", "bad.safetensors", "--method", "int8", cwd=work)
    assert_user_error(result, *words)
    assert path.read_bytes() == before and not (work / "crystal").exists()


@pytest.mark.parametrize(
    ("family", "growths", "methods"),
    [
        pytest.param("qrlm", 1, "int8,rank:2+int8,rank-shared:1", id="qrlm-grown"),
        pytest.param("hamiltonian-llm", 0, "svd:0.5+int8,int4-g32", id="hamiltonian-llm"),
        pytest.param("h2q-transformer", 0, "rank:2,bf16", id="h2q-transformer"),
    ],
)
def test_every_family_loads_crystallized(tmp_path: Path, capsys, family, growths, methods) -> None:
    """Untrained small models of the other families, saved as checkpoints (no training)."""
    from h2q_tui.config import ModelConfig, RunConfig
    from h2q_tui.models import build_model

    model_config = ModelConfig(
        family=family, d_model=64, n_layers=2, n_heads=2, context=16, factor_size=8, rank=3
    )
    torch.manual_seed(0)
    model = build_model(model_config)
    for _ in range(growths):
        model.grow_ffn_rank()
    config = RunConfig(model=model_config)
    checkpoints.save_checkpoint(tmp_path / "run", model, config, 5, "r1", {"rank_growths": growths})
    (tmp_path / DATA).write_bytes(english_text(4000))
    document, out, _ = crystallize(
        tmp_path,
        capsys,
        str(tmp_path / "run"),
        "--method",
        methods,
        "--data",
        str(tmp_path / DATA),
        "--windows",
        "4",
        "--batch",
        "4",
    )
    for row in document["rows"][1:]:
        info = checkpoints.read_info(row["path"])
        loaded = checkpoints.load_model_from(info)
        rank = row["method"].startswith("rank")
        assert info.rank_growths == (0 if rank else growths)
        if row["method"] == "int8":
            expected = model.state_dict()
            for name, tensor in loaded.state_dict().items():
                assert tensor.shape == expected[name].shape, name
        assert math.isfinite(row["bits_per_byte"]) and 0 <= row["same_top1"] <= 1


def test_a_bpe_model_keeps_its_tokenizer(tmp_path: Path, capsys, text_file: Path) -> None:
    from test_tokenizer import SMALL
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer.train(
        [str(text_file)], trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet)
    )
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    code = cli.main(
        [
            "--no-ui",
            "--preset",
            "gpt",
            "--data",
            str(text_file),
            "--tokenizer",
            str(tmp_path / "tokenizer.json"),
            "--set",
            f"model.vocab_size={tokenizer.get_vocab_size()}",
            *SMALL,
            "--max-steps",
            "2",
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    capsys.readouterr()
    document, out, _ = crystallize(
        tmp_path,
        capsys,
        str(tmp_path / "run"),
        "--method",
        "int8",
        "--data",
        str(text_file),
        "--windows",
        "6",
    )
    row = document["rows"][1]
    folder = Path(row["path"])
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert row["bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    source = Path(document["source"]["checkpoint"])
    assert document["rows"][0]["bytes"] == sum(
        (source / n).stat().st_size for n in ("model.safetensors", "tokenizer.json")
    )
    assert document["data"]["bytes_per_token"] > 1 and "tokens" in out
    assert cli.main(["eval", str(folder), "--data", str(text_file), "--windows", "6"]) == 0
    assert f"bpb={row['bits_per_byte']:.4f}" in capsys.readouterr().out


def test_settings_that_save_no_bytes_say_so(work: Path, capsys) -> None:
    _, _, err = crystallize(
        work,
        capsys,
        str(work / "gpt"),
        "--method",
        "svd:1000",
        "--windows",
        "2",
        "--data",
        str(work / DATA),
    )
    assert "note: svd:1000 saves no bytes on" in err and "break-even" in err
    assert "note: svd:1000 saves no bytes on disk" in err


def test_an_already_crystallized_checkpoint_is_refused(work: Path, capsys) -> None:
    crystallize(
        work,
        capsys,
        str(work / "ms"),
        "--method",
        "int8",
        "--windows",
        "2",
        "--data",
        str(work / DATA),
    )
    folder = work / "ms" / "crystal" / "int8"
    assert cli.main(["crystallize", str(folder), "--method", "int4-g32"]) == 2
    assert "already crystallized (int8)" in capsys.readouterr().err
    assert cli.main(["crystallize", str(folder), "--method", "int8", "--tensors-only"]) == 2
    assert "already crystallized" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrated_mixed_methods_write_the_llama_columns(work: Path, capsys) -> None:
    """--calibrate and --details: the calibration in the JSON, the llama.cpp columns and the
    percentile tables printed, and a +cal folder storing exactly the parts of the plain one."""
    methods = "int4-g32+head:int8,int4-g32+head:int8+cal"
    document, out, err = crystallize(
        work, capsys, str(work / "gpt"), "--method", methods, "--calibrate", "4000",
        "--data", str(work / DATA), "--windows", "8", "--details",
    )  # fmt: skip
    assert document["calibration"]["tokens"] == 4000 and document["calibration"]["weights"]
    assert "wte.weight" not in document["calibration"]["weights"]  # tied: plain rounding
    plain, calibrated = document["rows"][1:]
    for key in ("kld_median", "kld_max", "mean_delta_p", "ln_ppl_ratio", "same_top1_error"):
        assert key in calibrated
    assert set(calibrated["delta_p_percentiles"]) == {k for k, _ in measure.PERCENTILES}
    layouts = []
    for row in (plain, calibrated):
        with safe_open(str(Path(row["path"]) / "model.safetensors"), framework="pt") as handle:
            layouts.append(
                {k: (handle.get_tensor(k).dtype, handle.get_tensor(k).shape) for k in handle.keys()}  # noqa: SIM118
            )
    assert layouts[0] == layouts[1]
    assert "wte.weight::q" in layouts[0]  # the tied embedding/head in int8
    assert "ln PPL ratio" in out and "Δp % percentiles" in out and "means ± s.e." in out
    assert "calibration:" in err
