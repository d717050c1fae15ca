"""Helpers for the Ollama tests: tiny runs on disk, a real uvicorn on a free port in a thread,
and forward hooks that slow a model down or make it fail mid-generation."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from h2q_tui.checkpoints import save_checkpoint
from h2q_tui.config import resolve
from h2q_tui.models import build_model

TEXT = (
    "Once upon a time there was a little cat who liked to sit in the sun. "
    "One day the cat saw a bird and ran after it, but the bird flew away. "
) * 40


def make_run(root: Path, name: str = "tiny", steps: tuple[int, ...] = (5,), seed: int = 0) -> Path:
    """A run dir holding tiny-preset checkpoints at ``steps`` (random weights, ~10 ms each)."""
    run = root / name
    config = resolve("tiny")
    for step in steps:
        torch.manual_seed(seed + step)
        save_checkpoint(run, build_model(config.model), config, step, f"{name}-run", {})
    return run


def crystallize_int8(run: Path) -> Path:
    """``h2q-tui crystallize RUN --method int8`` in this process: RUN/crystal/int8/."""
    from h2q_tui.cli import main as cli

    data = run.parent / f"{run.name}-data.txt"
    data.write_text(TEXT)
    code = cli.main(
        ["crystallize", str(run), "--method", "int8", "--data", str(data), "--windows", "2"]
    )
    assert code == 0
    return run / "crystal" / "int8"


class LiveServer:
    """An ASGI app on a real uvicorn, 127.0.0.1 and a free port, in a thread; ``stack`` as
    ``h2q-tui serve --stack`` (default: serve's own, where the generation thread writes)."""

    def __init__(self, app, stack: str = "direct") -> None:
        import uvicorn

        from h2q_tui.cli.serve import stack as uvicorn_stack

        loop, http, _ = uvicorn_stack(stack)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", loop=loop, http=http
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def hooked(model, delay_s: float = 0.0, fail_after: int | None = None) -> Iterator[dict]:
    """Every forward of ``model`` sleeps ``delay_s``; the ``fail_after``-th one raises."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if fail_after is not None and calls["n"] >= fail_after:
            raise RuntimeError("boom: a fault injected by the test")
        if delay_s:
            time.sleep(delay_s)

    handle = model.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def serving(run: Path) -> Iterator[tuple]:
    """(Server, base URL) of ``h2q-tui serve RUN`` live on serve's own stack."""
    from h2q_tui.ollama.models import Registry
    from h2q_tui.ollama.server import Server

    server = Server(Registry.discover([run]))
    with LiveServer(server.app) as live:
        yield server, live.url
