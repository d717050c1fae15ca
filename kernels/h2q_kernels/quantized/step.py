"""One decoding step of a pre-LN transformer in one C call (``decode_step.c``).

:class:`PreLNStep` binds a model's tensors once (embeddings, norms, the six matrices of each
block, the key/value caches) into the C structs; a call then runs one new token through
every block, the final norm and the head, and returns (logits (V,), hidden (C,)). Each
matrix is a :class:`Matrix`: fp32 (:func:`dense`), int8 rows (:func:`int8_rows`) or code
groups (:func:`code_groups`), the layouts of :mod:`h2q_kernels.quantized`'s products.

Dimension legend: C the width, V the vocabulary, nh heads, K the context (cache length).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from h2q_kernels.quantized.build import library

_P, _I64 = ctypes.c_void_p, ctypes.c_int64
DENSE, INT8_ROWS, CODE_GROUPS = 0, 1, 2


class _Matrix(ctypes.Structure):
    _fields_ = [("kind", _I64), ("rows", _I64), ("width", _I64), ("group", _I64),
                ("nibbles", _I64), ("weights", _P), ("scale", _P), ("mins", _P),
                ("bias", _P)]  # fmt: skip


class _Norm(ctypes.Structure):
    _fields_ = [("normalize", _I64), ("weight", _P), ("bias", _P), ("eps", ctypes.c_double)]


class _Layer(ctypes.Structure):
    _fields_ = [("ln1", _Norm), ("qkv", _Matrix), ("out", _Matrix), ("ln2", _Norm),
                ("fc1", _Matrix), ("fc2", _Matrix), ("kv", _P)]  # fmt: skip


class _Model(ctypes.Structure):
    _fields_ = [("width", _I64), ("heads", _I64), ("context", _I64), ("layers", _I64),
                ("widest", _I64), ("embedding", _P), ("positions", _P),
                ("layer", ctypes.POINTER(_Layer)), ("final", _Norm), ("head", _Matrix)]  # fmt: skip


def _floats(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor the kernel may read as fp32: contiguous fp32 on the CPU, else a ValueError."""
    if tensor is None:
        return None
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("the decode step reads contiguous fp32 tensors on the CPU")
    return tensor


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


@dataclass
class Matrix:
    """An (N, K) matrix and its bias as the kernels read them; ``keep`` holds the tensors."""

    kind: int
    shape: tuple[int, int]
    weights: torch.Tensor
    bias: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    mins: torch.Tensor | None = None
    group: int = 0
    nibbles: bool = False

    def struct(self) -> _Matrix:
        rows, width = self.shape
        return _Matrix(self.kind, rows, width, self.group, int(self.nibbles),
                       self.weights.data_ptr(), _pointer(self.scale), _pointer(self.mins),
                       _pointer(self.bias))  # fmt: skip


