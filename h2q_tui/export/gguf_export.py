"""``h2q-tui export gguf``: a GPT checkpoint (plain or crystallized) as a llama.cpp ``gpt2`` GGUF.

Our GPT is GPT-2's layout with ``nn.Linear`` weights, so every tensor maps one to one, in the
same orientation (the fused q/k/v projection is llama.cpp's ``attn_qkv``). The file is written
beside ``--out`` under a temporary name and renamed at the end: a failure leaves nothing there.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import (
    GGML_QUANT_VERSION,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    quants,
)

from h2q_tui import checkpoints
from h2q_tui.errors import UserError
from h2q_tui.export import GGUF_TYPES
from h2q_tui.export.byte_vocab import VOCAB_SIZE, add_byte_tokenizer

Q = GGMLQuantizationType
TYPES = dict(  # --type: (the type of the 2-D weights, general.file_type)
    zip(
        GGUF_TYPES,
        (
            (Q.F32, LlamaFileType.ALL_F32),
            (Q.F16, LlamaFileType.MOSTLY_F16),
            (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
            (Q.Q4_0, LlamaFileType.MOSTLY_Q4_0),
        ),
        strict=True,
    )
)
BLOCK = 32  # values per Q8_0 / Q4_0 block: a quantized row's length must be a multiple of it
ARCHITECTURE = "gpt2"
NOT_EXPORTABLE = {  # family: why llama.cpp cannot run it
    "microstream": "its Hamiltonian (quaternion Kronecker) layers and rolling horizon",
    "h2q-transformer": "its Hamiltonian (quaternion Kronecker) attention and MLP layers",
    "qrlm": "its quaternion low-rank layers with grown rank",
    "hamiltonian-llm": "its momentum, gravity attention and reflex convolution",
}


@dataclass
class Exported:
    """What was written: the file, its size, each tensor's GGML type, and the fallbacks."""

    path: Path
    bytes: int
    types: dict[str, str] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)  # rows not a multiple of BLOCK


def gguf_name(tensor: MODEL_TENSOR, suffix: str, block: int | None = None) -> str:
    """The GGUF name of a tensor, as llama.cpp's loader looks it up (``blk.0.attn_qkv.weight``)."""
    base = TENSOR_NAMES[tensor]
    return f"{base.format(bid=block) if block is not None else base}.{suffix}"


BLOCK_TENSORS = {  # our name inside blocks.N -> the GGUF tensor
    "ln_1": MODEL_TENSOR.ATTN_NORM,
    "attn.c_attn": MODEL_TENSOR.ATTN_QKV,
    "attn.c_proj": MODEL_TENSOR.ATTN_OUT,
    "ln_2": MODEL_TENSOR.FFN_NORM,
    "mlp.c_fc": MODEL_TENSOR.FFN_UP,
    "mlp.c_proj": MODEL_TENSOR.FFN_DOWN,
}


