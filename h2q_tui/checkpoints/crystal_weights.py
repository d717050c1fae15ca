"""A crystallized model on its stored integers: which matrices stay packed, and saying so.

On the CPU, with the integer kernels built (:mod:`h2q_kernels.quantized`), every ``nn.Linear``
whose weight a single integer codec stored becomes a
:class:`~h2q_tui.codecs.packed.PackedLinear` over the file's codes. A HamLinear layer's codec
stored its Kronecker factors, not its matrix: the layer's W is built from the decoded factors
once (as decoding does for every HamLinear) and packed as int8 rows, a second rounding that
the quality report measures. Embedding tables and everything else are decoded to float.
``dequantize`` (``--dequantize``), another device or missing kernels decode everything, as
before, and ``model.crystal_weights`` says which happened.
"""

from __future__ import annotations

from typing import Any

import torch
from h2q_kernels import quantized
from h2q_kernels.hamiltonian import HamLinear
from torch import nn

from h2q_tui.codecs import packed

ATTRIBUTE = "crystal_weights"  # the model's one-line account of how its weights are held


def wanted(device: torch.device | str, dequantize: bool) -> bool:
    """Whether a crystallized load on ``device`` keeps its integer matrices packed."""
    if dequantize or torch.device(device).type != "cpu":
        return False
    return quantized.library().handle is not None


def pack_linears(model: nn.Module, state_dict: dict[str, Any]) -> list[packed.PackedWeight]:
    """Swap each ``nn.Linear`` whose weight is packed in ``state_dict`` for a PackedLinear
    (its weight key leaves the dict); every other packed tensor is decoded to float in place."""
    done = []
    modules = dict(model.named_modules(remove_duplicate=False))  # one walk, not one a matrix
    for name, weight in list(state_dict.items()):
        if not isinstance(weight, packed.PackedWeight):
            continue
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner) if leaf == "weight" else None
        if type(module) is nn.Linear and tuple(module.weight.shape) == weight.shape:
            parent, _, attribute = owner.rpartition(".")
            setattr(modules[parent], attribute, packed.PackedLinear(weight, module.bias))
            del state_dict[name]
            done.append(weight)
        else:
            state_dict[name] = weight.decoded()
    return done


def pack_ham_layers(model: nn.Module, records: dict[str, Any]) -> list[packed.PackedWeight]:
    """Replace each HamLinear whose factors an integer codec stored by its W packed as int8.

    int8 whatever the factors' codec: W is built at load, not read, and a second rounding at
    4 to 6 bits compounds with the factors' own (tests/test_quantized.py measures both).
    """
    done = []
    for name, module in list(model.named_modules()):
        record = records.get(f"{name}.B")
        if not isinstance(module, HamLinear) or not isinstance(record, dict):
            continue
        if record.get("codec") not in packed.PACKED_CODECS or record.get("parts"):
            continue
        if not quantized.supports(module.bias.shape[0]):
            continue
        with torch.no_grad():
            weight = packed.quantize(module.materialised().detach().float(), "int8")
        model.set_submodule(name, packed.PackedLinear(weight, module.bias))
        done.append(weight)
    return done


def describe(model: nn.Module, weights: list[packed.PackedWeight], pack: bool) -> None:
    """Set ``model.crystal_weights``: e.g. "int8 products on 24 matrices (4.1 MB of codes)"."""
    if weights:
        codecs = sorted({w.describe for w in weights})
        size = sum(w.nbytes for w in weights) / 1e6
        text = f"{'/'.join(codecs)} products on {len(weights)} matrices ({size:.1f} MB of codes)"
    elif pack:
        text = "decoded to float (no matrix stored by an integer codec the kernels take)"
    elif quantized.library().handle is None:
        text = f"decoded to float ({quantized.library().describe})"
    else:
        text = "decoded to float"
    setattr(model, ATTRIBUTE, text)


def account(model: nn.Module) -> str:
    """How a loaded model holds its weights; '' for a model that is not crystallized."""
    return getattr(model, ATTRIBUTE, "")
