"""The command line as a user runs it: headless output, metrics file, eval's last line, attach errors.

Commands that load torch run in this process (``h2q_in_process``) where the process is not what
a case checks; eval's output and the cases that never load torch run as a subprocess.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from run_cli import h2q, h2q_in_process


@pytest.mark.slow  # 12 s of microstream training; the header's first line: test_console_printer
def test_no_ui_microstream_prints_the_source_parameter_count_first(tmp_path):
    result = h2q(
        "--no-ui",
        "--preset",
        "microstream",
        "--max-steps",
        "2",
        "--run-dir",
        "run",
        "--set",
        "eval.heldout_bytes=4096",
        "--set",
        "eval.horizon_val_fraction=0.01",  # the next-chunk check, cut to a few windows
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("run dir")]
    assert lines[0] == "parameters: 1,127,968"
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[0]["event"] == "run_started" and records[0]["n_params"] == 1_127_968
    assert [r["step"] for r in records if r["event"] == "step"] == [1, 2]
    assert any(r["event"] == "eval" and r["split"] == "heldout" for r in records)


def test_eval_last_line_is_bpb_and_noise_is_incompressible(tmp_path, text_file):
    trained = h2q_in_process(
        "--no-ui",
        "--preset",
        "tiny",
        "--data",
        str(text_file),
        "--max-steps",
        "60",
        "--run-dir",
        "run",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(16 * 1024))
    result = h2q("eval", "run", "--data", str(noise), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("bpb=")
    # the progress bar went to stderr and ends at its final state + newline (text mode reads
    # its \r as a line break; tests/test_progress_bar.py checks the redraw in place)
    final = r"(?:^|[\r\n])evaluating \[#+\] ([\d,]+)/([\d,]+) windows 100% [\d.]+ s\n"
    bar = re.search(final, result.stderr)
    assert bar is not None and bar.group(1) == bar.group(2) == "511", result.stderr
    assert "evaluating" not in result.stdout
    assert float(last.removeprefix("bpb=")) >= 7.9  # an honest evaluation cannot compress noise
    text = h2q_in_process("eval", "run", "--data", str(text_file), "--windows", "20", cwd=tmp_path)
    assert "20 windows" in text.stdout and float(text.stdout.strip().splitlines()[-1][4:]) < 7.0


@pytest.mark.parametrize(
    "args,named", [(["attach", "no-such-run"], "no-such-run"), (["attach"], "run_dirs")]
)
def test_attach_bad_input_is_one_line_exit_2(tmp_path, args, named):
    result = h2q(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and named in result.stderr


def test_version_comes_from_the_package_metadata_with_torchs(tmp_path):
    from importlib.metadata import version

    import torch

    result = h2q_in_process("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"h2q-tui {version('h2q-tui')} (torch {torch.__version__}")
    assert len(result.stdout.splitlines()) == 1


def test_presets_lists_every_bundled_preset_with_family_and_parameters(tmp_path):
    from h2q_tui.config import preset_names, presets_dir

    result = h2q_in_process("presets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["preset", "family", "parameters", "description"]
    assert [row.split()[0] for row in rows] == preset_names()
    by_name = {row.split()[0]: row.split(maxsplit=3) for row in rows}
    # counted on the meta device: the 124 M preset lists as fast as the tiny one
    assert by_name["hamiltonian-llm-124m"][1:3] == ["hamiltonian-llm", "123,511,160"]
    assert by_name["microstream"][1:3] == ["microstream", "1,127,968"]
    assert by_name["tiny"][1:3] == ["microstream", "77,320"]
    first_comment = (presets_dir() / "tiny.toml").read_text().splitlines()[0].lstrip("# ")
    assert by_name["tiny"][3] == first_comment


def test_main_help_lists_every_subcommand_and_the_default_preset(tmp_path):
    from h2q_tui.cli.main import SUBCOMMANDS
    from h2q_tui.training.session import DEFAULT_PRESET

    result = h2q("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("subcommands", 1)[1]
    for name in SUBCOMMANDS:
        assert re.search(rf"^  {re.escape(name)}\b", listed, re.M), name
    assert f"(default: {DEFAULT_PRESET})" in result.stdout
    assert "--version" in result.stdout and "(default: auto)" in result.stdout


@pytest.mark.parametrize(
    "command,defaults",
    [
        ("eval", ["windows per forward pass (default: 32)"]),
        ("generate", ["(default: 0.7)", "(default: 50)", "(default: 0.5)", "(default: sample)"]),
        ("steer-eval", ["(default: 16)", "(default: -1,0,0.5,1)", "(default: 160)"]),
        ("attach", []),
        ("presets", []),
    ],
)
def test_every_subcommand_help_shows_its_defaults(tmp_path, command, defaults):
    result = h2q_in_process(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: h2q-tui {command}")
    for text in defaults:
        assert text in result.stdout, text
    assert "(default: None)" not in result.stdout


def test_max_steps_0_sets_up_reports_and_exits_0_without_training(tmp_path, text_file):
    result = h2q_in_process(
        *("--no-ui", "--preset", "tiny", "--data", str(text_file), "--max-steps", "0"),
        *("--max-seconds", "60", "--run-dir", "run"),  # the backstop if 0 meant "no limit"
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "finished (max_steps) at step 0" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert not [r for r in records if r["event"] == "step"]
    assert records[-1]["event"] == "run_finished" and records[-1]["reason"] == "max_steps"
