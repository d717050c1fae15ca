"""h2q-transformer (quaternion attention, the source layout on request) and QRLM rank growth."""

from __future__ import annotations

import json
import queue

import pytest
import torch
from h2q_kernels.hamiltonian import HamLinear

from h2q_tui import checkpoints
from h2q_tui.config import resolve
from h2q_tui.data.sources import load_corpus
from h2q_tui.models import build_model, count_parameters
from h2q_tui.models.common import causal_attention, phase_rotation
from h2q_tui.training import commands, events
from h2q_tui.training.trainer import Trainer
from h2q_tui.training.writers import JsonlWriter

# ----------------------------------------------------------------------------- h2q-transformer


def test_phase_rotation_scales_each_quaternion_by_its_real_part_over_norm():
    # one quaternion per position, C = 4: components (r, i, j, k) = dims 0..3
    y = torch.tensor([[[3.0, 4.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]]])
    out = phase_rotation(y)
    torch.testing.assert_close(out[0, 0], y[0, 0] * 3.0 / (25.0 + 1e-6) ** 0.5)
    torch.testing.assert_close(out[0, 1], torch.zeros(4))


def test_phase_rotation_is_component_major():
    # C = 8: quaternion n has components at dims n, 2 + n, 4 + n, 6 + n
    y = torch.zeros(1, 1, 8)
    y[0, 0, [1, 3, 5, 7]] = torch.tensor([1.0, 1.0, 1.0, 1.0])  # quaternion 1 = (1, 1, 1, 1)
    y[0, 0, [0, 2, 4, 6]] = torch.tensor([0.0, 2.0, 0.0, 0.0])  # quaternion 0 = (0, 2, 0, 0)
    out = phase_rotation(y)
    torch.testing.assert_close(out[0, 0, [1, 3, 5, 7]], torch.full((4,), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 0, [0, 2, 4, 6]], torch.zeros(4))