def dense(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Matrix:
    """An fp32 (N, K) matrix."""
    return Matrix(DENSE, tuple(weight.shape), _floats(weight.detach()), _bias(bias))


def int8_rows(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> Matrix:
    """(q · scale): q (N, K) int8, scale (N,) fp16."""
    return Matrix(INT8_ROWS, tuple(q.shape), q.contiguous(), _bias(bias), scale.contiguous())


def code_groups(codes, nibbles: bool, scale, mins, group: int, bias=None) -> Matrix:
    """(min + codes · scale) per group of ``group`` along a row (as ``groups_product``)."""
    width = codes.shape[1] * (2 if nibbles else 1)
    return Matrix(CODE_GROUPS, (codes.shape[0], width), codes.contiguous(), _bias(bias),
                  scale.contiguous(), mins.contiguous(), group, nibbles)  # fmt: skip


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else _floats(bias.detach())


def _norm(args: tuple | None) -> tuple[_Norm, tuple]:
    """A LayerNorm's (normalized_shape, weight, bias, eps) as the struct; None: identity."""
    if args is None:
        return _Norm(0, None, None, 0.0), ()
    _, weight, bias, eps = args
    weight, bias = _bias(weight), _bias(bias)
    return _Norm(1, _pointer(weight), _pointer(bias), float(eps)), (weight, bias)


@dataclass
class Block:
    """One pre-LN block: its norms' arguments (or None), matrices and key/value cache."""

    ln1: tuple | None
    qkv: Matrix
    out: Matrix
    ln2: tuple | None
    fc1: Matrix
    fc2: Matrix
    kv: torch.Tensor  # (2, nh, K, hs) fp32


class PreLNStep:
    """``step(token, offset)`` -> (logits (V,), hidden (C,)) of one new token at ``offset``;
    the blocks' caches must hold positions 0 … offset − 1. Raises ValueError at binding when
    a tensor is not the kernel's kind (another device or dtype) or the kernels are absent."""

    def __init__(self, embedding, positions, blocks: list[Block], final, head: Matrix,
                 heads: int) -> None:  # fmt: skip
        handle = library().handle
        if handle is None:
            raise ValueError(library().describe)
        self._call = handle.h2q_pre_ln_token
        vocab, width = embedding.shape
        context = positions.shape[0]
        if head.shape != (vocab, width) or width % heads:
            raise ValueError("the head or the heads do not match the embedding")
        keep: list = [_floats(embedding.detach()), _floats(positions.detach()), head]
        widest = [width, vocab]  # the scratch rows; attention's scores are sized by context
        layers = (_Layer * len(blocks))()
        for slot, block in zip(layers, blocks, strict=True):
            ln1, kept1 = _norm(block.ln1)
            ln2, kept2 = _norm(block.ln2)
            kv = _floats(block.kv)
            if kv.shape != (2, heads, context, width // heads):
                raise ValueError("a key/value cache does not match the model")
            if (block.qkv.shape, block.out.shape) != ((3 * width, width), (width, width)):
                raise ValueError("a block's attention matrices do not match the width")
            hidden = block.fc1.shape[0]
            if (block.fc1.shape, block.fc2.shape) != ((hidden, width), (width, hidden)):
                raise ValueError("a block's MLP matrices do not match the width")
            slot.ln1, slot.ln2, slot.kv = ln1, ln2, kv.data_ptr()
            slot.qkv, slot.out = block.qkv.struct(), block.out.struct()
            slot.fc1, slot.fc2 = block.fc1.struct(), block.fc2.struct()
            keep += [kept1, kept2, kv, block]
            widest += [3 * width, hidden]
        final_norm, kept = _norm(final)
        keep.append(kept)
        self._keep, self._layers = keep, layers  # the kernel reads them through pointers
        self.width, self.vocab, self.context = width, vocab, context
        self._model = _Model(width, heads, context, len(blocks), max(widest),
                             embedding.data_ptr(), positions.data_ptr(), layers, final_norm,
                             head.struct())  # fmt: skip
        self._address = ctypes.byref(self._model)
        self._spent: ctypes.c_double | None = None

    def time_products(self, on: bool) -> None:
        """Start (on) or stop adding up the seconds the steps spend in their matrix products."""
        self._spent = ctypes.c_double(0.0) if on else None

    @property
    def product_seconds(self) -> float:
        """Seconds in matrix products since ``time_products(True)`` (0 when not timing)."""
        return 0.0 if self._spent is None else self._spent.value

    def __call__(self, token: int, offset: int, threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not (0 <= token < self.vocab and 0 <= offset < self.context):
            raise IndexError(f"token {token} at position {offset} is outside the model")
        logits, hidden = torch.empty(self.vocab), torch.empty(self.width)
        spent = None if self._spent is None else ctypes.byref(self._spent)
        if self._call(
            self._address, token, offset, logits.data_ptr(), hidden.data_ptr(), threads, spent
        ):
            raise MemoryError("decode step: its scratch memory could not be allocated")
        return logits, hidden


def matrix_product(matrix: Matrix, x: torch.Tensor, threads: int = 1) -> torch.Tensor:
    """W x + b for one (K,) fp32 vector, as the decode step computes each of its products."""
    handle = library().handle
    if handle is None:
        raise ValueError(library().describe)
    x = _floats(x.detach().contiguous())
    if x.shape != (matrix.shape[1],):
        raise ValueError(f"x has shape {tuple(x.shape)}, the matrix takes ({matrix.shape[1]},)")
    y = torch.empty(matrix.shape[0])
    if handle.h2q_matrix_product(
        ctypes.byref(matrix.struct()), x.data_ptr(), y.data_ptr(), threads
    ):
        raise MemoryError("matrix product: its scratch memory could not be allocated")
    return y
