"""benchmarks/generation.py's ceiling: one cached step's matrix products, on the very weights."""

from __future__ import annotations

import torch
from h2q_kernels.hamiltonian import frozen_weights

from h2q_tui.config import resolve
from h2q_tui.generation.decoder import Decoder
from h2q_tui.models import build_model
from tests.benchmark_module import load

bench = load("generation")


def test_one_step_records_every_weight_matrix_of_the_gpt_once(monkeypatch) -> None:
    from h2q_tui.generation import steps_transformer

    monkeypatch.setattr(steps_transformer, "FUSED", False)  # the torch step: its products
    torch.manual_seed(0)
    model = build_model(resolve("gpt-cpu").model).eval()
    with torch.no_grad(), frozen_weights(model):
        step = Decoder(model)
        step([1, 2, 3])
        recorder = bench.ProductRecorder()
        with recorder:
            step([1, 2, 3, 4])
    storages = [
        t.untyped_storage().data_ptr()
        for _, args, _ in recorder.calls
        for t in args
        if isinstance(t, torch.Tensor)
    ]
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for weight in weights:  # q/k/v, proj, fc, fc proj of each block, and the head
        assert storages.count(weight.untyped_storage().data_ptr()) == 1
    blocks = len(model.residual_blocks())
    assert len(recorder.calls) == len(weights) + 2 * blocks  # + q·kᵀ and p·v per block


def test_the_ceiling_is_a_rate() -> None:
    torch.manual_seed(0)
    model = build_model(resolve("qrlm-cpu").model).eval()
    assert bench.products_alone_rate(model, repeats=3) > 0
