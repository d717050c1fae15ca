"""Crystallization: measured compression of checkpoints (SPEC §7).

- :mod:`h2q_tui.crystal.crystallize`: the ``crystallize`` command: the table and the JSON report.
- :mod:`h2q_tui.crystal.sweep`: the one loop (encode, write, load back, measure) that the
  command and the Crystal pane drive, one row per method.
- :mod:`h2q_tui.crystal.methods`: ``--method``'s list, or the sweep ladder for a model.
- :mod:`h2q_tui.crystal.folders`: where crystallized folders go and how each is written.
- :mod:`h2q_tui.crystal.measure`: held-out bits/byte and agreement of a decoded model.
- :mod:`h2q_tui.crystal.tensor_report`: per-tensor error and bytes of one method.

The storage format itself (tensor codecs, Kronecker truncation, the stored folder) lives one
floor down in :mod:`h2q_tui.codecs`, because checkpoints read it.
"""
