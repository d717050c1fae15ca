"""Run configuration: one frozen dataclass per concern, loaded from commented TOML presets.

Unknown keys and wrong types are UserErrors that name the key; ``--set section.key=value``
overrides a preset value (the value is parsed as TOML, falling back to a plain string).
The range of each numeric key is in ``ranges.py``; ``validate`` adds the rules that tie keys
together and the shapes each model family can build.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from h2q_tui.config.ranges import NO_LIMIT, check_value, shown
from h2q_tui.errors import UserError
from h2q_tui.system.budget import parse_size


@dataclass(frozen=True)
class ModelConfig:
    family: str = "gpt"  # microstream | h2q-transformer | qrlm | hamiltonian-llm | gpt
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context: int = 128
    dropout: float = 0.0
    # Hamiltonian layers
    factor_size: int = 32
    rank: int = 8
    shared_bank: bool = True  # one structure bank per model (source) or one per layer
    ham_implementation: str = "fast"  # fast | structured | reference
    checkpointing: bool = False  # activation checkpointing of each reversible branch
    final_norm: bool = False  # LayerNorm before the head (the source has none; an option)
    attention_layout: str = "heads"  # heads | source (h2q-transformer's reshape bug, opt-in)
    ham_init: str = "source"  # source | unit: rescale each B so W starts at unit RMS gain
    # GPT baseline
    mlp_ratio: int = 4
    bias: bool = True
    tie_weights: bool = True
    # hamiltonian-llm (SPEC §3.4)
    momentum_beta: float = 0.9  # m_t = (β·m_{t-1} + (1-β)·v_t)·(1 - r_t)
    separator_token: int = -1  # document separator id (r_t = separator_damping there); -1 = none
    separator_damping: float = 0.5
    gravity_strength: float = 0.1  # scores -= strength · g · min(|i-j|, gravity_max_distance)
    gravity_max_distance: int = 64
    reflex_kernel: int = 3  # causal depthwise conv of the reflex path
    rope_base: float = 10000.0


@dataclass(frozen=True)
class TrainConfig:
    loop: str = "random"  # horizon (MicroStream rolling horizon) | random (random windows)
    batch_size: int = 16
    chunk_bytes: int = 262_144  # horizon loop: bytes per chunk
    lr: float = 6e-4
    min_lr: float = 6e-5
    weight_decay: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (over max_steps, else over max_seconds)
    axiom_lambda: float = 0.1  # penalty weight: loss = CE + axiom_lambda * 0.01 * penalty
    precision: str = "auto"  # auto (fast bf16 hardware: bf16, else fp32) | fp32 | bf16 | fp16
    threads: int = 0  # torch intra-op threads for training; 0 = auto (system/thread_choice.py)
    compile: bool = False  # torch.compile the training step (training/compiled.py: when it pays)
    # per-process memory budget (--memory-budget / --vram-budget; h2q_tui/system/budget.py):
    # "2GB" (10^9), "1.5GiB" (2^30); "" = none. 90 %: alarm; 100 %: checkpoint, then pause/stop
    memory_budget: str = ""  # this process's RSS
    vram_budget: str = ""  # CUDA memory reserved by this process
    grad_accum: int = 1  # micro-batches per optimizer step
    # QRLM dynamic rank growth (SPEC §3.3): from growth_start_step, every growth_interval steps,
    # grow the FFN rank if mean(last growth_window losses) > growth_threshold x the mean of the
    # growth_window losses that started growth_lookback steps ago; LR x growth_lr_factor.
    rank_growth: bool = False
    growth_start_step: int = 2000
    growth_interval: int = 1000
    growth_window: int = 100
    growth_lookback: int = 2000
    growth_threshold: float = 0.99
    growth_max_rank: int = 64
    growth_lr_factor: float = 0.8
    max_steps: int = NO_LIMIT  # the run's total steps (0: set up, report, stop); -1 = no limit
    max_seconds: float = float(NO_LIMIT)  # training seconds in all (0: stop at once); -1 = none
    seed: int = 1337


@dataclass(frozen=True)
class EvalConfig:
    heldout_interval: int = 200  # steps between held-out evaluations
    heldout_bytes: int = 131_072  # evaluate on at most this many held-out bytes
    heldout_fraction: float = 0.05  # without --heldout: this tail of the corpus is never trained on
    horizon_val_fraction: float = 0.2  # horizon loop: share of the next chunk's columns
    random_val_interval: int = 100  # random loop: steps between "horizon" (train-stream) evals


@dataclass(frozen=True)
class LogConfig:
    log_interval: int = 50  # steps between console lines / step records
    sample_interval: int = 500  # steps between Thought Stream samples (0 = never)
    sample_bytes: int = 200
    sample_temperature: float = 0.8
    checkpoint_interval: int = 1000  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3  # newest step_* folders kept (the best held-out one is kept apart)
    system_interval_s: float = 10.0  # seconds between `system` events in metrics.jsonl (0 = none)


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "eval": EvalConfig, "log": LogConfig}
CHOICES = {
    ("model", "family"): ("microstream", "h2q-transformer", "qrlm", "hamiltonian-llm", "gpt"),
    ("model", "ham_implementation"): ("fast", "structured", "reference"),
    ("model", "ham_init"): ("source", "unit"),
    ("model", "attention_layout"): ("heads", "source"),
    ("train", "loop"): ("horizon", "random"),
    ("train", "schedule"): ("constant", "cosine"),
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
}


def presets_dir() -> Path:
    """The folder of bundled presets (repo checkout or installed wheel)."""
    here = Path(__file__).resolve().parents[1]  # the h2q_tui folder
    for candidate in (here.parent / "presets", here / "_presets"):
        if candidate.is_dir():
            return candidate
    raise UserError("bundled presets folder not found; reinstall h2q-tui")


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def _name(text: Any) -> str:
    """A section or key name for a message: as typed when plain, else its repr."""
    return text if isinstance(text, str) and text.isprintable() and len(text) <= 60 else shown(text)


def _coerce(section: str, key: str, value: Any, annotation: Any) -> Any:
    name = f"{section}.{key}"
    expected = annotation if isinstance(annotation, type) else typing.get_origin(annotation)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise UserError(f"config key {name} is far too large, got {shown(value)}") from None
    if (
        expected is types.UnionType
        or not isinstance(value, expected)
        or (isinstance(value, bool) and expected is not bool)
    ):
        raise UserError(
            f"config key {name} must be {getattr(annotation, '__name__', annotation)}, "
            f"got {type(value).__name__} {shown(value)}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {name} must be a finite number, got {value}")
    allowed = CHOICES.get((section, key))
    if allowed and value not in allowed:
        raise UserError(
            f"config key {name} must be one of {', '.join(allowed)}, got {shown(value)}"
        )
    return value


def from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a RunConfig, rejecting unknown sections/keys and wrong types by name."""
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: the config must be a table of sections ({', '.join(SECTIONS)}), "
            f"got {type(data).__name__} {shown(data)}"
        )
    sections: dict[str, Any] = {}
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(
                f"{source}: unknown config section [{_name(section)}] "
                f"(known: {', '.join(SECTIONS)})"
            )
        _section_table(section, values, source)
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise UserError(f"{source}: unknown config key {section}.{_name(key)}")
            kwargs[key] = _coerce(section, key, value, hints[key])
        sections[section] = cls(**kwargs)
    return RunConfig(**sections)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read preset {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"preset {path} is not valid TOML: {exc}") from None


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Raw TOML dict of a bundled preset name or a .toml path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"preset file not found: {path}")
        return _read_toml(path)
    bundled = presets_dir() / f"{name_or_path}.toml"
    if not bundled.is_file():
        raise UserError(f"unknown preset '{name_or_path}' (known: {', '.join(preset_names())})")
    return _read_toml(bundled)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value``; the value is read as TOML, else kept as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"--set expects section.key=value, got {text!r}")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def _section_table(section: Any, values: Any, source: str) -> dict[str, Any]:
    """A copy of one section's table; a section that is not a table is a UserError."""
    if not isinstance(values, dict):
        raise UserError(
            f"{source}: [{_name(section)}] must be a table of keys (a [{_name(section)}] "
            f"header), got {type(values).__name__} {shown(values)}"
        )
    return dict(values)