def gpt2_tensors(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Every tensor llama.cpp's gpt2 graph needs, by GGUF name, as float32 arrays.

    Biases a ``bias = false`` model lacks are written as zeros (llama.cpp requires them); a
    tied head is written once, as the embedding llama.cpp falls back to.
    """
    state = model.state_dict()

    def weight(name: str) -> torch.Tensor:
        tensor = state.get(name)
        if tensor is None or not tensor.is_floating_point():
            raise UserError(
                f"the loaded model has no float tensor {name}: GGUF export needs the GPT's "
                "weights as floats"
            )
        return tensor.detach().to("cpu", torch.float32)

    out = {
        gguf_name(MODEL_TENSOR.TOKEN_EMBD, "weight"): weight("wte.weight"),
        gguf_name(MODEL_TENSOR.POS_EMBD, "weight"): weight("wpe.weight"),
        gguf_name(MODEL_TENSOR.OUTPUT_NORM, "weight"): weight("ln_f.weight"),
        gguf_name(MODEL_TENSOR.OUTPUT_NORM, "bias"): weight("ln_f.bias"),
    }
    if not model.config.tie_weights:
        out[gguf_name(MODEL_TENSOR.OUTPUT, "weight")] = weight("lm_head.weight")
    for block in range(model.config.n_layers):
        for ours, theirs in BLOCK_TENSORS.items():
            matrix = weight(f"blocks.{block}.{ours}.weight")
            has_bias = f"blocks.{block}.{ours}.bias" in state
            bias = weight(f"blocks.{block}.{ours}.bias") if has_bias else None
            out[gguf_name(theirs, "weight", block)] = matrix
            out[gguf_name(theirs, "bias", block)] = (
                torch.zeros(matrix.shape[0]) if bias is None else bias
            )
    return {name: tensor.contiguous().numpy() for name, tensor in out.items()}


def output_matrix(tied: bool) -> str:
    """The GGUF name of the matrix that makes the logits (the embedding when tied)."""
    return gguf_name(MODEL_TENSOR.TOKEN_EMBD if tied else MODEL_TENSOR.OUTPUT, "weight")


def tensor_type(name: str, array: np.ndarray, kind: str, tied: bool) -> tuple[Q, bool]:
    """(the GGML type ``name`` is stored as under ``--type kind``, whether a quantized type
    fell back to F16 because its rows are not a multiple of 32).

    As llama.cpp's own converter and quantizer do: vectors and the position embedding stay
    F32; under q4_0 the output matrix is kept at Q8_0 (its error reaches every logit).
    """
    wanted = TYPES[kind][0]
    if array.ndim < 2 or name == gguf_name(MODEL_TENSOR.POS_EMBD, "weight"):
        return Q.F32, False
    if wanted == Q.Q4_0 and name == output_matrix(tied):
        wanted = Q.Q8_0
    if wanted in (Q.Q8_0, Q.Q4_0) and array.shape[-1] % BLOCK:
        return Q.F16, True
    return wanted, False


def refuse_unexportable(info: checkpoints.CheckpointInfo) -> None:
    """A one-line UserError for a checkpoint llama.cpp's gpt2 architecture cannot hold."""
    family = info.config.model.family
    if family in NOT_EXPORTABLE:
        raise UserError(
            f"checkpoint {info.weights} is a {family} model: GGUF export covers the gpt family "
            f"only (llama.cpp has no architecture for {NOT_EXPORTABLE[family]})"
        )
    if family != "gpt":
        raise UserError(f"checkpoint {info.weights}: family {family!r} cannot be exported")
    if checkpoints.tokenizer_of(info) is not None or info.config.model.vocab_size != VOCAB_SIZE:
        raise UserError(
            f"checkpoint {info.weights} reads BPE tokens: GGUF export covers byte models "
            "(256 tokens) only for now"
        )


def check_out(out: str | Path) -> Path:
    """``--out`` as a path whose folder exists and which is not itself a folder."""
    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {out} is a folder: name the .gguf file to write")
    if not path.parent.is_dir():
        raise UserError(f"--out {out}: folder {path.parent} does not exist")
    return path


def export_gguf(source: str | Path, out: str | Path, kind: str = "f32") -> Exported:
    """Write the GPT checkpoint ``source`` (a run dir, checkpoint or crystallized folder, or
    its model.safetensors) to ``out`` as a GGUF file whose 2-D weights are of type ``kind``."""
    if kind not in TYPES:
        raise UserError(f"--type {kind!r} is not one of {', '.join(TYPES)}")
    path = check_out(out)
    info = checkpoints.read_info(source)
    refuse_unexportable(info)
    model = checkpoints.load_model_from(info, dequantize=True)  # a crystal: decoded to floats
    tensors = gpt2_tensors(model)
    exported = Exported(path, 0)
    writer_of = _writer(model, info.describe(), kind)
    _write_atomically(path, lambda target: _write(writer_of(target), tensors, kind, exported))
    exported.bytes = path.stat().st_size
    return exported


def _writer(model: torch.nn.Module, description: str, kind: str):
    """A function that opens a GGUFWriter on a path with the model's hyper-parameters and
    byte tokenizer set (what llama.cpp's gpt2 loader reads)."""
    config = model.config

    def make(target: Path) -> GGUFWriter:
        writer = GGUFWriter(target, ARCHITECTURE)
        writer.add_name(f"h2q-tui gpt: {description}")
        writer.add_context_length(config.context)
        writer.add_embedding_length(config.d_model)
        writer.add_feed_forward_length(config.mlp_ratio * config.d_model)
        writer.add_head_count(config.n_heads)
        writer.add_block_count(config.n_layers)
        writer.add_layer_norm_eps(float(model.ln_f.eps))
        writer.add_file_type(int(TYPES[kind][1]))
        if kind.startswith("q"):
            writer.add_quantization_version(GGML_QUANT_VERSION)
        add_byte_tokenizer(writer)
        return writer

    return make


def _write(writer: GGUFWriter, tensors: dict[str, np.ndarray], kind: str, done: Exported) -> None:
    """Add every tensor in its type, then write the header, metadata and data; closes."""
    tied = output_matrix(True) in tensors and output_matrix(False) not in tensors
    try:
        for name, array in tensors.items():
            qtype, kept = tensor_type(name, array, kind, tied)
            writer.add_tensor(name, quants.quantize(array, qtype), raw_dtype=qtype)
            done.types[name] = qtype.name
            if kept:
                done.kept_float.append(name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _write_atomically(path: Path, write) -> None:
    """Call ``write(temporary path)`` beside ``path``, then rename it to ``path``; on any
    failure the temporary file is removed and ``path`` is left as it was."""
    target = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(target)
        os.replace(target, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        target.unlink(missing_ok=True)
