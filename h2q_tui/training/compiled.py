"""``torch.compile`` of the training forward and backward (``train.compile = true``).

Opt-in, because whether it pays depends on the machine and the precision: measured side by
side with ``python benchmarks/mfu.py --lever compile`` (table in docs/performance.md), it
made bf16 steps on an Intel CPU with AMX 1.25–1.45× faster for every preset (Inductor fuses
the casts, LayerNorm, GELU and residual adds around the AMX matmuls), fp32 steps 0.94–1.21×,
and it costs 5–33 s of compiling on 2 cores before the first step. Only the training call
is compiled: held-out evaluation, samples, snapshots and checkpoints use the plain module,
so its state dict and the eval graphs are unchanged. Where compiling fails (no C++ compiler, an unsupported op),
the trainer says so in one line and trains without it.
"""

from __future__ import annotations

import torch
from torch import nn

from h2q_tui.models.common import run_marked_eagerly


def compile_for_training(module: nn.Module) -> nn.Module:
    """``module`` compiled by Inductor; the first call compiles (tens of seconds on a CPU).

    The functions models mark with ``eager_under_compile`` run eagerly inside it."""
    run_marked_eagerly()
    return torch.compile(module)


def is_compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` came from Dynamo or Inductor (then eager training is the way on)."""
    from torch._dynamo import exc as dynamo_exc  # lazy: ~1 s, paid only where compile ran

    return isinstance(exc, dynamo_exc.TorchDynamoException)


def failure_line(exc: BaseException) -> str:
    """The compiler's message in one short line: the error behind Inductor's wrapper
    (``backend='inductor' raised: ...``) where there is one."""
    cause = getattr(exc, "inner_exception", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
    return text if len(text) <= 160 else text[:157] + "..."