def _influence(layout: str, time: int, heads: int, source_token: int) -> torch.Tensor:
    """Which outputs change when one token's value vector changes."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, time, 16) for _ in range(3))
    base = causal_attention(q, k, v, heads, layout)
    v2 = v.clone()
    v2[0, source_token] += 10.0
    changed = causal_attention(q, k, v2, heads, layout)
    return ((changed - base).abs().amax(dim=-1)[0] > 1e-5).nonzero().flatten()


def test_source_layout_confines_attention_to_windows_of_T_over_heads():
    # correct attention: token 2 influences every later token
    assert _influence("heads", 32, 4, 2).tolist() == list(range(2, 32))
    # the source reshape: token 2 only reaches tokens of its own 8-token window (T/nh = 32/4)
    reached = _influence("source", 32, 4, 2).tolist()
    assert reached and max(reached) < 8
    # the window grows with the sequence: T = 64 gives 16-token windows
    reached = _influence("source", 64, 4, 9).tolist()
    assert reached and min(reached) >= 8 and max(reached) < 16


def test_h2q_transformer_builds_like_microstream_with_quaternion_attention():
    config = resolve("h2q-transformer").model
    model = build_model(config)
    assert count_parameters(model) == 1_127_968  # the feedback adds no parameters
    assert (
        model.blocks[0].attn.quaternion
        and not build_model(resolve("microstream").model).blocks[0].attn.quaternion
    )
    source = build_model(resolve("h2q-transformer", ['model.attention_layout="source"']).model)
    source.load_state_dict(model.state_dict())
    idx = torch.randint(0, 256, (1, 64))
    assert not torch.allclose(model.eval()(idx)[0], source.eval()(idx)[0])


# ----------------------------------------------------------------------------- QRLM
QRLM_TINY = [
    'model.family="qrlm"',
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.factor_size=16",
    "model.rank=2",
    "model.context=32",
    'train.loop="random"',
    "train.batch_size=4",
    "train.rank_growth=true",
    "train.growth_start_step=6",
    "train.growth_interval=4",
    "train.growth_window=2",
    "train.growth_lookback=4",
    "train.growth_max_rank=4",
    "log.sample_interval=0",
    "eval.heldout_interval=0",
]
FORCE_PLATEAU = "train.growth_threshold=0.0"  # any loss counts as a plateau


def qrlm_trainer(
    tmp_path, text_file, extra=(), name="q", command_queue=None, emit=None, resume=None
):
    config = resolve("tiny", [*QRLM_TINY, *extra])
    corpus = load_corpus(str(text_file), heldout_fraction=0.1)
    log: list[events.Event] = []

    def record(event):
        log.append(event)
        if emit:
            emit(event)

    trainer = Trainer(config, corpus, tmp_path / name, record, command_queue, resume_from=resume)
    return trainer, log


def test_qrlm_penalty_covers_q_proj_and_fc1_only_and_energy_is_the_input_embedding():
    model = build_model(resolve("tiny", QRLM_TINY).model)
    ham = {name: m for name, m in model.named_modules() if isinstance(m, HamLinear)}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every layer away from orthogonal, each by its own amount
        for layer in ham.values():
            layer.B.add_(0.3 * torch.randn(layer.B.shape, generator=generator))

    def off_orthogonal(layer: HamLinear) -> torch.Tensor:  # Σ_r ‖B_rᵀB_r − I‖_F, by hand
        b = layer.B.detach().double()
        eye = torch.eye(b.shape[-1], dtype=b.dtype)
        return sum(((b[r].T @ b[r] - eye) ** 2).sum().sqrt() for r in range(b.shape[0]))

    covered = [n for n in ham if n.endswith((".attn.q_proj", ".fc1"))]
    assert len(covered) == 2 * len(model.blocks)
    expected = sum(off_orthogonal(ham[n]) for n in covered)
    assert model.penalty().item() == pytest.approx(float(expected), rel=1e-5)
    for name, layer in ham.items():  # each layer alone: it moves the penalty iff covered
        before = model.penalty().item()
        with torch.no_grad():
            layer.B.mul_(2)
        assert (model.penalty().item() != pytest.approx(before, rel=1e-6)) == (name in covered)
    idx = torch.randint(0, 256, (2, 16))
    model(idx)
    expected = (model.tok_emb(idx) + model.pos_emb[:16]).norm(dim=-1).mean()
    torch.testing.assert_close(model.energy, expected.detach())


def test_growth_triggers_under_a_forced_plateau_and_is_logged(tmp_path, text_file):
    trainer, log = qrlm_trainer(tmp_path, text_file, [FORCE_PLATEAU, "train.max_steps=15"])
    trainer.run_dir.mkdir(parents=True)
    writer = JsonlWriter(trainer.run_dir)
    trainer.emit = lambda e: (log.append(e), writer(e))
    trainer.run()
    writer.close()
    grown = [e for e in log if isinstance(e, events.RankGrown)]
    assert [(e.step, e.rank) for e in grown] == [(6, 3), (10, 4)]  # capped at growth_max_rank 4
    assert trainer.model.ffn_rank == 4 and trainer.model.blocks[0].attn.q_proj.rank == 2
    assert trainer.lr_scale == pytest.approx(0.8**2)
    records = [
        json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["rank"] for r in records if r["event"] == "rank_grown"] == [3, 4]


def test_no_growth_without_a_plateau(tmp_path, text_file):
    trainer, log = qrlm_trainer(
        tmp_path, text_file, ["train.growth_threshold=100.0", "train.max_steps=12"]
    )
    trainer.run()
    assert not [e for e in log if isinstance(e, events.RankGrown)] and trainer.model.ffn_rank == 2


def test_grown_factors_train_and_old_optimizer_state_survives(tmp_path, text_file):
    trainer, _ = qrlm_trainer(
        tmp_path, text_file, [FORCE_PLATEAU, "train.growth_max_rank=3", "train.max_steps=5"]
    )
    trainer.run()
    old = trainer.model.blocks[0].fc1.B
    state_before = {k: v.clone() for k, v in trainer.optimizer.state[old].items()}
    trainer._grow()
    for key, value in trainer.optimizer.state[old].items():
        torch.testing.assert_close(value, state_before[key])
    new_factor = trainer.model.blocks[0].fc1.B_extra[0]
    new_bank = trainer.model.bank.extra[0]
    assert any(new_factor is p for g in trainer.optimizer.param_groups for p in g["params"])
    snapshot = new_factor.detach().clone(), new_bank.detach().clone()
    trainer.config = resolve("tiny", [*QRLM_TINY, "train.growth_max_rank=3", "train.max_steps=9"])
    trainer.run()
    assert not torch.equal(new_factor.detach(), snapshot[0])  # the source's stayed frozen
    assert not torch.equal(new_bank.detach(), snapshot[1])


def test_resume_after_growth_is_exact_and_eval_loads_the_grown_model(tmp_path, text_file):
    total, split = 16, 11
    exact = "train.threads=1"  # bit-identical needs a fixed count (auto times steps)
    straight, log_a = qrlm_trainer(
        tmp_path, text_file, [FORCE_PLATEAU, exact, f"train.max_steps={total}"], name="a"
    )
    straight.run()
    q: queue.Queue = queue.Queue()

    def interrupt(event):
        if isinstance(event, events.StepCompleted) and event.step == split:
            q.put(commands.Stop("interrupted"))

    first, log_b = qrlm_trainer(
        tmp_path,
        text_file,
        [FORCE_PLATEAU, exact, f"train.max_steps={total}"],
        name="b",
        command_queue=q,
        emit=interrupt,
    )
    first.run()
    info = checkpoints.read_info(tmp_path / "b")
    assert info.rank_growths == 2
    second, log_c = qrlm_trainer(
        tmp_path,
        text_file,
        [FORCE_PLATEAU, exact, f"train.max_steps={total}"],
        name="b",
        resume=info,
    )
    assert second.model.ffn_rank == 4
    second.run()

    def losses(log):
        return [e.train_loss_nats for e in log if isinstance(e, events.StepCompleted)]

    assert losses(log_b) + losses(log_c) == losses(log_a)
    model = checkpoints.load_model_from(checkpoints.read_info(tmp_path / "b"))
    assert model.ffn_rank == 4
