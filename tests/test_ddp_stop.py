"""Ctrl-C on a two-rank torchrun job started with ``h2q-tui torchrun``: one stop notice (rank 0's),
no traceback, exit 130, the run saved at the agreed step, every process gone, the lock free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_helpers import all_gone, family, last_record, lock_is_free
from run_cli import ENV
from test_bad_input import TEXT


@pytest.mark.slow  # two ranks starting on 2 busy cores: ~40 s
def test_ctrl_c_on_h2q_tui_torchrun_saves_once_and_exits_130(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_bytes(TEXT)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "h2q_tui", "torchrun", "--standalone", "--nproc_per_node=2",
         "-m", "h2q_tui", "--no-ui", "--preset", "tiny", "--data", "data.txt",
         "--set", "train.precision=fp32", "--run-dir", "run", "--max-steps", "100000"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )  # fmt: skip
    metrics = tmp_path / "run" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and metrics.read_text().count('"event":"step"') >= 3):
            assert launcher.poll() is None and time.monotonic() < deadline, "no training steps"
            time.sleep(0.3)
        members = family(launcher.pid)
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        out, err = launcher.communicate(timeout=120)
        assert all_gone(members, 10) == []
    finally:
        for process in family(launcher.pid):
            process.kill()
    assert launcher.returncode == 130, err[-3000:]
    assert err.count("stopping after this step") == 1, err
    assert "Traceback" not in err and "SignalException" not in err, err
    finished = last_record(tmp_path / "run")
    assert finished["event"] == "run_finished" and finished["reason"] == "interrupted"
    assert f"checkpoints/step_{finished['step']:08d}" in out
    assert lock_is_free(tmp_path / "run")
