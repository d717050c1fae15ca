"""``h2q-tui hotstart``: load → first token by phase, the fast loader, the page-cache helpers."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from h2q_tui import checkpoints
from h2q_tui.checkpoints import page_cache as cold
from h2q_tui.checkpoints import timing as timeline
from h2q_tui.cli import hotstart as command
from h2q_tui.config import ModelConfig, RunConfig
from h2q_tui.hotstart import measure, phases
from h2q_tui.models import build_model

MAIN = (
    "from h2q_tui.cli.hotstart import run_as_script; import sys; "
    "sys.exit(run_as_script(sys.argv[1:]))"
)
SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "context": 16, "factor_size": 8, "rank": 3}


def save_small(root: Path, family: str, growths: int = 0, **overrides) -> Path:
    """An untrained small checkpoint of ``family`` (no training): its run dir."""
    model_config = ModelConfig(family=family, **{**SMALL, **overrides})
    torch.manual_seed(0)
    model = build_model(model_config)
    for _ in range(growths):
        model.grow_ffn_rank()
    run = root / f"{family}-{growths}-{len(overrides)}"
    config = RunConfig(model=model_config)
    checkpoints.save_checkpoint(run, model, config, 7, "r1", {"rank_growths": growths})
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return save_small(tmp_path_factory.mktemp("hot"), "microstream")


def in_subprocess(*args: str) -> tuple[int, str, str]:
    """The command in a fresh ``python -c``: exit status, stdout, stderr."""
    result = subprocess.run(
        [sys.executable, "-c", MAIN, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return result.returncode, result.stdout, result.stderr


def assert_phases_add_up(sample: dict) -> None:
    named = {k: v for k, v in sample["phases"].items() if k != "rest"}
    assert named and all(v > 0 for v in named.values()), sample["phases"]
    assert sample["phases"].get("rest", 0.0) >= 0
    assert math.isclose(sum(sample["phases"].values()), sample["total_s"], rel_tol=1e-9)


# ----------------------------------------------------------------------------- fast loader
@pytest.mark.parametrize(
    ("family", "growths", "overrides"),
    [
        pytest.param("microstream", 0, {}, id="microstream"),
        pytest.param("microstream", 0, {"shared_bank": False}, id="microstream-own-banks"),
        pytest.param("microstream", 0, {"ham_init": "unit", "final_norm": True}, id="unit"),
        pytest.param("h2q-transformer", 0, {}, id="h2q-transformer"),
        pytest.param("qrlm", 1, {}, id="qrlm-grown"),
        pytest.param("gpt", 0, {}, id="gpt-tied"),
        pytest.param("gpt", 0, {"tie_weights": False}, id="gpt-untied"),
        pytest.param("hamiltonian-llm", 0, {}, id="hamiltonian-llm"),
    ],
)
def test_fast_loader_equals_the_normal_loader(tmp_path, family, growths, overrides) -> None:
    info = checkpoints.read_info(save_small(tmp_path, family, growths, **overrides))
    normal = checkpoints.load_model_from(info).eval()
    fast = checkpoints.load_checkpoint(info, "fast").model
    assert type(fast) is type(normal)
    normal_state, fast_state = normal.state_dict(), fast.state_dict()
    assert list(fast_state) == list(normal_state)
    for name, tensor in normal_state.items():
        assert torch.equal(fast_state[name], tensor), name
        assert fast_state[name].dtype == tensor.dtype and fast_state[name].device.type == "cpu"
    # tied and shared tensors stay one parameter
    assert len(list(fast.parameters())) == len(list(normal.parameters()))
    assert all(p.requires_grad for p in fast.parameters())
    if family in ("gpt", "hamiltonian-llm"):
        head = fast.lm_head.weight
        embedding = fast.input_embedding().weight
        assert (head is embedding) == (head is embedding) is overrides.get("tie_weights", True)
    idx = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fast(idx)[0], normal(idx)[0])
    assert fast.energy.device.type == "cpu"
    # generation, token for token
    from h2q_tui.generation.generate import generate_text
    from h2q_tui.generation.sampling import SamplingConfig
    from h2q_tui.generation.text import Codec

    texts = [
        generate_text(m, Codec(), "Once", sampling=SamplingConfig(max_new_tokens=12, seed=3))
        for m in (normal, fast)
    ]
    assert texts[0] == texts[1]


def test_fast_loader_refuses_a_file_that_does_not_match(tmp_path) -> None:
    from h2q_tui.errors import UserError

    info = checkpoints.read_info(save_small(tmp_path, "gpt"))
    from h2q_tui.checkpoints import fast

    skeleton = fast.build_unfilled(info)
    tensors = fast.read_tensors(info)
    tensors.pop("wpe.weight")
    with pytest.raises(UserError, match="does not match its model: missing"):
        fast.assign_weights(info, skeleton, tensors)
    tensors = fast.read_tensors(info)
    tensors["wpe.weight"] = torch.zeros(3, 3)
    with pytest.raises(UserError, match="wpe.weight is \\[3, 3\\] in the file"):
        fast.assign_weights(info, fast.build_unfilled(info), tensors)


def test_fast_loader_checks_a_crystallized_checkpoint_beside_its_load(tmp_path, capsys):
    from h2q_tui.cli.crystallize import main as crystallize

    run = save_small(tmp_path, "gpt")
    data = tmp_path / "heldout.txt"
    data.write_bytes(b"Once upon a time there was a little cat. " * 100)
    out = tmp_path / "crystal"
    assert crystallize([str(run), "--method", "int8", "--data", str(data), "--out", str(out)]) == 0
    capsys.readouterr()
    folder = next(path.parent for path in out.rglob("model.safetensors"))
    info = checkpoints.read_info(folder)
    assert info.crystal is not None
    normal, fast = (
        checkpoints.load_model_from(info),
        checkpoints.load_checkpoint(info, "fast").model,
    )
    for name, tensor in normal.state_dict().items():
        assert torch.equal(fast.state_dict()[name], tensor), name
    for (name, module), other in zip(normal.named_modules(), fast.modules(), strict=True):
        if hasattr(module, "weight") and not isinstance(module.weight, torch.Tensor):
            assert torch.equal(module.weight.decoded(), other.weight.decoded()), name  # packed
    _, _, _, times = phases.load_for_first_token(folder, "Once", rate_tokens=4)
    assert {"info", "read", "build", "assign", "verify_wait"} <= set(times.phases)


# ----------------------------------------------------------------------------- phases
@pytest.mark.parametrize("method", ["fast", "fast-beside", "naive"])
def test_in_process_phases_are_positive_and_add_up(run_dir, tmp_path, method, monkeypatch) -> None:
    from h2q_tui.checkpoints import find

    beside = method == "fast-beside"  # a file as large as OVERLAP_BYTES: checked beside
    monkeypatch.setattr(find, "OVERLAP_BYTES", 0 if beside else find.OVERLAP_BYTES)
    method = "fast" if beside else method
    info = checkpoints.read_info(run_dir)
    pickle_path = phases.write_pickle_state(info, tmp_path) if method == "naive" else None
    _, model, _, times = phases.load_for_first_token(
        run_dir, "Once upon", method, pickle_path, rate_tokens=8
    )
    if method == "fast":  # mapped first; checksums summed beside build/assign/forward (a large
        # file) or when the first token waits for them (a small one: all in verify_wait)
        order = ["info", "read", "build", "assign", "first_forward", "first_token"]
        order.append("verify_wait")
        assert (times.overlapped.get("verify", 0) > 0) == beside
    else:  # checksums first (in info), built as training does, pickle, load_state_dict
        order = ["info", "build", "read", "assign", "first_forward", "first_token"]
        assert times.overlapped == {}
    assert list(times.phases) == [*order, "rest"]
    assert_phases_add_up({"phases": times.phases, "total_s": times.total_s})
    assert times.tokens_per_s > 0 and times.rate_tokens == 8
    assert not model.training


def damage_a_tensor(weights: Path) -> None:
    """Flip one byte of the last tensor's data (the header stays readable)."""
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("beside", [True, False])
def test_the_fast_paths_checksum_pass_refuses_a_damaged_file(tmp_path, beside, monkeypatch) -> None:
    from h2q_tui.checkpoints import find
    from h2q_tui.errors import UserError

    monkeypatch.setattr(find, "OVERLAP_BYTES", 0 if beside else find.OVERLAP_BYTES)
    run = save_small(tmp_path, "gpt")
    folder = checkpoints.read_info(run).weights.parent
    damage_a_tensor(folder / "model.safetensors")
    with pytest.raises(UserError, match="damaged"):
        phases.load_for_first_token(folder, "Once", rate_tokens=2)
    with pytest.raises(UserError, match="damaged"):
        checkpoints.load_checkpoint(folder, "fast")


