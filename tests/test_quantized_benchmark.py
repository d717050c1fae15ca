"""benchmarks/quantized.py's parts that can be wrong without a timing: the per-phase split
restores the step program's product function, and the tables name what they measure."""

from __future__ import annotations

from benchmark_module import load
from ollama_helpers import make_run

from h2q_tui.checkpoints import save_checkpoint
from h2q_tui.config import resolve
from h2q_tui.generation import steps_hamiltonian, steps_transformer
from h2q_tui.models import build_model

bench = load("quantized")


def test_the_phase_split_times_every_product_and_puts_the_function_back(tmp_path):
    config = resolve("tiny", ['model.family="gpt"'])
    gpt = tmp_path / "gpt"
    save_checkpoint(gpt, build_model(config.model), config, 5, "gpt-run", {})
    for run in (make_run(tmp_path), gpt):  # microstream (torch step only), GPT (C step too)
        model, program = bench.step_program_of(str(run), False)
        before = steps_transformer.linear, steps_hamiltonian.linear, steps_transformer.FUSED
        for torch_step in (False, True):
            products_ms, rest_ms = bench.products_share(program, 4, torch_step)
            assert products_ms > 0 and rest_ms > 0, (run.name, torch_step)
        after = steps_transformer.linear, steps_hamiltonian.linear, steps_transformer.FUSED
        assert after == before
        fused = getattr(program, "fused", None)
        assert (fused is not None) == (run == gpt)
        if fused is not None:  # the C step's own timer is off again
            assert fused.product_seconds == 0.0


def test_the_tables_show_each_variant_against_the_first():
    rows = [
        {"variant": "fp32 (original)", "step": "C", "tokens_per_s": 100.0, "products_ms": 1.0,
         "rest_ms": 1.0, "disk_bytes": 8e6, "rss_added_bytes": 20e6, "first_token_s": 3.0},
        {"variant": "int8 on integers", "step": "C", "tokens_per_s": 150.0, "products_ms": 0.5,
         "rest_ms": 1.0, "disk_bytes": 2e6, "rss_added_bytes": 15e6, "first_token_s": 3.0},
        {"variant": "fp32 (original), torch step", "step": "torch", "tokens_per_s": 50.0,
         "products_ms": 1.0, "rest_ms": 3.0, "disk_bytes": 8e6, "rss_added_bytes": None,
         "first_token_s": None},
    ]  # fmt: skip
    lines = bench.table(rows).splitlines()
    assert "1.50×" in lines[2] and "int8 on integers" in lines[2]
    assert "0.50×" in lines[3] and "torch" in lines[3]
    kernels = bench.kernel_table([{"shape": [576, 192], "fp32 F.linear": 30.0, "ours int8": 10.0}])
    assert "576×192" in kernels and "10.0 µs" in kernels
