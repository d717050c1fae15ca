"""``h2q-tui generate`` and ``steer-eval`` from the command line, including bad input.

The CLI's entry point runs in this process (no torch start-up per case); the first generation
runs as ``python -m h2q_tui`` in a subprocess, and the same text must come back in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_cli import h2q, h2q_in_process


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny model trained for 30 steps on the embedded corpus."""
    root = tmp_path_factory.mktemp("gen")
    result = h2q_in_process(
        "--no-ui", "--preset", "tiny", "--max-steps", "30", "--run-dir", "run", cwd=root
    )
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_generate_streams_the_prompt_and_continuation(run_dir):
    result = h2q(
        "generate",
        str(run_dir),
        "--prompt",
        "Once upon",
        "--max-new-tokens",
        "30",
        cwd=run_dir.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon") and len(result.stdout.encode()) > len("Once upon")
    assert "30 tokens in" in result.stderr and "tokens/s" in result.stderr
    again = h2q_in_process(
        "generate",
        str(run_dir),
        "--prompt",
        "Once upon",
        "--max-new-tokens",
        "30",
        cwd=run_dir.parent,
    )
    assert again.stdout == result.stdout  # same seed, same text, in another process too


@pytest.mark.parametrize("mode", ["lookahead", "flow"])
def test_generate_search_modes(run_dir, mode):
    result = h2q_in_process(
        "generate",
        str(run_dir),
        "--prompt",
        "The",
        "--mode",
        mode,
        "--max-new-tokens",
        "8",
        cwd=run_dir.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "8 tokens in" in result.stderr


def test_generate_with_steer_says_so_and_strength_zero_changes_nothing(run_dir):
    plain = h2q_in_process(
        "generate", str(run_dir), "--prompt", "A", "--max-new-tokens", "20", cwd=run_dir
    )
    zero = h2q_in_process(
        "generate",
        str(run_dir),
        "--prompt",
        "A",
        "--max-new-tokens",
        "20",
        "--steer",
        "dog",
        "--strength",
        "0",
        "--mode",
        "sample",
        cwd=run_dir,
    )
    steered = h2q_in_process(
        "generate",
        str(run_dir),
        "--prompt",
        "A",
        "--max-new-tokens",
        "20",
        "--steer",
        "dog",
        "--strength",
        "1.5",
        cwd=run_dir,
    )
    assert zero.stdout == plain.stdout
    assert "steering towards 'dog' with strength +1.5 at layer 0" in steered.stderr
    assert steered.stdout != plain.stdout


def test_interactive_menu_runs_a_mode_and_quits(run_dir):
    result = h2q_in_process(
        "generate",
        str(run_dir),
        "--interactive",
        "--max-new-tokens",
        "10",
        stdin="2\ncat\n0.5\nOnce\n9\n3\n2\nThe\nq\n",
        cwd=run_dir,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Select Mode (1-4/q)") == 4
    assert "choose 1, 2, 3, 4 or q" in result.stdout and "Target word" in result.stdout
    assert result.stderr.count("10 tokens in") == 2


def test_interactive_menu_ends_cleanly_at_end_of_input(run_dir):
    result = h2q_in_process("generate", str(run_dir), "--interactive", stdin="", cwd=run_dir)
    assert result.returncode == 0 and "Traceback" not in result.stderr


def test_steer_eval_prints_a_table_with_a_zero_row_and_writes_json(run_dir, tmp_path):
    out = tmp_path / "steer.json"
    result = h2q_in_process(
        "steer-eval",
        str(run_dir),
        "--word",
        "the",
        "--strengths",
        "-1,0.5",
        "--samples",
        "2",
        "--max-new-tokens",
        "20",
        "--json",
        str(out),
        cwd=run_dir,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["strength", "hit", "rate"]
    assert [line.split()[0] for line in lines[1:]] == ["-1.00", "+0.00", "+0.50"]
    payload = json.loads(out.read_text())
    assert payload["word"] == "the" and [r["strength"] for r in payload["rows"]] == [-1, 0, 0.5]
    assert all(len(r["samples"]) == 2 for r in payload["rows"])
    assert payload["rows"][1]["delta_logprob"] == 0.0


@pytest.mark.parametrize(
    "args, words",
    [
        (["generate", "nowhere"], "checkpoint not found"),
        (["generate", "RUN", "--mode", "steer"], "needs a target word"),
        (["generate", "RUN", "--steer", "cat", "--layer", "7"], "layer must be in 0..1"),
        (["generate", "RUN", "--top-p", "0"], "top-p"),
        (["steer-eval", "RUN", "--word", "cat", "--strengths", "a,b"], "--strengths"),
        (["steer-eval", "RUN", "--word", "cat", "--samples", "0"], "--samples"),
        (["steer-eval", "RUN"], "--word"),
    ],
)
def test_bad_generation_input_is_one_line(run_dir, args, words):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    result = h2q_in_process(*args, cwd=run_dir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("h2q-tui: error")]
    assert len(errors) == 1 and words in errors[0], result.stderr
