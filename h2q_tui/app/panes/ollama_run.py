"""The Ollama pane's work off the UI thread: the server probe and one prompt on each side.

Every function here runs in one of the pane's thread workers and returns plain values (or
one line saying what went wrong); the pane posts them to itself and draws.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from textual.dom import DOMNode
from textual.widgets import Input

from h2q_tui.generation.generate import Generation, use_decoding_threads
from h2q_tui.generation.sampling import SamplingConfig
from h2q_tui.generation.text import DEFAULT_PROMPT
from h2q_tui.ollama.client import BridgeError, OllamaClient

MAX_TOKENS = 4096  # the most new tokens the pane asks either side for

# What one run asks of both sides: prompt, new tokens, temperature, seed.
Settings = tuple[str, int, float, int]


def read_settings(node: DOMNode) -> Settings:
    """The prompt row's settings (empty fields take their defaults); ValueError for bad ones."""
    prompt = node.query_one("#oll-prompt", Input).value or DEFAULT_PROMPT
    try:
        tokens = int(node.query_one("#oll-tokens", Input).value or "100")
        temperature = float(node.query_one("#oll-temperature", Input).value or "0.7")
        seed = int(node.query_one("#oll-seed", Input).value or "0")
    except ValueError:
        raise ValueError("tokens and seed must be whole numbers, T a number") from None
    if not 1 <= tokens <= MAX_TOKENS:
        raise ValueError(f"tokens must be in 1..{MAX_TOKENS}, got {tokens}")
    if temperature < 0:
        raise ValueError(f"T must be ≥ 0, got {temperature}")
    return prompt, tokens, temperature, seed


def probe(url: str) -> tuple[str, str | None, list[str], str]:
    """(base URL, version, model names, error line) of the server at ``url`` ("": the default)."""
    try:
        client = OllamaClient(url or None)
    except ValueError as exc:
        return url, None, [], f"bad server address: {exc}"
    with client:
        try:
            version = client.probe()
            names = [m.name for m in client.list()]
        except BridgeError as exc:
            return client.base_url, None, [], str(exc)
    return client.base_url, version, names, ""


def local_line(info: Any) -> str:
    """The local side's title for a loaded checkpoint: ``run X step N (step_00000007)``."""
    return f"{info.describe()} ({info.weights.parent.name})"


def local_stats(stats: Any, load_s: float | None) -> str:
    """The local side's line, counted as Ollama counts: tokens over the time after the first."""
    eval_s = stats.seconds - stats.first_token_s
    rate = (
        f"{stats.new_tokens / eval_s:,.1f} tok/s"
        if stats.new_tokens and eval_s > 0
        else "tok/s n/a"
    )
    first = f"first {1000 * stats.first_token_s:,.0f} ms" if stats.new_tokens else "no tokens"
    load = f"load {1000 * load_s:,.1f} ms" if load_s is not None else "load n/a"
    return f"{stats.new_tokens} tokens · {rate} · {first} · {load}"


def ollama_stats(result: Any) -> str:
    rate = result.tokens_per_s
    parts = [f"{result.tokens} tokens", f"{rate:,.1f} tok/s" if rate is not None else "tok/s n/a"]
    parts.append(
        f"first {1000 * result.first_token_s:,.0f} ms"
        if result.first_token_s is not None
        else "no tokens"
    )
    load = result.load_s
    parts.append(f"hot start {1000 * load:,.1f} ms" if load is not None else "hot start n/a")
    return " · ".join(parts)


class SideRun:
    """One run of the prompt: the Ollama side, then the local side, each cancellable.

    ``push(side, piece)`` receives the text as it streams; each side returns its stats line
    and an error line (one of the two empty).
    """

    def __init__(self, push: Callable[[str, str], None]) -> None:
        self.push = push
        self.cancelled = threading.Event()
        self._stream: Any = None  # the server's stream while the Ollama side runs
        self._generation: Any = None  # the local Generation while the local side runs

    def cancel(self) -> None:
        self.cancelled.set()
        stream, generation = self._stream, self._generation
        if stream is not None:
            stream.cancel()  # closing the stream ends the server's generation
        if generation is not None:
            generation.cancel()

    def ollama(self, url: str, model: str, settings: Settings) -> tuple[str, str]:
        prompt, tokens, temperature, seed = settings
        options = {"num_predict": tokens, "temperature": temperature, "seed": seed}
        try:
            with OllamaClient(url) as client:
                stream = client.generate(model, prompt, options)
                self._stream = stream
                if self.cancelled.is_set():
                    stream.cancel()
                for piece in stream:
                    self.push("ollama", piece)
                result = stream.result
        except BridgeError as exc:
            return "", str(exc)
        finally:
            self._stream = None
        return ollama_stats(result) + (" · cancelled" if result.cancelled else ""), ""

    def local(self, local: tuple[Any, Any, str, float], settings: Settings,
              lock: threading.Lock) -> tuple[str, str]:  # fmt: skip
        """Generate on the local model under ``lock`` (one generation on it at a time)."""
        model, codec, _, load_s = local
        prompt, tokens, temperature, seed = settings
        use_decoding_threads()
        with lock:
            try:
                sampling = SamplingConfig(temperature=temperature, max_new_tokens=tokens, seed=seed)
                generation = Generation(model, codec, prompt, sampling=sampling)
                self._generation = generation
                if self.cancelled.is_set():
                    generation.cancel()
                for piece in generation:
                    self.push("local", piece)
            except Exception as exc:  # noqa: BLE001 - one line in the pane
                return "", f"local: {type(exc).__name__}: {exc}"
            finally:
                self._generation = None
        stats = local_stats(generation.stats, load_s)
        if generation.stats.stop_reason == "cancelled":
            stats += " · cancelled"
        return stats, ""
