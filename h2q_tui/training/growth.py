"""QRLM's rank-growth rule, as data: it watches the loss and says when to grow.

From ``growth_start_step``, every ``growth_interval`` steps: grow when the mean of the last
``growth_window`` losses is above ``growth_threshold`` x the mean of the ``growth_window``
losses that began ``growth_lookback`` steps ago (a plateau), and the rank is below the cap.
"""

from __future__ import annotations

from collections import deque

from h2q_tui.config import TrainConfig


class RankGrowthRule:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.losses: deque[float] = deque(maxlen=max(config.growth_lookback, config.growth_window))

    def observe(self, step: int, loss: float, rank: int) -> bool:
        """Record the loss of ``step``; True when the model should grow now."""
        c = self.config
        self.losses.append(loss)
        due = step >= c.growth_start_step and (step - c.growth_start_step) % c.growth_interval == 0
        if not (
            c.rank_growth
            and due
            and rank < c.growth_max_rank
            and len(self.losses) >= c.growth_lookback
        ):
            return False
        history = list(self.losses)
        recent = history[-c.growth_window :]
        past = history[-c.growth_lookback :][: c.growth_window]
        return sum(recent) / len(recent) > c.growth_threshold * sum(past) / len(past)

    def state_dict(self) -> dict:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.losses.clear()
        self.losses.extend(state["losses"])
