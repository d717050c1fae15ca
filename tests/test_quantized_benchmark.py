"""benchmarks/quantized.py's parts that can be wrong without a timing: the per-phase split
restores the step program's product function, and the tables name what they measure."""

from __future__ import annotations

from benchmark_module import load
from ollama_helpers import make_run

from h2q_tui.generation import steps_hamiltonian, steps_transformer

bench = load("quantized")


def test_the_phase_split_times_every_product_and_puts_the_function_back(tmp_path):
    run = make_run(tmp_path)
    model, program = bench.step_program_of(str(run), False)
    before = steps_transformer.linear, steps_hamiltonian.linear
    products_ms, rest_ms = bench.products_share(program, 4)
    assert products_ms > 0 and rest_ms > 0
    assert (steps_transformer.linear, steps_hamiltonian.linear) == before


def test_the_tables_show_each_variant_against_the_first():
    rows = [
        {"variant": "fp32 (original)", "tokens_per_s": 100.0, "products_ms": 1.0,
         "rest_ms": 1.0, "disk_bytes": 8e6, "rss_added_bytes": 20e6, "first_token_s": 3.0},
        {"variant": "int8 on integers", "tokens_per_s": 150.0, "products_ms": 0.5,
         "rest_ms": 1.0, "disk_bytes": 2e6, "rss_added_bytes": 15e6, "first_token_s": 3.0},
    ]  # fmt: skip
    lines = bench.table(rows).splitlines()
    assert "1.50×" in lines[2] and "int8 on integers" in lines[2]
    kernels = bench.kernel_table([{"shape": [576, 192], "fp32 F.linear": 30.0, "ours int8": 10.0}])
    assert "576×192" in kernels and "10.0 µs" in kernels