def test_a_run_dir_whose_latest_is_damaged_loads_the_one_before(tmp_path) -> None:
    model_config = ModelConfig(family="gpt", **SMALL)
    torch.manual_seed(0)
    model = build_model(model_config)
    run = tmp_path / "run"
    for step in (3, 7):
        checkpoints.save_checkpoint(run, model, RunConfig(model=model_config), step, "r1", {})
    damage_a_tensor(checkpoints.read_info(run).weights)
    info, _, _, times = phases.load_for_first_token(run, "Once", rate_tokens=2)
    assert info.step == 3 and "step" in info.note
    assert_phases_add_up({"phases": times.phases, "total_s": times.total_s})


def test_a_fresh_process_times_its_start_and_imports(run_dir) -> None:
    info = checkpoints.read_info(run_dir)
    sample = measure.run_probe(info.weights, "fast", None, "Once", 4, 1)
    assert list(sample["phases"])[:4] == ["start", "python", "import_torch", "import_h2q"]
    assert_phases_add_up(sample)
    assert sample["phases"]["import_torch"] > 0.05  # a real import, not a cached module
    assert sample["tokens_per_s"] > 0 and sample["rate_tokens"] == 4


def test_the_command_prints_a_table_writes_json_and_records_loads(run_dir, tmp_path, capsys):
    timeline.clear()
    out = tmp_path / "hot.json"
    argv = [str(run_dir), "--repeats", "2", "--in-process-only", "--json", str(out)]
    assert command.main(argv) == 0
    printed = capsys.readouterr().out
    for words in ("in-process", "naive in-process", "first_forward", "total → first token"):
        assert words in printed
    assert "warm" in printed and "tokens/s" in printed
    report = json.loads(out.read_text())
    assert report["checkpoint"] == str(checkpoints.read_info(run_dir).weights)
    assert report["machine"] and report["machine_info"]["cpu_model"] == report["machine"]
    assert report["repeats"] == 2 and report["cold"] is False
    assert set(report["columns"]) == {"in_process", "naive_in_process"}
    for column in report["columns"].values():
        assert len(column["samples"]) == 2
        for sample in column["samples"]:
            assert_phases_add_up(sample)
            assert sample["cold"] is False
        phase = column["phases"]["read"]
        assert phase["min"] <= phase["median"] <= phase["max"]
    events = [e for e in timeline.events() if e.consumer == "hotstart"]
    assert len(events) == 4 and all(e.kind == "load" and e.cold is False for e in events)
    assert events[0].step == 7 and "build" in events[0].phases


