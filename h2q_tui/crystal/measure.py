"""What crystallization cost: a base model against crystallized ones on the same held-out windows.

The held-out data is cut into the non-overlapping context windows ``h2q-tui eval`` uses
(:func:`h2q_tui.data.streams.heldout_batches`, ``batch`` windows per forward pass), so a
crystallized checkpoint's bits/byte here is the number ``h2q-tui eval`` prints for it on the
same file and ``--windows``. Default data: the last 5 % of the embedded default corpus (the
held-out tail a run on the default corpus never trains on, see ``data.sources.load_corpus``).

Per model and position t (target y_t, base distribution p, crystallized q, both over the whole
vocabulary, fp32, no autocast):

- **bits/byte**: mean cross-entropy in nats, token-weighted like ``h2q-tui eval`` (the model's
  own loss per batch), / ln 2, / bytes per token (1 for byte models);
- **Δ bits/byte ± s.e.**: bits/byte(q) − bits/byte(p); its standard error is std/√n of the
  per-window differences (n windows, sample std), so ±2 s.e. brackets a real difference;
- **mean KLD**: mean over positions of Σ_v p_v (log p_v − log q_v), nats per token (± its
  s.e.); **KLD p99**, **median**, **max** and the other percentiles over positions;
- **Δp** = q(y_t) − p(y_t), the change in the probability of the correct next token: its
  signed mean (± s.e.), its percentiles and its **RMS**;
- **ln PPL ratio**: mean over positions of ln p(y_t) − ln q(y_t) (CE(q) − CE(p), nats per
  token) = ln(PPL(q)/PPL(p)), ± std/√n of the per-position differences;
- **same top-1 %**: share of positions where argmax p = argmax q (llama.cpp's "same top p"),
  ± sqrt(s(1 − s)/n).

These are the quantities ``llama-perplexity --kl-divergence`` prints (its "Mean Δp",
"Median KLD", "Mean ln(PPL(Q)/PPL(base))", "Same top p" ...), defined the same way, so the two
reports read side by side; percentiles interpolate linearly between sorted positions.

Several crystallized models can be measured in one pass (:func:`compare_many`): the base runs
once per batch, and each model's ``seconds`` is the time of its own forward passes and
statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from h2q_tui.data.sources import default_corpus_bytes
from h2q_tui.data.streams import heldout_batches
from h2q_tui.errors import UserError

DEFAULT_HELDOUT_FRACTION = 0.05
PERCENTILES = (  # (key, q): llama.cpp's set
    ("min", 0.0),
    ("p0.1", 0.001),
    ("p1", 0.01),
    ("p5", 0.05),
    ("p10", 0.1),
    ("p25", 0.25),
    ("p50", 0.5),
    ("p75", 0.75),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
)
LN2 = math.log(2.0)
Progress = Callable[[int, int], None]


@dataclass
class HeldOut:
    """Held-out tokens cut into windows: ``tokens`` (ids), ``context`` T, the first ``windows``."""

    tokens: torch.Tensor
    context: int
    windows: int
    bytes_per_token: float  # 1.0 for byte models; raw bytes / BPE tokens otherwise
    source: str  # the file, or "tail N bytes of the embedded default corpus"
    n_bytes: int  # raw bytes read

    @property
    def max_tokens(self) -> int:
        """Tokens the windows cover (the ``max_bytes`` of ``heldout_batches``)."""
        return self.windows * self.context + 1

    def batches(self, batch: int):
        return heldout_batches(self.tokens, self.context, batch, self.max_tokens)

    def describe(self) -> str:
        unit = "byte" if self.bytes_per_token == 1.0 else "token"
        return (
            f"{self.source} | {self.n_bytes:,} bytes | {self.windows:,} windows of "
            f"{self.context} {unit}s"
        )


def load_heldout(
    path: str | Path | None, context: int, tokenizer=None, windows: int = 0
) -> HeldOut:
    """The held-out windows of ``path`` (None: the embedded corpus's last 5 %), or a UserError.

    ``windows``: only the first N windows (0 = all); ``tokenizer``: a BpeTokenizer for BPE
    models (None: bytes).
    """
    if windows < 0:
        raise UserError(f"--windows must be >= 0 (0 = the whole file), got {windows}")
    if path is None:
        corpus = default_corpus_bytes()
        cut = len(corpus) - max(1, int(len(corpus) * DEFAULT_HELDOUT_FRACTION))
        raw, source = corpus[cut:], f"tail {len(corpus) - cut:,} bytes of the embedded corpus"
    else:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"data file not found: {path}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read data file {path}: {exc.strerror or exc}") from None
        source = str(path)
    if tokenizer is None:
        tokens, per_token, unit = torch.frombuffer(bytearray(raw), dtype=torch.uint8), 1.0, "byte"
    else:
        tokens = tokenizer.encode(raw)
        per_token, unit = len(raw) / max(1, tokens.numel()), "token"
    if tokens.numel() < context + 1:
        raise UserError(
            f"data {source} has {tokens.numel()} {unit}s; measuring needs at least {context + 1}"
        )
    total = (tokens.numel() - 1) // context
    return HeldOut(
        tokens, context, min(total, windows) if windows else total, per_token, source, len(raw)
    )


@dataclass
class Score:
    """One model alone on the held-out windows."""

    bits_per_byte: float
    nats_per_token: float
    seconds: float  # its forward passes (and, for a candidate, its statistics)


@dataclass
class Comparison:
    """A crystallized model against the base on the same windows (see the module docstring)."""

    bits_per_byte: float
    base_bits_per_byte: float
    delta_bits_per_byte: float
    delta_std_error: float
    mean_kld: float  # nats per token
    kld_p99: float
    rms_delta_p: float
    same_top1: float  # a share in [0, 1]
    positions: int
    windows: int
    seconds: float
    mean_kld_error: float = 0.0
    kld_median: float = 0.0
    kld_max: float = 0.0
    mean_delta_p: float = 0.0  # signed, a probability (× 100 for llama.cpp's %)
    delta_p_error: float = 0.0
    ln_ppl_ratio: float = 0.0  # nats per token: CE(q) − CE(p)
    ln_ppl_ratio_error: float = 0.0
    same_top1_error: float = 0.0
    kld_percentiles: dict[str, float] = field(default_factory=dict)  # PERCENTILES' keys
    delta_p_percentiles: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class _Stats:
    """Running statistics of one candidate against the base."""

    def __init__(self) -> None:
        self.nats = 0.0
        self.tokens = 0
        self.window_deltas: list[torch.Tensor] = []  # per window: mean CE(q) − mean CE(p), nats
        self.klds: list[torch.Tensor] = []
        self.dps: list[torch.Tensor] = []  # per position: q(y) − p(y)
        self.ce_deltas: list[torch.Tensor] = []  # per position: CE(q) − CE(p), nats
        self.same = 0
        self.seconds = 0.0


def _forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(log-probs (B, T, V) fp32, the model's own mean CE as a float)."""
    logits, loss = model(x, y)
    return F.log_softmax(logits.float(), dim=-1), float(loss)


@torch.no_grad()
def compare_many(
    base: nn.Module,
    candidates: Sequence[nn.Module],
    heldout: HeldOut,
    device: torch.device | str = "cpu",
    batch: int = 32,
    progress: Progress | None = None,
) -> tuple[Score, list[Comparison]]:
    """The base's score, and each candidate against it, in one pass over the windows.

    ``progress(done, total)`` after each batch. Models are put in eval mode (and back).
    """
    device = torch.device(device)
    models = [base, *candidates]
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    total = -(-heldout.windows // batch)
    base_nats, base_tokens, base_seconds = 0.0, 0, 0.0
    stats = [_Stats() for _ in candidates]
    try:
        for done, (x, y) in enumerate(heldout.batches(batch), 1):
            x, y = x.to(device), y.to(device)
            started = time.perf_counter()
            log_p, loss = _forward(base, x, y)
            base_nats += loss * y.numel()
            base_tokens += y.numel()
            target = y.unsqueeze(-1)
            base_ce = -log_p.gather(-1, target).squeeze(-1)  # (B, T)
            p = log_p.exp()
            p_correct = p.gather(-1, target).squeeze(-1)
            base_top = log_p.argmax(-1)
            base_seconds += time.perf_counter() - started
            for model, stat in zip(candidates, stats, strict=True):
                started = time.perf_counter()
                log_q, loss = _forward(model, x, y)
                stat.nats += loss * y.numel()
                stat.tokens += y.numel()
                ce = -log_q.gather(-1, target).squeeze(-1)
                stat.window_deltas.append((ce - base_ce).double().mean(dim=1).cpu())
                stat.ce_deltas.append((ce - base_ce).reshape(-1).cpu())
                kld = (p * (log_p - log_q)).sum(-1).clamp_min(0.0)
                stat.klds.append(kld.reshape(-1).cpu())
                dp = log_q.gather(-1, target).squeeze(-1).exp() - p_correct
                stat.dps.append(dp.reshape(-1).cpu())
                stat.same += int((log_q.argmax(-1) == base_top).sum())
                stat.seconds += time.perf_counter() - started
            if progress is not None:
                progress(done, max(total, done))
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)
    per_token = heldout.bytes_per_token
    base_nats_per_token = base_nats / max(1, base_tokens)
    score = Score(_bits(base_nats_per_token, per_token), base_nats_per_token, base_seconds)
    return score, [_finish(stat, score, per_token) for stat in stats]


def _bits(nats_per_token: float, bytes_per_token: float) -> float:
    """bits/byte the way ``h2q-tui eval`` computes it (same float operations, same result)."""
    return nats_per_token / LN2 / bytes_per_token


def _finish(stat: _Stats, base: Score, bytes_per_token: float) -> Comparison:
    scale = 1.0 / LN2 / bytes_per_token
    deltas = torch.cat(stat.window_deltas) * scale if stat.window_deltas else torch.zeros(0)
    n = deltas.numel()
    klds = _joined(stat.klds)
    dps = _joined(stat.dps)
    ce = _joined(stat.ce_deltas)
    positions = max(1, stat.tokens)
    bits = _bits(stat.nats / positions, bytes_per_token)
    same = stat.same / positions
    kld_percentiles = percentiles(klds)
    return Comparison(
        bits_per_byte=bits,
        base_bits_per_byte=base.bits_per_byte,
        delta_bits_per_byte=bits - base.bits_per_byte,
        delta_std_error=_std_error(deltas),
        mean_kld=float(klds.mean()),
        kld_p99=kld_percentiles["p99"],
        rms_delta_p=float(dps.square().mean().sqrt()),
        same_top1=same,
        positions=stat.tokens,
        windows=n,
        seconds=stat.seconds,
        mean_kld_error=_std_error(klds),
        kld_median=kld_percentiles["p50"],
        kld_max=kld_percentiles["max"],
        mean_delta_p=float(dps.mean()),
        delta_p_error=_std_error(dps),
        ln_ppl_ratio=float(ce.mean()),
        ln_ppl_ratio_error=_std_error(ce),
        same_top1_error=math.sqrt(same * (1.0 - same) / positions),
        kld_percentiles=kld_percentiles,
        delta_p_percentiles=percentiles(dps),
    )


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The per-position values of every batch, float64 (one 0 when there are none)."""
    return torch.cat(parts).double() if parts else torch.zeros(1, dtype=torch.float64)


def _std_error(values: torch.Tensor) -> float:
    """std/√n of the values (sample std; 0 for fewer than two)."""
    n = values.numel()
    return float(values.double().std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0


def percentiles(values: torch.Tensor) -> dict[str, float]:
    """The :data:`PERCENTILES` of the values (linear interpolation, like torch.quantile,
    without its size limit)."""
    flat = values.reshape(-1).double().sort().values
    return {key: _quantile(flat, q) for key, q in PERCENTILES}


def _quantile(flat: torch.Tensor, q: float) -> float:
    """The q-quantile of already sorted values."""
    if flat.numel() == 0:
        return 0.0
    position = q * (flat.numel() - 1)
    low = math.floor(position)
    high = min(low + 1, flat.numel() - 1)
    return float(flat[low] + (flat[high] - flat[low]) * (position - low))


def compare(
    base: nn.Module,
    candidate: nn.Module,
    heldout: HeldOut,
    device: torch.device | str = "cpu",
    batch: int = 32,
    progress: Progress | None = None,
) -> Comparison:
    """One crystallized model against the base (see :func:`compare_many`)."""
    return compare_many(base, [candidate], heldout, device, batch, progress)[1][0]
