"""Ollama's HTTP API, both ways (SPEC §8).

- :mod:`~h2q_tui.ollama.server`: ``h2q-tui serve`` — our checkpoints, crystallized folders and
  live runs behind the Ollama API (Starlette + uvicorn), so any Ollama client works with them;
- :mod:`~h2q_tui.ollama.models`: the ``name:tag`` registry of what is served, loading and
  unloading with keep-alive, ``--follow`` (a run's newest checkpoint between requests);
- :mod:`~h2q_tui.ollama.client`: the bridge, a client (httpx, streaming) for any
  Ollama-compatible server; ``h2q-tui ollama list|pull|generate`` and the dashboard's pane;
- :mod:`~h2q_tui.ollama.protocol`: what both sides share: ``OLLAMA_HOST``, durations,
  options, names, the chat template (pure Python, no torch).

Nothing here imports textual, rich or h2q_tui.training.
"""