@pytest.mark.slow
def test_the_command_with_fresh_processes(run_dir, tmp_path) -> None:
    out = tmp_path / "hot.json"
    code, printed, errors = in_subprocess(str(run_dir), "--repeats", "1", "--json", str(out))
    assert code == 0, errors
    report = json.loads(out.read_text())
    assert set(report["columns"]) == {"fresh", "in_process", "naive_in_process", "naive_fresh"}
    assert "import_torch" in printed


# ----------------------------------------------------------------------------- page cache
def test_cold_on_tmpfs_says_cold_unavailable(run_dir, capsys) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or cold.in_memory_filesystem(shm) != "tmpfs":
        pytest.skip("/dev/shm is absent or not tmpfs")
    target = shm / f"h2q-hotstart-test-{os.getpid()}"
    shutil.copytree(run_dir, target)
    try:
        argv = [str(target), "--cold", "--repeats", "1", "--in-process-only", "--no-naive"]
        assert command.main(argv) == 0
        printed = capsys.readouterr().out
        assert "cold unavailable" in printed and "tmpfs" in printed
        report = measure.measure(
            measure.Request(str(target), repeats=1, cold=True, columns=("in_process",))
        )
        assert report["cold"] is False and "tmpfs" in report["cold_unavailable"]
        assert all(not s["cold"] for s in report["columns"]["in_process"]["samples"])
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_dropping_a_files_pages_on_a_disk(tmp_path) -> None:
    if cold.in_memory_filesystem(tmp_path):
        pytest.skip(f"{tmp_path} is in memory")
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(1 << 20))
    measure.warm_up(path)
    assert cold.residency(path).fraction > 0.9
    why = cold.drop_file_cache(path)
    if why is not None:
        pytest.skip(f"this file system keeps the pages: {why}")
    assert cold.residency(path).fraction <= cold.RESIDENT_LIMIT


