"""The command line as a user runs it: headless output, metrics file, eval's last line, attach errors."""

from __future__ import annotations

import json
import os

import pytest
from run_cli import h2q


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
    trained = h2q(
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
    noise.write_bytes(os.urandom(64 * 1024))
    result = h2q("eval", "run", "--data", str(noise), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("bpb=")
    assert float(last.removeprefix("bpb=")) >= 7.9  # an honest evaluation cannot compress noise
    text = h2q("eval", "run", "--data", str(text_file), "--windows", "20", cwd=tmp_path)
    assert "20 windows" in text.stdout and float(text.stdout.strip().splitlines()[-1][4:]) < 7.0


@pytest.mark.parametrize(
    "args,named", [(["attach", "no-such-run"], "no-such-run"), (["attach"], "run_dirs")]
)
def test_attach_bad_input_is_one_line_exit_2(tmp_path, args, named):
    result = h2q(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and named in result.stderr
