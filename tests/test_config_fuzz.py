"""Property-based: any value of any config key is either accepted or refused in one line.

Every key of every section (dataclasses.fields of h2q_tui.config.SECTIONS) gets wrong types
(strings, lists, bools, None, tables, huge ints) and out-of-range numbers (negative, zero,
huge, NaN, ±inf). ``from_dict`` + ``validate`` must pass or raise a UserError whose message is
one non-empty line; any other exception is a bug. A few of the same go through the CLI's entry
point in this process (test_bad_input runs a config case as a subprocess).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_cli import h2q_in_process
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from h2q_tui import config as cfg
from h2q_tui.config.ranges import RANGES
from h2q_tui.errors import UserError

KEYS = [
    (section, f.name, f.type)
    for section, cls in cfg.SECTIONS.items()
    for f in dataclasses.fields(cls)
]
NUMERIC = [(section, key) for section, key, kind in KEYS if kind in ("int", "float")]
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repo
    suppress_health_check=[HealthCheck.too_slow],
)

wrong_types = st.one_of(
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.booleans(),
    st.none(),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.integers(min_value=2**63, max_value=2**2000),  # beyond TOML's int64, and float()
    st.integers(max_value=-(2**63)),
)
numbers = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, 1, 2**31, 2**62, -(2**62)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1.5, -1e-9, 1e300, math.nan, math.inf, -math.inf]),
)
any_value = st.one_of(wrong_types, numbers, st.sampled_from(["gpt", "random", "auto", "cosine"]))


def check(data: dict) -> None:
    """Accepted, or a one-line UserError; anything else fails the test."""
    try:
        cfg.validate(cfg.from_dict(data, source="fuzz"))
    except UserError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message and "\r" not in message, repr(message)
        assert len(message) < 400, message


def test_every_numeric_key_has_a_range_rule() -> None:
    assert NUMERIC, "no numeric keys found"
    missing = [f"{s}.{k}" for s, k in NUMERIC if (s, k) not in RANGES]
    assert not missing, f"keys without a range rule in config.RANGES: {missing}"
    stale = [f"{s}.{k}" for s, k in RANGES if (s, k) not in NUMERIC]
    assert not stale, f"range rules for keys that do not exist: {stale}"


def test_every_preset_passes_validation() -> None:
    for name in cfg.preset_names():
        cfg.resolve(name)


@FUZZ
@given(key=st.sampled_from(KEYS), value=any_value)
def test_one_key_any_value(key, value) -> None:
    section, name, _ = key
    check({section: {name: value}})


@FUZZ
@given(key=st.sampled_from(NUMERIC), value=numbers)
def test_numeric_key_out_of_range_on_a_preset(key, value) -> None:
    """Out-of-range numbers on top of a real preset (so the cross-field rules run too)."""
    section, name = key
    data = cfg.apply_overrides(cfg.load_preset("tiny"), [])
    data.setdefault(section, {})[name] = value
    check(data)


@FUZZ
@given(
    values=st.dictionaries(
        st.sampled_from([(s, k) for s, k, _ in KEYS]), st.one_of(numbers, any_value), max_size=6
    ),
    family=st.sampled_from(cfg.CHOICES["model", "family"]),
)
def test_several_keys_at_once(values, family) -> None:
    data: dict = {"model": {"family": family}}
    for (section, name), value in values.items():
        data.setdefault(section, {})[name] = value
    check(data)


@FUZZ
@given(data=st.one_of(st.lists(st.integers()), st.integers(), st.text(), st.none()))
def test_config_that_is_not_a_table(data) -> None:
    with pytest.raises(UserError):
        cfg.from_dict(data)  # type: ignore[arg-type]


@FUZZ
@given(
    section=st.sampled_from([*cfg.SECTIONS, "other"]),
    value=st.one_of(
        st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=8), st.booleans()
    ),
    overrides=st.lists(st.sampled_from(["train.lr=0.001", "model.d_model=64"]), max_size=2),
)
def test_a_section_that_is_not_a_table_is_refused_by_name(section, value, overrides) -> None:
    with pytest.raises(UserError, match=rf"\[{section}\] must be a table"):
        cfg.from_dict(cfg.apply_overrides({section: value}, overrides))


def test_an_out_of_range_number_is_told_the_whole_range() -> None:
    for (section, key), rule in RANGES.items():
        for value in (2**63 - 1, -(2**63)):  # past every bound of every key
            if rule.holds(value):
                continue
            with pytest.raises(UserError) as refused:
                cfg.validate(cfg.from_dict({section: {key: value}}))
            message = str(refused.value)
            for bound in (rule.low, rule.high):
                if bound is not None:
                    shown = f"{bound:,}" if isinstance(bound, int) else f"{bound:g}"
                    assert shown in message, message


def test_bad_values_are_refused_by_name() -> None:
    for section, name in NUMERIC:
        for value in (math.nan, math.inf, -math.inf):
            with pytest.raises(UserError, match=f"{section}.{name}"):
                cfg.validate(cfg.from_dict({section: {name: value}}))


class CountAllocations(TorchDispatchMode):
    """Counts the elements of every tensor torch makes on a real device (meta ones are free)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self.elements += leaf.numel()
        return out