def apply_overrides(
    data: dict[str, Any], overrides: list[str], source: str = "config"
) -> dict[str, Any]:
    """``data`` with each ``section.key=value`` override applied (the input is not changed)."""
    merged = {section: _section_table(section, values, source) for section, values in data.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        merged.setdefault(section, {})[key] = value
    return merged


def saved_limits(data: dict[str, Any], step: int) -> dict[str, Any]:
    """A checkpoint's config with its step limits in today's spelling (-1 = no limit).

    Checkpoints from before that spelling wrote 0 for "no limit"; a run limited to 0 trains
    no step, so a 0 beside a step past 0 is read as the old spelling.
    """
    train = dict(data.get("train", {}))
    for key in ("max_steps", "max_seconds"):
        if step > 0 and train.get(key) == 0:
            train[key] = type(train[key])(NO_LIMIT)
    return {**data, "train": train}


def resolve(preset: str, overrides: list[str] | None = None) -> RunConfig:
    """Preset + ``--set`` overrides → validated RunConfig."""
    data = apply_overrides(load_preset(preset), overrides or [], source=preset)
    config = from_dict(data, source=preset)
    validate(config)
    return config


# ----------------------------------------------------------------------------- validation
def _check_section(section: str, values: Any) -> None:
    for f in dataclasses.fields(values):
        check_value(section, f.name, getattr(values, f.name))


def validate(config: RunConfig) -> None:
    """Every numeric key inside its range, then the rules that tie keys together."""
    for section in SECTIONS:
        _check_section(section, getattr(config, section))
    validate_model(config.model)
    m, t, e = config.model, config.train, config.eval
    for key in ("memory_budget", "vram_budget"):
        if getattr(t, key):
            parse_size(getattr(t, key), f"config key train.{key}")
    if NO_LIMIT < t.max_seconds < 0:
        raise UserError(
            f"config key train.max_seconds must be >= 0, or -1 for no limit, got {t.max_seconds:g}"
        )
    if t.schedule == "cosine" and t.min_lr > t.lr:
        raise UserError(
            f"config key train.min_lr={t.min_lr:g} is above train.lr={t.lr:g}: the cosine "
            "schedule decays from lr to min_lr; lower train.min_lr"
        )
    if t.growth_lookback < t.growth_window:
        raise UserError(
            f"config key train.growth_lookback={t.growth_lookback} must be >= "
            f"train.growth_window={t.growth_window} (the past window starts that many steps back)"
        )
    if t.loop == "horizon" and t.chunk_bytes < t.batch_size * (m.context + 1) * 2:
        raise UserError(
            f"train.chunk_bytes={t.chunk_bytes:,} is too small for batch_size x context: the "
            f"horizon loop needs at least {t.batch_size * (m.context + 1) * 2:,}"
        )
    if e.heldout_bytes < m.context + 1:
        raise UserError(
            f"config key eval.heldout_bytes={e.heldout_bytes} is shorter than one window: it "
            f"must be at least model.context + 1 = {m.context + 1}"
        )


def _divisors(width: int, near: int) -> str:
    """'model.n_heads = 2, 4 or 8': the divisors of ``width`` closest to ``near``."""
    found = [d for d in range(1, min(width, 4096) + 1) if width % d == 0]
    closest = sorted(sorted(found, key=lambda d: abs(d - near))[:3])
    return "model.n_heads = " + " or ".join(
        [", ".join(map(str, closest[:-1])), str(closest[-1])]
        if len(closest) > 1
        else [str(closest[0])]
    )


def validate_model(m: ModelConfig) -> None:
    """The model section alone: ranges, and the shapes each family can build."""
    _check_section("model", m)
    if m.family in ("microstream", "h2q-transformer"):
        half = m.d_model // 2
        if m.d_model % 2 or half % (4 * m.factor_size):
            raise UserError(
                f"model.d_model={m.d_model}: {m.family} needs d_model/2 to be a multiple of "
                f"4 x model.factor_size ({4 * m.factor_size})"
            )
        if half % m.n_heads:
            raise UserError(
                f"model.n_heads={m.n_heads} must divide d_model/2 = {half} ({m.family} attends "
                f"over half the width): use {_divisors(half, m.n_heads)}"
            )
    else:
        if m.d_model % m.n_heads:
            raise UserError(
                f"model.n_heads={m.n_heads} must divide model.d_model={m.d_model}: use "
                f"{_divisors(m.d_model, m.n_heads)}"
            )
        if m.family == "qrlm" and m.d_model % (4 * m.factor_size):
            raise UserError(
                f"model.d_model={m.d_model}: qrlm needs d_model to be a multiple of "
                f"4 x model.factor_size ({4 * m.factor_size})"
            )
    if m.separator_token >= m.vocab_size:
        raise UserError(
            f"model.separator_token={m.separator_token} must be below model.vocab_size="
            f"{m.vocab_size} (or -1 for none)"
        )
    if m.family == "hamiltonian-llm" and (m.d_model // m.n_heads) % 2:
        raise UserError(
            f"model.d_model / model.n_heads = {m.d_model // m.n_heads} must be even "
            "(rotary embeddings rotate pairs of dimensions)"
        )