def test_a_mapping_held_elsewhere_keeps_the_pages_and_is_reported(tmp_path) -> None:
    import mmap

    if cold.in_memory_filesystem(tmp_path):
        pytest.skip(f"{tmp_path} is in memory")
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(1 << 20))
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
        try:
            assert sum(mapping[i] for i in range(0, len(mapping), mmap.PAGESIZE)) >= 0
            why = cold.drop_file_cache(path)
            assert why is not None and "stayed resident" in why
        finally:
            mapping.close()


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_one_line_and_exit_2(tmp_path, run_dir) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    empty_run = tmp_path / "empty-run"
    (empty_run / "checkpoints").mkdir(parents=True)
    cases = [
        ([str(tmp_path / "missing")], "missing"),
        ([str(corrupt)], "corrupt"),
        ([str(empty_run)], "checkpoint"),
        ([str(run_dir), "--repeats", "0"], "--repeats must be at least 1"),
        ([str(run_dir), "--repeats", "-2"], "--repeats must be at least 1"),
        ([str(run_dir), "--json", str(tmp_path / "no" / "such" / "x.json")], "does not exist"),
    ]
    for argv, words in cases:
        code, printed, errors = in_process_main(argv)
        assert code == 2, (argv, errors)
        assert len(errors.strip().splitlines()) == 1 and words in errors, (argv, errors)
        assert printed == ""


def in_process_main(argv: list[str]) -> tuple[int, str, str]:
    """command.run_as_script in this process, with its output captured."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = command.run_as_script(argv)
    return code, out.getvalue(), err.getvalue()


def test_bad_input_in_a_subprocess(tmp_path) -> None:
    code, printed, errors = in_subprocess(str(tmp_path / "nowhere"), "--repeats", "1")
    assert code == 2 and printed == ""
    assert len(errors.strip().splitlines()) == 1 and "nowhere" in errors


@pytest.mark.parametrize("beside", [True, False])
def test_a_small_file_is_checked_when_waited_for_a_large_one_beside_the_load(
    run_dir, beside, monkeypatch
) -> None:
    from h2q_tui.checkpoints import fast, find

    monkeypatch.setattr(find, "OVERLAP_BYTES", 0 if beside else 1 << 40)
    info = checkpoints.read_info(run_dir)
    check = find.BackgroundCheck(info.weights, fast.read_tensors(info))
    assert check.beside == beside
    assert (check._thread.ident is not None) == beside  # a small file: no thread started
    assert check.wait() is None and check.seconds > 0
