"""Hot start: how long a checkpoint takes from "load this" to its first token, measured by
phase (cold and warm, fresh process and in-process); the loads themselves and the timeline of
what this process loaded are in h2q_tui/checkpoints (loader.py, timing.py)."""
