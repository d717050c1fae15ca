"""The crystallized storage format: tensor codecs, Kronecker truncation, the policy and the stored folder.

- :mod:`h2q_tui.codecs.tensor`: tensor codecs (bf16, fp16, int8, int4-gG, svd) as pure
  encode/decode pairs, their registry, the method parser and combinations.
- :mod:`h2q_tui.codecs.kronecker`: HamLinear Kronecker-rank truncation (rank:K optimal,
  rank-shared:K SPEC's rule) on plain tensors and on state_dicts.
- :mod:`h2q_tui.codecs.policy`: which tensors a method touches (the default policy and
  ``--keep``), and whole-state_dict encode/decode into one safetensors-ready layout.
"""

from h2q_tui.codecs.kronecker import (
    HamGroup,
    ham_groups,
    model_rank,
    truncate_optimal,
    truncate_shared,
    truncate_state_dict,
)
from h2q_tui.codecs.policy import (
    LAYOUT_KEY,
    METHOD_KEY,
    Crystal,
    decode_state_dict,
    encode_state_dict,
    is_crystallized,
    plan,
    read_layout,
)
from h2q_tui.codecs.tensor import (
    CODECS,
    INT4_GROUPS,
    METHOD_HELP,
    Codec,
    CrystalFormatError,
    Step,
    break_even_rank,
    decode_chain,
    encode_chain,
    method_name,
    parse_method,
    parse_methods,
    relative_error,
    stored_bytes,
    svd_rank,
)

__all__ = [
    "CODECS",
    "INT4_GROUPS",
    "LAYOUT_KEY",
    "METHOD_HELP",
    "METHOD_KEY",
    "Codec",
    "Crystal",
    "CrystalFormatError",
    "HamGroup",
    "Step",
    "break_even_rank",
    "decode_chain",
    "decode_state_dict",
    "encode_chain",
    "encode_state_dict",
    "ham_groups",
    "is_crystallized",
    "method_name",
    "model_rank",
    "parse_method",
    "parse_methods",
    "plan",
    "read_layout",
    "relative_error",
    "stored_bytes",
    "svd_rank",
    "truncate_optimal",
    "truncate_shared",
    "truncate_state_dict",
]
