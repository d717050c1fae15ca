"""``h2q-tui presets``: one line per bundled preset — name, family, parameters, description.

Parameters are counted on a model built on the ``meta`` device (shapes only, no memory, no
initialisation), so even the 124 M-parameter preset lists instantly.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from h2q_tui import config
from h2q_tui.cli.parser import Parser
from h2q_tui.errors import UserError

MIN_DESCRIPTION_W = 24  # narrower terminals: descriptions go past the edge, unwrapped


@dataclass(frozen=True)
class PresetSummary:
    name: str
    family: str
    n_params: int | None  # None when the preset cannot be built (the problem is in description)
    description: str


def description_of(path: Path) -> str:
    """The first sentence of a preset TOML's opening comment (it may span comment lines),
    without the ``#``: never cut mid-sentence."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    words: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped.startswith("#") or (words and not stripped.lstrip("#").strip()):
            break  # the opening comment ends at code or at an empty comment line
        words += stripped.lstrip("#").split()
        for index, word in enumerate(words):
            if word.endswith(".") and not word.endswith("..."):
                return " ".join(words[: index + 1])
    return " ".join(words)


def count_on_meta(model_config: config.ModelConfig) -> int:
    """Trainable parameters of the model ``model_config`` describes, without allocating it."""
    import torch

    from h2q_tui.models import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(model_config)
    return count_parameters(model)


def summarize(name: str) -> PresetSummary:
    path = config.presets_dir() / f"{name}.toml"
    description = description_of(path)
    try:
        run_config = config.from_dict(config.load_preset(name), source=name)
        family = run_config.model.family
        n_params: int | None = count_on_meta(run_config.model)
    except (UserError, ValueError, TypeError, RuntimeError) as exc:
        return PresetSummary(name, "?", None, f"cannot build: {exc}")
    return PresetSummary(name, family, n_params, description)


def summaries() -> list[PresetSummary]:
    return [summarize(name) for name in config.preset_names()]


def format_table(rows: list[PresetSummary], width: int | None = None) -> str:
    """Aligned plain text, one preset a row. ``width`` (a terminal's columns): descriptions
    wrap under their column; None keeps each preset on one line (grep-friendly)."""
    if not rows:
        return "no bundled presets found"
    counts = [f"{r.n_params:,}" if r.n_params is not None else "?" for r in rows]
    name_w = max(len("preset"), *(len(r.name) for r in rows))
    family_w = max(len("family"), *(len(r.family) for r in rows))
    count_w = max(len("parameters"), *(len(c) for c in counts))
    indent = name_w + family_w + count_w + 6
    lines = [
        f"{'preset':<{name_w}}  {'family':<{family_w}}  {'parameters':>{count_w}}  description"
    ]
    wrap_w = None if width is None else max(MIN_DESCRIPTION_W, width - indent)
    for row, count in zip(rows, counts, strict=True):
        parts = (
            textwrap.wrap(row.description, wrap_w, break_on_hyphens=False)
            if wrap_w
            else [row.description]
        )
        lines.append(
            f"{row.name:<{name_w}}  {row.family:<{family_w}}  {count:>{count_w}}  "
            + (parts[0] if parts else "")
        )
        lines += [" " * indent + part for part in parts[1:]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    Parser(
        prog="h2q-tui presets",
        description="The bundled presets: name, model family, parameter count (counted on "
        "torch's meta device, so nothing is allocated) and the first sentence of the "
        "preset's comment. Use one with --preset NAME.",
    ).parse_args(argv)
    # on a terminal the descriptions wrap at its width; piped, one line per preset
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(format_table(summaries(), width))
    return 0
