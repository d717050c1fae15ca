"""Ollama's HTTP API, both ways (SPEC §8).

- :mod:`~h2q_tui.ollama.server`: ``h2q-tui serve`` — our checkpoints, crystallized folders and
  live runs behind the Ollama API (Starlette + uvicorn), so any Ollama client works with them;
  its endpoints live in :mod:`~h2q_tui.ollama.catalog` (tags, ps, show, pull),
  :mod:`~h2q_tui.ollama.completion` (generate, chat) and :mod:`~h2q_tui.ollama.embed`, what
  they share in :mod:`~h2q_tui.ollama.api`, the generation threads in
  :mod:`~h2q_tui.ollama.jobs` and the socket writes of a stream in :mod:`~h2q_tui.ollama.direct`;
- :mod:`~h2q_tui.ollama.models`: the ``name:tag`` registry of what is served, loading and
  unloading with keep-alive, ``--follow`` (a run's newest checkpoint between requests);
- :mod:`~h2q_tui.ollama.client`: the bridge, a client (httpx, streaming) for any
  Ollama-compatible server; ``h2q-tui ollama list|pull|generate`` and the dashboard's pane;
- :mod:`~h2q_tui.ollama.protocol` and :mod:`~h2q_tui.ollama.replies`: what both sides share:
  ``OLLAMA_HOST``, durations, options, names, the chat template; the answers' types, which the
  server builds and the client parses (pure Python, no torch).

Nothing here imports textual, rich or h2q_tui.training.
"""