def test_memory_check_runs_before_any_allocation() -> None:
    from h2q_tui.models import build_model, memory

    config = cfg.resolve("gpt", ["model.d_model=65536", "model.n_layers=64"])
    with CountAllocations() as counted:
        with pytest.raises(UserError, match=r"model needs ~[\d.,]+ [MGT]B to train \(.*param"):
            memory.check_training_memory(config)
    assert counted.elements == 0  # 3.3 T parameters counted, none allocated
    with CountAllocations() as counted:  # the counter sees a real build
        build_model(cfg.resolve("tiny").model)
    assert counted.elements >= memory.parameter_count(cfg.resolve("tiny").model)


def test_meta_parameter_count_is_exact_for_every_preset() -> None:
    from h2q_tui.models import build_model, count_parameters, memory

    for name in ("tiny", "qrlm-cpu", "hamiltonian-llm", "gpt-cpu"):
        model_config = cfg.resolve(name, ["model.n_layers=3"]).model
        assert memory.parameter_count(model_config) == count_parameters(build_model(model_config))


@pytest.mark.parametrize("extra", [[], ["model.shared_bank=false", "model.rank=16"]])
def test_quick_parameter_bound_is_an_upper_bound(extra) -> None:
    """The arithmetic bound lets the memory checks skip the meta build; it must never be low."""
    from h2q_tui.models import memory

    for name in cfg.preset_names():
        model_config = cfg.resolve(name, ["model.n_layers=3", *extra]).model
        assert memory.parameter_bound(model_config) >= memory.parameter_count(model_config)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.lr=[1, 2]", ["train.lr", "float"]),
        ("model.d_model=true", ["model.d_model", "int"]),
        (
            "train.warmup_steps=9223372036854775807",
            ["train.warmup_steps", "between 0 and 4,611,686,018,427,387,904"],
        ),
        ("train.threads=99999999999999999999", ["train.threads"]),
        ("eval.heldout_fraction=inf", ["eval.heldout_fraction", "finite"]),
        ("log.sample_temperature=-0.0", ["log.sample_temperature", "> 0"]),
        ('model.family=["gpt"]', ["model.family"]),
    ],
)
def test_wrong_values_through_the_cli(tmp_path, override, words) -> None:
    (tmp_path / "data.txt").write_text("hello world, " * 400, encoding="utf-8")
    args = ("--no-ui", "--preset", "tiny", "--data", "data.txt", "--max-steps", "1")
    result = h2q_in_process(*args, "--run-dir", "run", "--set", override, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("h2q-tui: error: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("value", "shown"), [("[1, 2]", "list [1, 2]"), ("5", "int 5"), ('"x"', "str 'x'")]
)
def test_a_preset_section_that_is_not_a_table_through_the_cli(tmp_path, value, shown) -> None:
    (tmp_path / "bad.toml").write_text(f"model = {value}\n", encoding="utf-8")
    result = h2q_in_process("--no-ui", "--preset", "bad.toml", "--run-dir", "run", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"h2q-tui: error: bad.toml: [model] must be a table of keys (a [model] header), got {shown}"
    ]
    assert not (tmp_path / "run").exists()
