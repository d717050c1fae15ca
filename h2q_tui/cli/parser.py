"""The parser every ``h2q-tui`` command builds on, and the flag groups several commands share.

This module loads neither torch nor the dashboard, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable

import h2q_tui
from h2q_tui.errors import UserError
from h2q_tui.system import alerting
from h2q_tui.system.budget import EXAMPLES, SIZE_HELP, parse_size

EXIT_OK = 0


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default, unless the text already says it or there is none.

    Text with line breaks (the main help's list of subcommands) is printed as written.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = " ".join(text.split())  # never break inside a flag such as --no-ui
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, (str, list, tuple)) and len(default) == 0)
        ):
            return text
        if isinstance(default, str) and not default.strip():
            return text + f" (default: {default!r})"  # make a blank default visible
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults and whose errors are one line, exit 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2, like every other user error
        raise UserError(f"{message} (see {self.prog} --help)")


def version_text() -> str:
    """``h2q-tui 0.1.0 (torch 2.x, Python 3.x)``: the package metadata's version first."""
    # lazy: only --version loads torch; --help and every other flag do without it
    import platform

    import torch

    version = h2q_tui.__version__  # read from the installed distribution only when asked
    return f"h2q-tui {version} (torch {torch.__version__}, Python {platform.python_version()})"


