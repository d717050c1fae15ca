"""Model registry: every family builds from a ModelConfig and shares one interface.

``forward(idx, targets=None) -> (logits, ce_loss)``; ``penalty()`` the unweighted auxiliary
orthogonality penalty (zero for dense models); ``energy`` the mean L2 norm of the last
forward's final hidden state (a readout, not a conserved quantity).
"""

from __future__ import annotations

from torch import nn

from h2q_tui.config import ModelConfig
from h2q_tui.models.gpt import GPT
from h2q_tui.models.hamiltonian_llm import HamiltonianLLM
from h2q_tui.models.microstream import MicroStream
from h2q_tui.models.qrlm import QRLM

# h2q-transformer is MicroStream with quaternion attention (the class reads config.family)
FAMILIES: dict[str, type[nn.Module]] = {
    "microstream": MicroStream,
    "h2q-transformer": MicroStream,
    "qrlm": QRLM,
    "hamiltonian-llm": HamiltonianLLM,
    "gpt": GPT,
}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the model family named by ``config.family``."""
    return FAMILIES[config.family](config)


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a shared structure bank counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
