"""The ICU pane's metric cards: one reading each, for the focused run."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static

from h2q_tui.app import formatting as fmt
from h2q_tui.system.monitor import SystemSnapshot, format_value
from h2q_tui.training.history import RunHistory
from h2q_tui.units import format_size, short_size

CARDS = [
    ("state", "State"),
    ("step", "Step"),
    ("train", "Train CE"),
    ("horizon", "Horizon val / diff"),
    ("heldout", "Held-out val"),
    ("energy", "Energy ‖h‖"),
    ("grad", "Grad norm"),
    ("speed", "Speed"),
    ("eta", "ETA"),
    ("lr", "Learning rate"),
    ("penalty", "Penalty · rank"),
    ("process", "This process"),
]
# what else would be cut at 80 columns
COMPACT_TITLES = {"horizon": "Horizon val/diff", "process": "Process"}


class MetricCard(Static):
    """A titled box holding one reading."""

    def __init__(self, key: str, title: str) -> None:
        super().__init__(id=f"card-{key}", classes="card")
        self.border_title = title

    def show(self, text: str | Text) -> None:
        """New text, redrawn in place: a card's size is fixed, so no layout pass (which
        would recompose the whole screen) and nothing at all when the text is unchanged.
        A str is shown as it is (never parsed as markup)."""
        text = Text(text) if isinstance(text, str) else text
        if text != self.content:
            self.update(text, layout=False)


class CardGrid(Grid):
    """The ICU cards for the focused run."""

    def compose(self) -> ComposeResult:
        for key, title in CARDS:
            yield MetricCard(key, title)

    _compact: bool | None = None

    def show(
        self,
        history: RunHistory,
        state: str,
        compact: bool = False,
        snap: SystemSnapshot | None = None,
        live: bool = True,
    ) -> None:
        if compact != self._compact:
            self._compact = compact
            for key, title in CARDS:
                card = self.query_one(f"#card-{key}", MetricCard)
                card.border_title = COMPACT_TITLES.get(key, title) if compact else title
        for key, text in card_texts(history, state, compact).items():
            self.query_one(f"#card-{key}", MetricCard).show(text)
        self.show_process(snap, history, live)

    def show_process(
        self, snap: SystemSnapshot | None, history: RunHistory | None, live: bool = True
    ) -> None:
        """The process card alone: new system readings arrive on their own clock."""
        text = process_text(snap, history, bool(self._compact), live)
        self.query_one("#card-process", MetricCard).show(text)


def process_text(
    snap: SystemSnapshot | None,
    history: RunHistory | None = None,
    compact: bool = False,
    live: bool = True,
) -> Text:
    """This process's RSS, CPU share and CUDA memory (when it has some), from the monitor
    thread's last snapshot. Attached (``live`` false) the run's RSS from its step records:
    this viewer's own readings say nothing of the run."""
    size = short_size if compact else format_size
    if not live:
        step = (history.last_step if history else None) or {}
        rss = step.get("rss_bytes")
        at = f"@ step {step['step']:,}" if rss is not None else "no reading yet"
        return Text(f"run RSS {size(rss)}\n{at}")
    if snap is None:
        return Text(f"RSS {fmt.NA}\nCPU {fmt.NA}", style="dim")
    rss = f"RSS {size(snap.process_rss_bytes)}"
    cpu = f"CPU {format_value(snap.process_cpu_percent, '.0f')}%"
    cuda = snap.cuda_reserved_bytes
    cuda = snap.cuda_allocated_bytes if cuda is None else cuda
    if cuda is None:
        return Text(f"{rss}\n{cpu}")
    if compact:  # two lines of at most 17 characters
        return Text(f"{rss} {cpu}\nGPU {size(cuda)} reserved")
    return Text(f"{rss}\n{cpu}\nGPU {size(cuda)} reserved")


def card_texts(h: RunHistory, state: str, compact: bool = False) -> dict[str, str | Text]:
    """The text of every card, from the history alone (deterministic for snapshots).

    ``compact`` (small terminals): at most two lines of at most 17 characters per card.
    Any reading may be missing or null (old or foreign logs): it shows n/a.
    """
    step = h.last_step or {}
    train_cfg = h.config.get("train", {})
    model_cfg = h.config.get("model", {})
    max_steps = train_cfg.get("max_steps") or 0
    at_step = step.get("step", (h.started or {}).get("start_step", 0))
    total = f" / {max_steps:,}" if max_steps > 0 else ""  # -1 (older logs: 0): no limit
    progress = ""
    if step:
        share = fmt.number(_times(step.get("data_progress"), 100), ".1f")
        epoch = fmt.number(step.get("epoch"), "d")
        progress = f"epoch {epoch} · {share}%"  # of the epoch's data ("of data" wrapped at 160)
    horizon = h.last_horizon or {}
    colour = fmt.horizon_colour(horizon.get("val_loss_nats"), horizon.get("train_loss_nats"))
    horizon_text = Text(
        f"Val  {fmt.number(horizon.get('val_loss_nats'), '.4f')}\nDiff {fmt.number(horizon.get('diff_nats'), '+.4f')}",
        style=colour,
    )
    if not compact:
        horizon_text.append("\nnext chunk; noisy", style="dim")
    heldout = h.last_heldout or {}
    heldout_nats = heldout.get("val_loss_nats")
    if compact:
        heldout_text = fmt.loss_text(heldout_nats, short=True) + (
            f" @{heldout['step']:,}" if heldout else ""
        )
    else:
        heldout_text = fmt.loss_text(heldout_nats) + (
            f"\n@ step {heldout['step']:,}" if heldout else ""
        )
    state_text = Text(state, style="bold red" if "ALARM" in state else "bold")
    rank = model_cfg.get("rank") if model_cfg.get("family") != "gpt" else None
    speed = fmt.NA
    if step.get("step_ms") is not None or step.get("tokens_per_s") is not None:
        speed = (
            f"{fmt.number(step.get('step_ms'), ',.0f')} ms/step\n"
            f"{fmt.number(step.get('tokens_per_s'), ',.0f')} tok/s"
        )
    return {
        "state": state_text,
        "step": f"{at_step:,}{total}\n{progress}",
        "train": fmt.loss_text(step.get("train_loss_nats"), short=compact),
        "horizon": horizon_text,
        "heldout": heldout_text,
        "energy": fmt.number(step.get("energy"), ".2f"),
        "grad": fmt.number(step.get("grad_norm"), ".3f") + ("\nbefore clipping" if step else ""),
        "speed": speed,
        "eta": fmt.duration(h.eta_seconds()),
        "lr": fmt.number(step.get("lr"), ".3e"),
        "penalty": fmt.number(step.get("aux_loss"), ".4f")
        + f" · rank {h.rank if h.rank is not None else (rank if rank is not None else fmt.NA)}"
        + (f"\nraw {fmt.number(step.get('penalty'), '.2f')}" if step else ""),
    }


def _times(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