class _VersionAction(argparse.Action):
    """``--version``: loads torch only when asked, so that ``--help`` does not pay for it."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit(EXIT_OK)


def main_parser(epilog: str) -> argparse.ArgumentParser:
    """The parser of ``h2q-tui`` without a subcommand; ``epilog`` lists the subcommands."""
    parser = Parser(
        prog="h2q-tui",
        usage="h2q-tui [--no-ui] [options]  |  h2q-tui SUBCOMMAND ...",
        description="Train, watch and compare Hamiltonian/quaternion byte LMs. Without a "
        "subcommand: the dashboard (press t to train), or headless training with --no-ui.",
        epilog=epilog,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument(
        "--no-ui", action="store_true", help="train headless: progress lines on stdout"
    )
    parser.add_argument(
        "--autostart", action="store_true", help="dashboard: start training at once"
    )
    add_run_flags(parser)
    return parser


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """What a training run is made of: preset, data, overrides, run dir, limits, budgets, device."""
    parser.add_argument(
        "--preset",
        help="preset name (list them: h2q-tui presets) or a .toml path (default: microstream-cpu)",
    )
    parser.add_argument(
        "--data", help="text file, directory of text files, or tinystories|wikitext2|shakespeare"
    )
    parser.add_argument(
        "--heldout", help="held-out text file (default: a tail of the corpus never trained on)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a preset value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    parser.add_argument(
        "--run-dir", help="where metrics.jsonl and checkpoints go (default runs/<preset>-<time>)"
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop when the run's total step count reaches N (0: set up, report, exit); "
        "left out: train.max_steps of the preset or resumed run (-1 = no limit)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="stop after S seconds of training in all (0: no step); left out: "
        "train.max_seconds of the preset or resumed run (-1 = no limit)",
    )
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads for training (train.threads; default 0 = auto: the faster of 1 "
        "and all cores, timed on the first steps and again when the step time drifts)",
    )
    parser.add_argument(
        "--tokenizer", help="a local BPE tokenizer.json (tokenizers library); default: bytes"
    )
    add_budget_flags(parser)
    add_alert_flags(parser)
    add_device_flag(parser)


def add_alert_flags(parser: argparse.ArgumentParser) -> None:
    """``--on-alarm CMD`` and ``--alarm-webhook URL``: alarms (NaN/Inf, divergence, memory)
    reach a person; only rank 0 of a torchrun job sends them."""
    parser.add_argument(
        "--on-alarm",
        metavar="CMD",
        type=alerting.command_argument,
        help="run CMD on each alarm (NaN/Inf, divergence, memory budget): split like a shell "
        "line but run without one, the alarm's JSON on stdin and H2Q_ALARM_KIND, "
        "H2Q_ALARM_MESSAGE, H2Q_RUN_DIR, H2Q_STEP set; killed after "
        f"{alerting.COMMAND_TIMEOUT_S:g} s",
    )
    parser.add_argument(
        "--alarm-webhook",
        metavar="URL",
        type=alerting.webhook_argument,
        help="POST each alarm as JSON to an http(s) URL (a Slack or Discord incoming webhook "
        f"takes its text line); at most one per kind a minute and {alerting.HOURLY_CAP} an hour; "
        "never blocks training, failures are noted in metrics.jsonl",
    )


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N (default: auto)",
    )


def add_dequantize_flag(parser) -> None:
    parser.add_argument(
        "--dequantize",
        action="store_true",
        help="run a crystallized checkpoint on float weights decoded at load (the reference "
        "its integer products are measured against) instead of on its stored integers",
    )


def size_argument(name: str) -> Callable[[str], str]:
    """An argparse ``type``: the size as written, once it parses (else a one-line UserError)."""

    def check(text: str) -> str:
        parse_size(text, name)
        return text.strip()

    check.__name__ = "size"
    return check


def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    """``--memory-budget SIZE`` and ``--vram-budget SIZE`` (training and the dashboard)."""
    parser.add_argument(
        "--memory-budget",
        metavar="SIZE",
        type=size_argument("--memory-budget"),
        help=f"this process's RSS limit, {EXAMPLES} ({SIZE_HELP}); from 90 %% an alarm, above "
        "100 %% training saves a checkpoint and pauses (--no-ui: stops, exit 3); the "
        "machine's RAM is shown apart (train.memory_budget; default: none)",
    )
    parser.add_argument(
        "--vram-budget",
        metavar="SIZE",
        type=size_argument("--vram-budget"),
        help="the same for CUDA memory reserved by this process (train.vram_budget; default: none)",
    )


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """Sampling, mode and steering flags shared by ``generate`` and ``steer-eval``."""
    # only the decoding commands call this; the generator (and torch) load with them
    from h2q_tui.generation.generate import MODES, ModeConfig
    from h2q_tui.generation.sampling import SamplingConfig
    from h2q_tui.system.thread_choice import DECODE_THREADS

    s, m = SamplingConfig(), ModeConfig()
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=s.temperature, help="0 = greedy")
    group.add_argument("--top-k", type=int, default=s.top_k, help="0 = off")
    group.add_argument("--top-p", type=float, default=s.top_p, help="1 = off")
    group.add_argument(
        "--repetition-penalty", type=float, default=s.repetition_penalty, help="CTRL-style; 1 = off"
    )
    group.add_argument(
        "--max-new-tokens", type=int, default=s.max_new_tokens, help="tokens to generate"
    )
    group.add_argument("--seed", type=int, default=s.seed, help="sampling seed")
    group.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    group.add_argument("--no-cache", action="store_true", help="recompute the context every token")
    group.add_argument(
        "--threads",
        type=int,
        help=f"torch threads for decoding (default: {DECODE_THREADS}; batch-1 decoding of these "
        "small models is fastest on one thread, and leaves the other cores to training)",
    )
    add_device_flag(group)
    add_dequantize_flag(group)
    group = parser.add_argument_group("modes")
    group.add_argument(
        "--mode", choices=MODES, default="sample", help="how the next token is picked"
    )
    group.add_argument("--lookahead", type=int, default=m.lookahead, help="L of mode lookahead")
    group.add_argument("--flow-weight", type=float, default=m.flow_weight, help="w of mode flow")
    group = parser.add_argument_group("steering")
    group.add_argument("--layer", type=int, default=0, help="block whose input is steered")
    group.add_argument(
        "--direction",
        choices=("embedding", "contrast"),
        default="embedding",
        help="the word's embedding rows, or its activations minus the contrast prompt's",
    )
    group.add_argument("--contrast", default=" ", help="contrast prompt of --direction contrast")
    group.add_argument(
        "--positions",
        choices=("all", "front"),
        default="all",
        help="steer every position or the prompt's",
    )
