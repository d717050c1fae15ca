"""Batches of byte windows: MicroStream's rolling horizon and plain random windows.

Dimension legend: B batch (parallel streams), T context, L stream length.
Both samplers expose ``state_dict`` / ``load_state_dict`` so a resume continues at the first
window not yet trained on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def window_pair(
    streams: torch.Tensor, start: int, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-byte targets of the columns [start, start + context) of (B, L) streams."""
    x = streams[:, start : start + context].long()  # (B, T)
    y = streams[:, start + 1 : start + context + 1].long()  # (B, T)
    return x, y


def parallel_streams(chunk: torch.Tensor, batch: int) -> torch.Tensor:
    """Reshape a chunk into ``batch`` contiguous streams: row b is the b-th consecutive slice."""
    length = chunk.numel() // batch
    return chunk[: batch * length].view(batch, length)  # (B, L)


class HorizonSampler:
    """Rolling horizon: chunks of ``chunk_bytes``; validate on the next chunk, then train on this.

    Each chunk becomes B parallel streams cut into non-overlapping T-column windows, one optimizer
    step per window. End of data wraps around to chunk 0 (a new epoch).
    """

    def __init__(self, data: torch.Tensor, batch: int, context: int, chunk_bytes: int) -> None:
        self.data, self.batch, self.context = data, batch, context
        self.chunk_bytes = min(chunk_bytes, data.numel())
        self.n_chunks = max(1, data.numel() // self.chunk_bytes)
        self.epoch = self.chunk = self.window = 0
        if self.windows_in_chunk(0) < 1:
            raise ValueError("data too short for one batch x context window")

    def chunk_bytes_of(self, index: int) -> torch.Tensor:
        start = index * self.chunk_bytes
        end = self.data.numel() if index == self.n_chunks - 1 else start + self.chunk_bytes
        return self.data[start:end]

    def windows_in_chunk(self, index: int) -> int:
        length = self.chunk_bytes_of(index).numel() // self.batch
        return (length - 1) // self.context

    def at_chunk_start(self) -> bool:
        return self.window == 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The window at the current position; call ``advance`` after training on it."""
        streams = parallel_streams(self.chunk_bytes_of(self.chunk), self.batch)
        return window_pair(streams, self.window * self.context, self.context)

    def advance(self) -> None:
        self.window += 1
        if self.window >= self.windows_in_chunk(self.chunk):
            self.window = 0
            self.chunk += 1
            if self.chunk >= self.n_chunks:
                self.chunk, self.epoch = 0, self.epoch + 1

    def horizon_val_batches(self, fraction: float) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Windows of the first ``fraction`` of the next chunk's columns (wrapping around)."""
        following = (self.chunk + 1) % self.n_chunks
        streams = parallel_streams(self.chunk_bytes_of(following), self.batch)
        count = max(1, int(self.windows_in_chunk(following) * fraction))
        for window in range(count):
            yield window_pair(streams, window * self.context, self.context)

    def progress(self) -> float:
        """Fraction of the current epoch already trained on."""
        return (
            self.chunk + self.window / max(1, self.windows_in_chunk(self.chunk))
        ) / self.n_chunks

    def byte_offset(self) -> int:
        """Offset in the corpus of the first byte of stream 0 not yet trained on."""
        return self.chunk * self.chunk_bytes + self.window * self.context

    def state_dict(self) -> dict:
        return {
            "kind": "horizon",
            "epoch": self.epoch,
            "chunk": self.chunk,
            "window": self.window,
            "byte_offset": self.byte_offset(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.chunk, self.window = state["epoch"], state["chunk"], state["window"]


class RandomWindowSampler:
    """Plain random windows (GPT baseline, QRLM): B offsets drawn from a seeded generator."""

    def __init__(self, data: torch.Tensor, batch: int, context: int, seed: int) -> None:
        if data.numel() < context + 2:
            raise ValueError("data too short for one context window")
        self.data, self.batch, self.context = data, batch, context
        self.generator = torch.Generator().manual_seed(seed)
        self.windows_drawn = 0

    def at_chunk_start(self) -> bool:
        return False

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.generator.get_state()
        offsets = torch.randint(
            0, self.data.numel() - self.context - 1, (self.batch,), generator=self.generator
        )
        self.generator.set_state(state)  # advance() commits the draw, so a batch can be re-read
        rows = torch.stack(
            [self.data[o : o + self.context + 1] for o in offsets.tolist()]
        )  # (B, T+1)
        return window_pair(rows, 0, self.context)

    def advance(self) -> None:
        torch.randint(
            0, self.data.numel() - self.context - 1, (self.batch,), generator=self.generator
        )
        self.windows_drawn += 1

    def progress(self) -> float:
        tokens = self.windows_drawn * self.batch * self.context
        return (tokens % self.data.numel()) / self.data.numel()

    @property
    def epoch(self) -> int:
        return self.windows_drawn * self.batch * self.context // self.data.numel()

    def state_dict(self) -> dict:
        return {
            "kind": "random",
            "generator": self.generator.get_state(),
            "windows_drawn": self.windows_drawn,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.windows_drawn = state["windows_drawn"]


def heldout_batches(
    data: torch.Tensor, context: int, batch: int, max_bytes: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping T-byte windows of the held-out bytes, ``batch`` windows at a time."""
    usable = data if max_bytes is None else data[:max_bytes]
    n_windows = (usable.numel() - 1) // context
    if n_windows < 1:
        raise ValueError("held-out data shorter than one context window")
    rows = usable[: n_windows * context + 1]
    starts = torch.arange(n_windows) * context
    for first in range(0, n_windows, batch):
        idx = starts[first : first + batch, None] + torch.arange(context + 1)  # (b, T+1)
        block = rows[idx]
        yield block[:, :-1].long(), block[:, 1:].long()
