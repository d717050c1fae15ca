"""The crystallized storage format, read by checkpoints and written by crystallize.

- :mod:`h2q_tui.codecs.tensor`: tensor codecs (bf16, fp16, int8, intB-gG, svd) as pure
  encode/decode pairs and their registry.
- :mod:`h2q_tui.codecs.method`: method strings (``svd:0.5+int8``) and the chains that apply them.
- :mod:`h2q_tui.codecs.kronecker`: HamLinear Kronecker-rank truncation (rank:K optimal,
  rank-shared:K SPEC's rule) on plain tensors and on state_dicts.
- :mod:`h2q_tui.codecs.policy`: which tensors a method touches (the default policy, ``--keep``).
- :mod:`h2q_tui.codecs.layout`: whole-state_dict encode/decode into one safetensors-ready layout.
- :mod:`h2q_tui.codecs.stored`: the crystallized checkpoint folder on disk.
"""
