"""benchmarks/threads.py: its CPU hog ends, its table and JSON name the machine and the load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.benchmark_module import load

bench = load("threads")
ROOT = Path(__file__).resolve().parents[1]


def test_the_hog_starts_one_busy_loop_per_core_and_ends_them_on_an_error():
    with pytest.raises(KeyboardInterrupt):
        with bench.CpuHog(2, seconds=60) as hog:
            pids = [p.pid for p in hog.processes]
            assert hog.alive() == 2
            raise KeyboardInterrupt  # as Ctrl-C would
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(pid) for pid in pids)


def test_a_hog_ends_by_itself_after_its_bound():
    with bench.CpuHog(1, seconds=0.2) as hog:
        hog.processes[0].wait(timeout=30)
        assert hog.alive() == 0


@pytest.mark.slow  # fresh processes train and decode beside a busy loop per core: ~1 min
def test_the_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path):
    out = tmp_path / "threads.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "threads.py"), "--quick"]
    command += ["--settings", "1", "auto", "--conditions", "quiet", "loaded", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "kernels")])}
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "auto / best fixed: training" in result.stdout
    document = json.loads(out.read_text())
    assert document["machine"]["cpu_model"] and document["machine"]["torch"]
    for condition in ("quiet", "loaded"):
        entry = document["conditions"][condition]
        assert len(entry["load_average_before"]) == 3
        rows = entry["rows"]
        assert set(rows) == {"1", "auto"} and rows["auto"]["policy"] == "PASSIVE"
        assert rows["1"]["training_tokens_per_s"] > 0 and rows["auto"]["decoding_tokens_per_s"] > 0
        assert rows["auto"]["training_vs_best_fixed"] > 0
    assert document["conditions"]["loaded"]["hogs"] == document["usable_cores"]
