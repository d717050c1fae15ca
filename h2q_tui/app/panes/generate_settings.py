"""The Generate pane's settings rows (prompt, mode, word, layer, decoding) and what they mean.

``compose_settings()`` yields the rows inside the pane's compose; the functions below read
them back from the pane (``node``), raising a readable ValueError for a bad number, and
describe the model and a finished generation in one line each.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.dom import DOMNode
from textual.widgets import Button, Input, Label, Select

from h2q_tui.app.fields import FieldSelect
from h2q_tui.generation.generate import MODES, Generation, GenerationStats, ModeConfig
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.steering import SteerConfig
from h2q_tui.generation.text import DEFAULT_PROMPT, Codec


def compose_settings() -> ComposeResult:
    """The prompt row (with Generate and Cancel), the mode row and the decoding row."""
    with Horizontal(classes="gen-row"):
        yield Label("prompt", classes="gen-label")
        yield Input(DEFAULT_PROMPT, id="gen-prompt", compact=True)
        yield Button("Generate (g)", id="gen-go", variant="primary", compact=True)
        yield Button("Cancel (Esc)", id="gen-cancel", compact=True)
    with Horizontal(classes="gen-row"):
        yield Label("mode", classes="gen-label")
        options = [(mode, mode) for mode in MODES]
        yield FieldSelect(options, value="sample", allow_blank=False, id="gen-mode", compact=True)
        yield Label("word", classes="gen-label-short")
        yield Input(placeholder="target word", id="gen-word", compact=True)
        yield Label("layer", classes="gen-label-short")
        yield FieldSelect([], prompt="no model", id="gen-layer", compact=True)
    with Horizontal(classes="gen-row"):  # a row of its own: 80 columns hold it
        yield Label("decoding", classes="gen-label")
        yield Label("L", classes="gen-label-tiny gen-first")
        yield Input("3", id="gen-lookahead", type="integer", compact=True)
        yield Label("w", classes="gen-label-tiny")
        yield Input("0.5", id="gen-flow", type="number", compact=True)
        yield Label("temp", classes="gen-label-short")
        yield Input("0.7", id="gen-temperature", type="number", compact=True)
        yield Label("tokens", classes="gen-label-short")
        yield Input("200", id="gen-tokens", type="integer", compact=True)
        yield Label("seed", classes="gen-label-short")
        yield Input("0", id="gen-seed", type="integer", compact=True)


def number(node: DOMNode, widget_id: str, kind: type, name: str) -> Any:
    raw = node.query_one(f"#{widget_id}", Input).value.strip()
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def chosen_layer(node: DOMNode) -> int:
    value = node.query_one("#gen-layer", Select).value
    return value if isinstance(value, int) else 0


def offer_layers(node: DOMNode, layers: int) -> None:
    """The layer picker lists ``layers`` layers, keeping the chosen one where it still exists."""
    picker = node.query_one("#gen-layer", Select)
    keep = min(chosen_layer(node), layers - 1)
    picker.set_options([(str(i), i) for i in range(layers)])
    picker.value = keep


def word(node: DOMNode) -> str:
    return node.query_one("#gen-word", Input).value.strip()


def prompt(node: DOMNode) -> str:
    return node.query_one("#gen-prompt", Input).value


def build_generation(node: DOMNode, model: Any, codec: Codec, strength: float) -> Generation:
    """A Generation from the rows and the steering ``strength``; ValueError for a bad setting."""
    mode = str(node.query_one("#gen-mode", Select).value)
    sampling = SamplingConfig(
        temperature=number(node, "gen-temperature", float, "temp"),
        max_new_tokens=number(node, "gen-tokens", int, "tokens"),
        seed=number(node, "gen-seed", int, "seed"),
    )
    modes = ModeConfig(
        mode=mode,
        lookahead=number(node, "gen-lookahead", int, "L"),
        flow_weight=number(node, "gen-flow", float, "w"),
    )
    # as `generate --steer WORD`: a word and a non-zero strength steer in every mode,
    # and sampling with them is the steer mode
    steer = SteerConfig(word=word(node), strength=strength, layer=chosen_layer(node))
    if mode == "sample" and steer.active:
        modes.mode = "steer"
    return Generation(model, codec, prompt(node), sampling, modes, steer)


def readout_settings(
    node: DOMNode, model: Any, strength: float, tokens: int
) -> tuple[SteerConfig, SamplingConfig]:
    """The steering and sampling of a readout; ValueError says what is missing or wrong."""
    steer = SteerConfig(word=word(node), strength=strength, layer=chosen_layer(node))
    if not steer.word or strength == 0.0:
        raise ValueError("the steering readout needs a target word and a non-zero strength (←/→)")
    steer.check(len(model.residual_blocks()))
    temperature = number(node, "gen-temperature", float, "temp")
    return steer, SamplingConfig(temperature=temperature, max_new_tokens=tokens)


def format_stats(stats: GenerationStats) -> str:
    return (
        f"{stats.new_tokens} tokens · {stats.tokens_per_s:.1f} tokens/s · first token "
        f"{1000 * stats.first_token_s:.0f} ms · {stats.seconds:.2f} s · stop: {stats.stop_reason}"
    )


def describe_model(model: Any, codec: Codec) -> str:
    family = getattr(getattr(model, "config", None), "family", type(model).__name__)
    layers = len(model.residual_blocks())
    params = sum(p.numel() for p in model.parameters())
    tokens = "BPE" if codec.tokenizer is not None else "bytes"
    return f"{family}, {layers} layers, {params:,} parameters, {tokens}"
