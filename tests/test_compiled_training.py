"""train.compile: the compiled training step follows the eager loss curve; a compiler failure
is one notice and the run goes on without it, on the same windows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed

from h2q_tui.errors import UserError
from h2q_tui.training import compiled, events
from tests.test_trainer import make_trainer, of

FP32 = ["train.precision=fp32", "train.axiom_lambda=0.0"]


def losses(trainer, steps: int) -> list[float]:
    return [trainer.train_step().train_loss_nats for _ in range(steps)]


@pytest.mark.slow  # ~9 s of torch.compile; compiled training is opt-in
def test_compiled_steps_follow_the_eager_curve(tmp_path, text_file):
    eager, _ = make_trainer(tmp_path, text_file, FP32, name="eager")
    fast, log = make_trainer(tmp_path, text_file, [*FP32, "train.compile=true"], name="fast")
    assert fast.forward_model is not fast.model  # the compiled wrapper; the model stays plain
    reference, measured = losses(eager, 4), losses(fast, 4)
    assert measured == pytest.approx(reference, abs=1e-4)  # (Adam's sign-like steps make the
    # weights a poor check: a gradient of ~0 whose sign differs moves by a whole lr)
    notes = [e.message for e in of(log, events.NoticeGiven)]
    assert notes[0].startswith("torch.compile: compiling")
    assert "the first step took" in notes[1] and len(notes) == 2  # said once, not every step
    assert set(fast.model.state_dict()) == set(eager.model.state_dict())  # no _orig_mod.


def test_a_compiler_failure_is_one_notice_then_eager_training(tmp_path, text_file, monkeypatch):
    class Broken(torch.nn.Module):
        def forward(self, *args):
            raise BackendCompilerFailed(
                lambda *a: None, RuntimeError("no C++ compiler found"), None
            )

    monkeypatch.setattr(compiled, "compile_for_training", lambda module: Broken())
    eager, _ = make_trainer(tmp_path, text_file, FP32, name="eager")
    broken, log = make_trainer(tmp_path, text_file, [*FP32, "train.compile=true"], name="b")
    assert losses(broken, 3) == pytest.approx(losses(eager, 3), abs=1e-6)  # same windows
    notes = [e.message for e in of(log, events.NoticeGiven)]
    assert notes[-1].startswith("torch.compile failed, training without it:")
    assert "no C++ compiler found" in notes[-1] and "\n" not in notes[-1]
    assert broken.forward_model is broken.model


def test_other_errors_are_not_swallowed(tmp_path, text_file, monkeypatch):
    class Failing(torch.nn.Module):
        def forward(self, *args):
            raise ValueError("a bug in the model")

    monkeypatch.setattr(compiled, "compile_for_training", lambda module: Failing())
    trainer, _ = make_trainer(tmp_path, text_file, [*FP32, "train.compile=true"])
    with pytest.raises(ValueError, match="a bug in the model"):
        trainer.train_step()


def test_compile_must_be_a_boolean(tmp_path, text_file):
    with pytest.raises(UserError, match="train.compile must be bool"):
        make_trainer(tmp_path, text_file, ["train.compile=yes"])


def test_after_a_failure_a_rank_growth_rebuilds_the_module_uncompiled(
    tmp_path, text_file, monkeypatch
):
    class Broken(torch.nn.Module):
        def forward(self, *args):
            raise BackendCompilerFailed(lambda *a: None, RuntimeError("no compiler"), None)

    made = []
    monkeypatch.setattr(compiled, "compile_for_training", lambda module: made.append(1) or Broken())
    trainer, _ = make_trainer(tmp_path, text_file, [*FP32, "train.compile=true"])
    trainer.train_step()
    assert trainer.forward_model is trainer.model and not trainer.compiling
    trainer.forward_model = trainer._training_module()  # what _maybe_grow does after a growth
    assert trainer.forward_model is trainer.model and made == [1]


@pytest.mark.slow  # ~20 s of compiling on 2 cores
def test_hamiltonian_llm_compiles_around_its_gravity_attention(tmp_path, text_file):
    """Its attention runs eagerly inside the compiled step (compiled, its batch-innermost
    layout made every product copy its matrices one by one); the curve is the eager one."""
    from h2q_tui.models import hamiltonian_llm

    family = ["model.family=hamiltonian-llm", "model.n_heads=2", *FP32]
    eager, _ = make_trainer(tmp_path, text_file, family, name="eager")
    fast, _ = make_trainer(tmp_path, text_file, [*family, "train.compile=true"], name="fast")
    assert losses(fast, 3) == pytest.approx(losses(eager, 3), abs=1e-4)
    eager_call = hamiltonian_llm.gravity_attention.target[0]  # set by compiling
    assert eager_call._torchdynamo_disable  # torch.compiler.disable


def test_importing_the_models_leaves_dynamo_alone():
    """torch._dynamo (0.8 s to import) is imported by compiling, not by loading a model."""
    code = (
        "import sys; import h2q_tui.models, h2q_tui.generation.generate; "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_each_rank_growth_compiles_afresh(tmp_path, text_file, monkeypatch):
    """After a growth the old graphs are dropped: Dynamo would otherwise count every growth's
    recompile towards its limit, past which it silently trains eagerly."""
    resets = []
    monkeypatch.setattr(compiled, "compile_for_training", lambda module: module)
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    trainer, _ = make_trainer(tmp_path, text_file, [*FP32, "train.compile=true"])
    assert resets == [] and trainer.compiles == 1  # the first compile keeps the cache
    for growth in range(1, 3):
        trainer.forward_model = trainer._training_module()  # what _maybe_grow does
        assert len(resets) == growth and trainer.compiling
