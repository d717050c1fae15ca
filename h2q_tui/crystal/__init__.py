"""Crystallization: measured compression of checkpoints (SPEC §7).

- :mod:`h2q_tui.crystal.crystallize`: encode a checkpoint by each method, write the folders, report.
- :mod:`h2q_tui.crystal.measure`: held-out bits/byte and agreement of a decoded model.
- :mod:`h2q_tui.crystal.tensor_report`: per-tensor error and bytes of one method.

The storage format itself (tensor codecs, Kronecker truncation, the stored folder) lives one
floor down in :mod:`h2q_tui.codecs`, because checkpoints read it.
"""
