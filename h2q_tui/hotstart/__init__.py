"""Hot start: how long a checkpoint takes from "load this" to its first token, measured by
phase (cold and warm, fresh process and in-process), and the timeline of what this process
loaded and swapped (timeline.py)."""
