"""Integer matrix products for crystallized weights, computed on the stored codes.

``int8_product`` and ``groups_product`` bind one weight to the C kernels of ``products.c``
(built once per machine, :mod:`h2q_kernels.quantized.build`) as a :class:`Product`;
``reference_int8_rows`` and ``reference_code_groups`` are the same arithmetic in torch,
readable and slow, that the tests hold the kernels to.

The activations are rounded to int8 per block of 32 values (scale absmax / 127 a block), so
the products differ from a float product with the decoded weights by at most half a step of
each activation block (|x − x̂| ≤ absmax/254 a value): ``activation_blocks`` computes x̂.

Dimension legend: T rows of x, K its width, N outputs, G the group length.
"""

from __future__ import annotations

import torch

from h2q_kernels.quantized.build import Library, library

BLOCK = 32

__all__ = [
    "BLOCK",
    "Library",
    "activation_blocks",
    "Product",
    "groups_product",
    "int8_product",
    "library",
    "reference_code_groups",
    "reference_int8_rows",
    "supports",
]


def supports(width: int, group: int | None = None) -> bool:
    """Whether the kernels take a weight of input width ``width`` (and group length ``group``)."""
    if width <= 0 or width % BLOCK:
        return False
    return group is None or (group % BLOCK == 0 and width % group == 0)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as contiguous fp32 rows (T, K): a view when it already is one."""
    flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    if flat.dtype != torch.float32 or not flat.is_contiguous():
        flat = flat.to(torch.float32).contiguous()
    return flat


class Product:
    """x (…, K) Wᵀ + bias by one packed weight, its pointers and sizes bound once (a batch-1
    token makes a few dozen of these calls: their Python cost is kept to one ctypes call)."""

    def __init__(self, kernel, parts: tuple[torch.Tensor, ...], fixed: tuple, outputs: int):
        self._parts = parts  # kept alive: the kernel reads them through their pointers
        self._kernel, self._fixed, self.outputs = kernel, fixed, outputs

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None, threads: int) -> torch.Tensor:
        flat = _rows(x)
        y = torch.empty(flat.shape[0], self.outputs)
        pointer = None if bias is None else bias.data_ptr()
        if self._kernel(
            flat.data_ptr(), flat.shape[0], *self._fixed, pointer, y.data_ptr(), threads
        ):
            raise MemoryError("integer product: the activation buffer could not be allocated")
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.outputs)


def int8_product(q: torch.Tensor, scale: torch.Tensor) -> Product:
    """The product by (q · scale): q (N, K) int8, scale (N,) fp16, both contiguous."""
    handle = library().handle
    fixed = (q.shape[1], q.data_ptr(), scale.data_ptr(), q.shape[0])
    return Product(handle.h2q_int8_rows, (q, scale), fixed, q.shape[0])


def groups_product(
    codes: torch.Tensor, nibbles: bool, scale: torch.Tensor, mins: torch.Tensor, group: int
) -> Product:
    """The product by (min + codes · scale) with per-group fp16 scale and min.

    ``codes``: (N, K/2) uint8, two 4-bit codes a byte, low nibble first (``nibbles``), or
    (N, K) uint8, one code (≤ 63) a byte; ``scale``, ``mins``: (N · K/G,) fp16.
    """
    handle = library().handle
    width = codes.shape[1] * (2 if nibbles else 1)
    fixed = (width, codes.data_ptr(), int(nibbles), scale.data_ptr(), mins.data_ptr(), group,
             codes.shape[0])  # fmt: skip
    return Product(handle.h2q_code_groups, (codes, scale, mins), fixed, codes.shape[0])


def activation_blocks(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels see it: rounded to int8 per block of 32 along the last dimension."""
    blocks = x.float().reshape(*x.shape[:-1], -1, BLOCK)
    step = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    inverse = torch.where(step > 0, 1.0 / step, torch.zeros_like(step))
    return (torch.round(blocks * inverse) * step).reshape(x.shape)


def reference_int8_rows(x, q, scale, bias=None) -> torch.Tensor:
    """:func:`int8_product` in torch: the decoded weight against the int8-block activations."""
    weight = q.float() * scale.float()[:, None]
    return torch.nn.functional.linear(activation_blocks(x), weight, bias)


def reference_code_groups(x, codes, nibbles, scale, mins, group, bias=None) -> torch.Tensor:
    """:func:`groups_product` in torch, with the exact sums of x carrying the groups' minimums."""
    rows = codes.shape[0]
    if nibbles:
        low, high = codes & 0x0F, codes >> 4
        values = torch.stack([low, high], dim=-1).reshape(rows, -1)
    else:
        values = codes
    width = values.shape[1]
    coded = values.float().reshape(rows, width // group, group) * scale.float().reshape(rows, -1, 1)
    shifted = torch.nn.functional.linear(activation_blocks(x), coded.reshape(rows, width))
    sums = x.float().reshape(*x.shape[:-1], width // group, group).sum(dim=-1)
    out = shifted + sums @ mins.float().reshape(rows, -1).T
    return out if bias is None else out + bias
