"""benchmarks/serve.py end to end at a tiny size: its floors, its curl client, the load test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.benchmark_module import BENCHMARKS, load


@pytest.mark.slow  # ~7 s: a benchmark script end to end
def test_the_serve_benchmark_reports_every_figure(tmp_path) -> None:
    out = tmp_path / "serve.json"
    command = [sys.executable, str(BENCHMARKS / "serve.py"), "--single", "2", "--clients", "2"]
    command += ["--requests", "2", "--num-predict", "8", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["machine"] and report["in_process_tokens_per_s"] > 0
    for key in ("floor_tokens_per_s", "unwoken_tokens_per_s", "unstreamed_server_tokens_per_s"):
        assert report[key] > 0
    assert report["constrained_server_tokens_per_s"] > 0
    direct = report["stacks"]["direct"]  # the default stack
    assert direct["v1_tokens_per_s"] > 0 and "points over the floor" in result.stdout
    assert "/v1/completions (SSE)" in result.stdout and "structured output" in result.stdout
    assert direct["concurrent"]["requests_ok"] == 4 and direct["concurrent"]["errors"] == 0
    bench = load("serve")
    assert (direct["curl_server_tokens_per_s"] is None) == (bench.CURL is None)
    assert "no wake-ups" in result.stdout


def test_curl_stream_has_no_rate_without_a_final_object() -> None:
    bench = load("serve")
    if bench.CURL is None:
        pytest.skip("curl is not installed")
    # a refused connection: curl prints nothing
    assert bench.curl_stream("http://127.0.0.1:9", "x:latest", {"num_predict": 1}) is None
